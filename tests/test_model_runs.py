"""`effdet evaluate` / `effdet export` log into MLflow: into the run that trained the model
(its model.json names it) with that run's status kept, else into a run of their own named
after the verb and variant; nothing without tracking. A real SQLite store, the tiny detector.
"""

from __future__ import annotations

import json

import pytest

from efficientdet.cli import main
from tests import test_export_saved_model as helpers
from tests.test_export_saved_model import sample_images, tiny_meta, write_dataset

tiny_artifact = helpers.tiny_artifact  # the fixture


@pytest.fixture
def client(sqlite_uri, track_to):
    import mlflow

    track_to(sqlite_uri)
    return mlflow.MlflowClient()


def _trained_by(artifact_dir, run_id: str | None) -> None:
    meta = tiny_meta().replace(training={"mlflow_run_id": run_id, "final_step": 10})
    (artifact_dir / "model.json").write_text(json.dumps(meta.to_dict()))


def _runs(client, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


@pytest.mark.parametrize("status", ["FINISHED", "FAILED"])
def test_evaluate_logs_into_the_run_that_trained_the_model(client, tiny_artifact, tmp_path,
                                                           status, request):
    exp = client.create_experiment(f"training-{status}")
    train_run = client.create_run(exp, run_name="train d0", tags={"effdet.step": "train"})
    client.set_terminated(train_run.info.run_id, status=status)
    _trained_by(tmp_path / "artifact", train_run.info.run_id)
    data = write_dataset(tmp_path / "data", sample_images(3))

    assert main(["evaluate", "--model", str(tmp_path / "artifact"), "--data", data]) == 0
    run = client.get_run(train_run.info.run_id)
    assert set(run.data.metrics) >= {"AP", "AP50", "AP75"}
    assert any(key.startswith("AP/") for key in run.data.metrics)  # per class
    assert run.data.tags["effdet.evaluate.data"] == data
    assert run.data.tags["effdet.step"] == "train"  # the training run stays the training run
    assert run.info.status == status
    files = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/report.html", "evaluation/metrics.json"} <= files  # no --output given
    assert len(client.search_runs([exp])) == 1  # no run of its own
    assert _runs(client, f"exp-{request.node.name[:40]}") == []


def test_export_without_a_training_run_gets_a_run_of_its_own(client, tiny_artifact, tmp_path,
                                                             request):
    _trained_by(tmp_path / "artifact", None)
    out = tmp_path / "export"
    assert main(["export", "--model", str(tmp_path / "artifact"), "--output", str(out)]) == 0
    (run,) = _runs(client, f"exp-{request.node.name[:40]}")
    assert run.info.run_name == "export efficientdet-d0"
    assert run.data.metrics["export/saved_model/size_mb"] > 0
    assert run.data.metrics["export/saved_model/seconds"] > 0
    assert run.data.tags["effdet.export.saved_model"] == str(out)
    report = [a.path for a in client.list_artifacts(run.info.run_id, "export")]
    assert report == ["export/saved_model_report.json"]


def test_a_failed_export_ends_its_own_run_failed_with_the_reason(client, tiny_artifact,
                                                                 tmp_path, request):
    """TF-TRT on a machine without TensorRT: exit 1, the run FAILED and tagged with why."""
    _trained_by(tmp_path / "artifact", None)
    assert main(["export", "--model", str(tmp_path / "artifact"), "--format", "tf-trt",
                 "--output", str(tmp_path / "export")]) == 1
    (run,) = _runs(client, f"exp-{request.node.name[:40]}")
    assert run.info.status == "FAILED"
    assert "TF-TRT is not available" in run.data.tags["effdet.export.tf-trt.error"]


def test_evaluate_of_a_model_trained_elsewhere_gets_its_own_run(client, tiny_artifact,
                                                                tmp_path, request):
    """The model.json names a run this server does not have: a run of its own, linked."""
    _trained_by(tmp_path / "artifact", "0123456789abcdef0123456789abcdef")
    data = write_dataset(tmp_path / "data", sample_images(2))
    assert main(["evaluate", "--model", str(tmp_path / "artifact"), "--data", data,
                 "--output", str(tmp_path / "eval")]) == 0
    (run,) = _runs(client, f"exp-{request.node.name[:40]}")
    assert run.info.run_name == "evaluate efficientdet-d0" and "AP" in run.data.metrics
    assert run.data.tags["effdet.training_run_id"] == "0123456789abcdef0123456789abcdef"
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]["AP"] == \
        run.data.metrics["AP"]


def test_evaluate_without_tracking_logs_nothing(client, tiny_artifact, tmp_path, monkeypatch,
                                                request):
    monkeypatch.setenv("EFFDET_TRACKING", "off")
    _trained_by(tmp_path / "artifact", None)
    data = write_dataset(tmp_path / "data", sample_images(2))
    assert main(["evaluate", "--model", str(tmp_path / "artifact"), "--data", data]) == 0
    assert _runs(client, f"exp-{request.node.name[:40]}") == []
