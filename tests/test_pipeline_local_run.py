"""The whole detection pipeline under kfp.local: synthetic data -> conversion -> 2-rank Horovod
training -> evaluation -> export with parity check -> registration, tracked in MLflow (SQLite).
Tiny on purpose: 8 training images, 4 steps (2 warm-up, 1 timed, and the recipe's last 20% on
BN moving statistics: one retraced step on both ranks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from efficientdet import tracking

pytestmark = [pytest.mark.slow, pytest.mark.horovod]


def _local_mlflow(tmp_path, monkeypatch, experiment: str) -> str:
    """Track into a fresh SQLite store, away from any run or pipeline of the environment."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)
    for name in ("MLFLOW_RUN_ID", "EFFDET_MLFLOW_PARENT_RUN_ID", "KFP_PIPELINE_RUN_ID",
                 "EFFDET_TRACKING"):
        monkeypatch.delenv(name, raising=False)
    tracking.reset_warning_state()
    return uri


def test_detection_pipeline_runs_locally_end_to_end(tmp_path, monkeypatch, capsys):
    pytest.importorskip("horovod.tensorflow")
    from mlflow import MlflowClient

    from efficientdet.cli import main
    from efficientdet.data.synthetic import write_synthetic_coco

    write_synthetic_coco(tmp_path / "raw-train", images=8, image_size=128, seed=0)
    write_synthetic_coco(tmp_path / "raw-val", images=4, image_size=128, seed=1)
    uri = _local_mlflow(tmp_path, monkeypatch, "local-run")
    root = tmp_path / "root"
    summary_file = tmp_path / "summary.json"
    argv = ["pipeline", "run-local", "--pipeline", "detection", "--pipeline-root", str(root),
            "--summary-json", str(summary_file),
            "--param", f"train_annotations_uri={tmp_path / 'raw-train' / 'annotations.json'}",
            "--param", f"train_images_uri={tmp_path / 'raw-train' / 'images'}",
            "--param", f"val_annotations_uri={tmp_path / 'raw-val' / 'annotations.json'}",
            "--param", f"val_images_uri={tmp_path / 'raw-val' / 'images'}",
            "--param", "recipe=synth-detection", "--param", "image_size=128",
            "--param", "steps=4", "--param", "batch_size=2", "--param", "workers=2",
            "--param", "gpus_per_worker=0", "--param", "amp=false", "--param", "num_shards=1",
            "--param", "export_formats=saved_model", "--param", "eval_batch_size=4",
            "--param", "registered_model_name=effdet-local-test", "--param", "threshold=0.0"]
    code = main(argv)
    summary = json.loads(summary_file.read_text())
    assert code == 0, summary.get("error")
    assert summary["state"] == "SUCCEEDED"

    steps = summary["steps"]
    assert {"convert-train", "convert-val", "train", "evaluate", "export", "register"} <= set(steps)
    assert all(s["status"] == "FINISHED" for s in steps.values())
    client = MlflowClient(uri)
    parent = client.get_run(summary["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["kfp.pipeline_run_id"] == summary["run_id"]
    train = client.get_run(steps["train"]["run_id"])
    assert train.data.tags["mlflow.parentRunId"] == parent.info.run_id
    # the experiment table compares pipeline runs by the parent's headline numbers and tags
    assert {"AP", "AP50", "images_per_second", "train_time_s", "params", "gmacs"} <= set(
        parent.data.metrics)
    assert parent.data.metrics["AP"] == steps["evaluate"]["metrics"]["AP"]
    assert parent.data.tags["effdet.variant"] == "efficientdet-d0"
    assert parent.data.tags["effdet.dataset_digest"] == train.data.tags["effdet.dataset_digest"]
    assert parent.info.run_name == f"efficientdet-detection [kfp {summary['run_id']}]"
    assert train.info.run_name == f"train efficientdet-d0 raw-train [kfp {summary['run_id']}]"
    assert "effdet.failed_step" not in parent.data.tags
    train_summary = [json.loads(p.read_text()) for p in Path(root).rglob("summary.json")]
    assert [t["world_size"] for t in train_summary] == [2]  # two Horovod ranks trained
    assert "AP" in steps["evaluate"]["metrics"] and "AP50" in steps["evaluate"]["metrics"]
    version = client.get_model_version_by_alias("effdet-local-test", "champion")
    assert version.run_id == steps["register"]["run_id"]

    # the artifacts: the trained model in the train step's Model artifact directory
    model_json = list(Path(root).rglob("model.json"))
    assert model_json, "no model.json under the pipeline root"
    out = capsys.readouterr().out
    assert "SUCCEEDED" in out and summary["parent_run_id"] in out


def test_classifier_pipeline_model_is_the_detection_pipelines_backbone(tmp_path, monkeypatch):
    """EfficientNet-B0 -> EfficientDet-D0: the classification pipeline registers its model,
    the detection pipeline starts from it through `init_from=models:/NAME@ALIAS`."""
    pytest.importorskip("horovod.tensorflow")
    from mlflow import MlflowClient

    from efficientdet.cli import main
    from efficientdet.data.synthetic import write_synthetic_coco, write_synthetic_imagenet

    for split, seed in (("train", 0), ("val", 1)):
        write_synthetic_imagenet(tmp_path / f"inet-{split}", images_per_class=4, classes=2,
                                 seed=seed, image_size=64)
        write_synthetic_coco(tmp_path / f"coco-{split}", images=4, image_size=128, seed=seed)
    uri = _local_mlflow(tmp_path, monkeypatch, "chain")
    common = ["--param", "steps=2", "--param", "batch_size=2", "--param", "workers=1",
              "--param", "gpus_per_worker=0", "--param", "amp=false", "--param", "num_shards=1",
              "--param", "export_formats=saved_model", "--param", "eval_batch_size=4",
              "--param", "threshold=0.0"]
    summaries = {}
    for task, params in (
            ("classification", ["--param", f"train_root_uri={tmp_path / 'inet-train'}",
                                "--param", f"val_root_uri={tmp_path / 'inet-val'}",
                                "--param", "recipe=synth-classification",
                                "--param", "image_size=64",
                                "--param", "registered_model_name=chain-b0"]),
            ("detection", ["--param",
                           f"train_annotations_uri={tmp_path / 'coco-train' / 'annotations.json'}",
                           "--param", f"train_images_uri={tmp_path / 'coco-train' / 'images'}",
                           "--param",
                           f"val_annotations_uri={tmp_path / 'coco-val' / 'annotations.json'}",
                           "--param", f"val_images_uri={tmp_path / 'coco-val' / 'images'}",
                           "--param", "recipe=synth-detection", "--param", "image_size=128",
                           "--param", "init_from=models:/chain-b0@champion",
                           "--param", "registered_model_name=chain-d0"])):
        out = tmp_path / f"{task}.json"
        code = main(["pipeline", "run-local", "--pipeline", task, "--pipeline-root",
                     str(tmp_path / f"root-{task}"), "--summary-json", str(out), *common, *params])
        summaries[task] = json.loads(out.read_text())
        assert code == 0, summaries[task].get("error")
    train = [json.loads(p.read_text())
             for p in (tmp_path / "root-detection").rglob("summary.json")]
    assert len(train) == 1
    backbone = train[0]["init"]["backbone"]
    assert backbone["source"] == "models:/chain-b0@champion"
    assert backbone["kind"] == "artifact" and backbone["loaded"] > 200
    client = MlflowClient(uri)
    assert client.get_model_version_by_alias("chain-d0", "champion")
