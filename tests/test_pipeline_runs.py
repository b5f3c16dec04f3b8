"""MLflow run layout of a pipeline run, the register step (registry aliases) and the local
training launcher, against a real MLflow SQLite store and real subprocesses."""

from __future__ import annotations

import json
import sys

import pytest

from efficientdet import tracking
from efficientdet.orchestration import backends, pipeline_steps, runs
from efficientdet.orchestration.cluster_settings import ClusterSettings


@pytest.fixture
def mlflow_sqlite(sqlite_uri, track_to):
    return track_to(sqlite_uri)


def _client():
    from mlflow import MlflowClient

    return MlflowClient()


def test_one_parent_per_pipeline_run_and_nested_step_runs(mlflow_sqlite):
    with runs.step_context("run-a", "convert") as parent:
        assert parent
        with tracking.step_run("convert") as run:
            convert_id = run.info.run_id
    with runs.step_context("run-a", "train") as parent_again, tracking.step_run("train") as run:
        train_id = run.info.run_id
    assert parent_again == parent  # found by its kfp.pipeline_run_id tag, not made twice
    with runs.step_context("run-b", "convert") as other:
        assert other != parent
    c = _client()
    for run_id, task in ((convert_id, "convert"), (train_id, "train")):
        tags = c.get_run(run_id).data.tags
        assert tags["mlflow.parentRunId"] == parent
        assert tags["kfp.pipeline_run_id"] == "run-a" and tags["kfp.task_name"] == task
    ptags = c.get_run(parent).data.tags
    assert ptags["kfp.pipeline_run_id"] == "run-a" and ptags[runs.ROLE_TAG] == "pipeline"
    assert runs.find_step_run(parent, "train") == train_id
    assert "EFFDET_MLFLOW_PARENT_RUN_ID" not in __import__("os").environ  # restored


def test_pipeline_experiment_holds_parent_and_step_runs(mlflow_sqlite, monkeypatch):
    """The pipeline's mlflow_experiment: whichever step comes first makes the parent there,
    the others find it there; the environment's experiment is back after the step."""
    import os

    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "cluster-default")
    with runs.step_context("run-e", "convert-train", experiment="team-a") as parent, \
            tracking.step_run("convert") as run:
        assert os.environ["MLFLOW_EXPERIMENT_NAME"] == "team-a"  # what the ranks get forwarded
        step_id = run.info.run_id
    assert os.environ["MLFLOW_EXPERIMENT_NAME"] == "cluster-default"
    with runs.step_context("run-e", "train", experiment="team-a") as parent_again:
        assert parent_again == parent
    c = _client()
    team = c.get_experiment_by_name("team-a").experiment_id
    assert {c.get_run(r).info.experiment_id for r in (parent, step_id)} == {team}
    assert c.get_experiment_by_name("cluster-default") is None
    with runs.step_context("run-f", "convert-train") as default_parent:
        assert c.get_run(default_parent).info.experiment_id == \
            c.get_experiment_by_name("cluster-default").experiment_id


def test_kfp_plugin_run_id_wins(mlflow_sqlite, monkeypatch):
    c = _client()
    exp = c.create_experiment("plugin")
    plugin_run = c.create_run(exp).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", plugin_run)
    with runs.step_context("run-p", "evaluate") as parent:
        assert parent is None  # the plugin owns the layout: no parent of ours
        with tracking.step_run("evaluate") as run:
            assert run.info.run_id == plugin_run
            assert runs.find_step_run(None, "evaluate") == plugin_run
    assert not c.search_runs([exp], filter_string=f"tags.`{runs.ROLE_TAG}` = 'pipeline'")
    assert c.get_experiment_by_name("exp-test_kfp_plugin_run_id_wins") is None
    assert c.get_run(plugin_run).data.tags["kfp.task_name"] == "evaluate"


def _model_dir(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "model.json").write_text(json.dumps({"task": "detection", "model": "efficientdet-d0"}))
    (d / "model.weights.h5").write_bytes(b"\x89HDF\r\n")
    return d


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    """A tiny detector's artifact folder and export folder (saved_model/ + onnx/)."""
    from efficientdet.export.saved_model import export_saved_model
    from tests.test_export_saved_model import tiny_detector, tiny_meta

    root = tmp_path_factory.mktemp("tiny-export")
    model = tiny_detector()
    (root / "model").mkdir()
    (root / "model" / "model.json").write_text(json.dumps(tiny_meta().to_dict()))
    model.save_weights(str(root / "model" / "model.weights.h5"))
    export_saved_model(model, tiny_meta(), str(root / "exported" / "saved_model"))
    (root / "exported" / "onnx").mkdir()
    (root / "exported" / "onnx" / "model.onnx").write_bytes(b"onnx")
    return root / "model", root / "exported"


def test_register_sets_alias_only_when_metric_passes(mlflow_sqlite, tiny_export):
    import mlflow

    model, exported = tiny_export
    with runs.step_context("run-r", "register"):
        low, md_low = pipeline_steps.register(str(model), name="effdet-test", metric_name="AP",
                                              metric_value=0.12, threshold=0.3,
                                              extra_dirs={"exported": str(exported)})
        high, md_high = pipeline_steps.register(str(model), name="effdet-test", metric_name="AP",
                                                metric_value=0.41, threshold=0.3,
                                                extra_dirs={"exported": str(exported)})
    c = _client()
    assert (low["passed"], low["alias"]) == (False, None)
    assert (high["passed"], high["alias"]) == (True, "champion")
    assert c.get_model_version_by_alias("effdet-test", "champion").version == high["version"]
    assert int(high["version"]) == int(low["version"]) + 1
    version = c.get_model_version("effdet-test", low["version"])
    assert version.tags["AP"] == "0.12" and version.tags["kfp.pipeline_run_id"] == "run-r"
    # the version is an MLflow model: MLmodel, the SavedModel it serves, the training artifact
    info = mlflow.models.get_model_info(f"models:/effdet-test/{low['version']}")
    assert "python_function" in info.flavors and info.signature is not None
    assert info.run_id == version.run_id
    # the run holds the other exports; the SavedModel is uploaded once, inside the model
    high_run = c.get_model_version("effdet-test", high["version"]).run_id
    assert {a.path for a in c.list_artifacts(high_run, "exported")} == {"exported/onnx"}
    assert "no alias" in md_low and "alias `champion` set" in md_high
    assert "MLflow run: `" in md_high  # a SQLite store has no UI link: the id is shown


def test_register_rejects_a_directory_without_a_model(mlflow_sqlite, tmp_path):
    with pytest.raises(pipeline_steps.StepError, match="no model.json"):
        pipeline_steps.register(str(tmp_path), name="x", metric_name="AP", metric_value=1.0, threshold=0)


def test_register_needs_tracking(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(pipeline_steps.StepError, match="tracking is off"):
        pipeline_steps.register(str(_model_dir(tmp_path)), name="x", metric_name="AP", metric_value=1.0,
                       threshold=0)


def _trained_config(monkeypatch, tmp_path, recipe: str, **settings):
    """The TrainConfig `loop.train` receives when the train component runs with SETTINGS: the
    backend runs `effdet train` with the component's arguments in this process."""
    from types import SimpleNamespace

    from efficientdet.cli import main
    from efficientdet.kfp_components.train import train as component
    from efficientdet.training import loop

    received = []

    def fake_train(config):
        received.append(config)
        pipeline_steps.storage.write_text(pipeline_steps.storage.join(config.output, "summary.json"),
                                 json.dumps({"model_uri": config.output, "final_step": 1}))
        return {"rank": 0}

    class InProcess:
        def run(self, train_args, *, env):
            assert main(["train", *train_args]) == 0

    monkeypatch.setattr(loop, "train", fake_train)
    monkeypatch.setattr(backends, "backend_for", lambda *a, **k: InProcess())
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def artifact(name, uri=""):
        (tmp_path / name).mkdir(exist_ok=True)
        return SimpleNamespace(path=str(tmp_path / name), metadata={"uri": uri} if uri else {})

    metrics = SimpleNamespace(log_metric=lambda *a: None)
    component.python_func(
        task="detection", recipe=recipe, train_data=artifact("train", "s3://b/train"),
        val_data=artifact("val", "s3://b/val"), launcher="local", s3_secret="",
        mlflow_secret="", cleanup="delete-on-success", kfp_run_id="run-1", kfp_task="train",
        model=artifact("model"),
        metrics=metrics, summary=SimpleNamespace(path=str(tmp_path / "summary.md")),
        **settings)
    assert len(received) == 1
    return received[0]


def test_unset_pipeline_settings_keep_the_recipe(monkeypatch, tmp_path):
    """The xla bug: the pipeline used to send precision.xla=false whatever the recipe said."""
    config = _trained_config(monkeypatch, tmp_path, "efficientdet-d0-coco")
    assert config.precision.xla is True and config.precision.amp is True
    assert config.train.epochs == 300 and config.data.batch_size == 64
    assert config.init.backbone == "efficientnet-b0"
    assert (config.data.train, config.data.val) == ("s3://b/train", "s3://b/val")
    assert config.output == str(tmp_path / "model")


@pytest.mark.parametrize("amp, xla", [(False, False), (True, False), (False, True)])
def test_set_pipeline_settings_arrive_as_values(monkeypatch, tmp_path, amp, xla):
    config = _trained_config(monkeypatch, tmp_path, "efficientdet-d0-coco", amp=amp, xla=xla,
                             steps=12, batch_size=4, model_name="efficientdet-d1",
                             image_size=256)
    assert (config.precision.amp, config.precision.xla) == (amp, xla)
    assert (config.train.steps, config.data.batch_size) == (12, 4)
    assert (config.model, config.image_size) == ("efficientdet-d1", 256)
    assert config.optimizer.lr == 0.08  # untouched recipe value
    assert config.optimizer.ema_decay == 0.9998


def test_pipeline_learning_rate_and_ema_decay_reach_the_optimizer(monkeypatch, tmp_path):
    config = _trained_config(monkeypatch, tmp_path, "efficientdet-d0-coco",
                             learning_rate=0.02, ema_decay=0.0)
    assert (config.optimizer.lr, config.optimizer.ema_decay) == (0.02, 0.0)
    assert config.precision.xla is True  # the rest stays the recipe's


def test_pipeline_eval_interval_reaches_the_evaluation_config(monkeypatch, tmp_path):
    assert _trained_config(monkeypatch, tmp_path, "efficientdet-d0-coco"
                           ).evaluation.every_steps is None  # unset: the recipe's (off)
    config = _trained_config(monkeypatch, tmp_path, "efficientdet-d0-coco", eval_interval=500)
    assert config.evaluation.every_steps == 500 and config.data.val == "s3://b/val"
    assert config.precision.xla is True  # the rest stays the recipe's


def test_pipeline_epochs_replace_the_recipe_steps(monkeypatch, tmp_path):
    config = _trained_config(monkeypatch, tmp_path, "synth-detection", epochs=2.5)
    assert config.train.steps is None and config.train.epochs == 2.5
    assert config.precision.xla is False  # the synth recipe's own value


def test_train_config_document_is_the_resolved_recipe(tmp_path):
    from efficientdet.training.config import TrainOverrides, load_config

    args = pipeline_steps.write_train_config(recipe="synth-detection", output=str(tmp_path),
                                    overrides=TrainOverrides(train_data="d", batch_size=2))
    assert args == ["--config", str(tmp_path / pipeline_steps.TRAIN_CONFIG_FILE)]
    expected = load_config("synth-detection", ["data.train=d", "data.batch_size=2",
                                               f"output={tmp_path}"])
    assert load_config(args[1]) == expected


def test_horovodrun_command_and_backend_choice(monkeypatch):
    cmd = backends.LocalHorovodBackend(2).command(["--config", "x"])
    assert cmd[1:7] == ["-np", "2", "-H", "localhost:2", "--gloo", sys.executable]
    assert cmd[-4:] == ["efficientdet", "train", "--config", "x"]
    assert backends.LocalHorovodBackend(1).command(["a"])[0] == sys.executable
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert backends.choose_backend("auto") == "local"
    assert backends.choose_backend("mpijob") == "mpijob"
    with pytest.raises(ValueError, match="backend 'k8s'"):
        backends.choose_backend("k8s")
    settings = ClusterSettings.from_env({}).with_step_parameters(workers=2, gpus_per_worker=0)
    backend = backends.backend_for("auto", settings, run_id="r", kfp_task="t")
    assert isinstance(backend, backends.LocalHorovodBackend) and backend.np == 2


def test_mpijob_backend_spec_uses_downward_api_identity_and_secrets(monkeypatch):
    monkeypatch.setenv("POD_NAME", "train-pod")
    monkeypatch.setenv("POD_UID", "uid-9")
    monkeypatch.setenv("POD_NAMESPACE", "team-a")
    settings = ClusterSettings.from_env({}).with_step_parameters(
        workers=2, gpus_per_worker=4, train_image="reg/t:1", node_selector="pool=gpu",
        s3_secret="effdet-s3")
    backend = backends.backend_for("mpijob", settings, run_id="run-1", kfp_task="train",
                                   mlflow_secret="effdet-mlflow")
    spec = backend.spec(["--config", "x"], {"MLFLOW_TRACKING_URI": "http://m"})
    assert (spec.namespace, spec.owner_pod, spec.ranks) == ("team-a", ("train-pod", "uid-9"), 8)
    assert spec.node_selector == {"pool": "gpu"} and spec.tolerations[0]["key"] == "nvidia.com/gpu"
    assert {(s.env, s.secret, s.optional) for s in spec.secret_env} >= {
        ("AWS_SECRET_ACCESS_KEY", "effdet-s3", False),
        ("MLFLOW_TRACKING_PASSWORD", "effdet-mlflow", True)}
    assert spec.command[:2] == ["effdet", "train"]


def test_run_streaming_copies_output_and_fails_with_the_tail():
    lines: list[str] = []
    backends.run_streaming([sys.executable, "-c", "print('a'); print('b')"], log=lines.append)
    assert lines == ["a", "b"]
    script = ("import sys\nprint('[1]<stderr>:ValueError: bad shard')\n"
              "for i in range(100): print(i)\nsys.exit(3)")
    with pytest.raises(backends.LaunchError, match="exited with code 3") as info:
        backends.run_streaming([sys.executable, "-c", script], log=lambda _: None, tail=5)
    assert "| 99" in str(info.value) and "| 94" not in str(info.value)
    assert "first error: [1]<stderr>:ValueError: bad shard" in str(info.value)


def test_forwarded_env_never_carries_credentials():
    env = backends.forwarded_env({"MLFLOW_TRACKING_URI": "http://m", "AWS_SECRET_ACCESS_KEY": "s",
                                  "AWS_ACCESS_KEY_ID": "k", "KFP_TASK_NAME": "train",
                                  "MLFLOW_TRACKING_PASSWORD": "p"})
    assert env == {"MLFLOW_TRACKING_URI": "http://m", "KFP_TASK_NAME": "train"}


def test_export_formats_are_named_when_unknown():
    assert pipeline_steps.parse_formats("savedmodel, onnx,tftrt,onnx") == ["saved_model", "onnx", "tf-trt"]
    with pytest.raises(pipeline_steps.StepError, match="unknown 'torchscript'"):
        pipeline_steps.parse_formats("saved_model,torchscript")
    with pytest.raises(pipeline_steps.StepError, match="empty"):
        pipeline_steps.parse_formats(" , ")


def test_mpijob_training_refuses_paths_other_pods_cannot_see(monkeypatch):
    settings = ClusterSettings(train_image="i", workers=2, gpus_per_worker=1)
    backend = backends.backend_for("mpijob", settings, run_id="r", kfp_task="t")
    with pytest.raises(pipeline_steps.StepError, match="work_uri to an s3:// prefix"):
        pipeline_steps.train(["--config", "x"], "/minio/mlpipeline/out", backend,
                    data_uris=("s3://b/train",))


def test_train_step_reports_the_evaluation_during_training(tmp_path):
    class WritesSummary:
        def run(self, args, *, env):
            (tmp_path / "summary.json").write_text(json.dumps({
                "model_uri": "m", "world_size": 1, "final_step": 4,
                "evaluation": {"step": 4, "val_loss": 0.5, "val_AP": 0.25, "num_images": 8},
                "best": {"step": 2, "metric": "val_AP", "value": 0.3, "model_uri": "b"}}))

    summary, md = pipeline_steps.train(["--config", "x"], str(tmp_path), WritesSummary())
    assert (summary["val_AP"], summary["val_loss"], summary["best_val_AP"]) == (0.25, 0.5, 0.3)
    assert "num_images" not in summary  # only the metrics, not the evaluation's bookkeeping
    assert "val_AP" in md and "best_val_AP" in md


def test_mpijob_backend_needs_a_training_image():
    with pytest.raises(ValueError, match="no training image: set EFFDET_TRAIN_IMAGE"):
        backends.backend_for("mpijob", ClusterSettings.from_env({}), run_id="r", kfp_task="t")
    local = backends.backend_for("local", ClusterSettings.from_env({}), run_id="r", kfp_task="t")
    assert local.np == 1  # training on this machine needs no image


def test_parent_carries_headline_metrics_kfp_link_and_named_runs(mlflow_sqlite, monkeypatch):
    """Two steps roll their headline numbers up; the parent links the KFP run; runs are named
    after what ran."""
    monkeypatch.setenv("EFFDET_KFP_UI_URL", "https://kubeflow.example.com/pipeline/")
    uuid = "1a2b3c4d-0000-4000-8000-000000000001"
    with runs.step_context(uuid, "train") as parent, \
            tracking.step_run("train", subject=runs_subject()) as run:
        train_id = run.info.run_id
        rolled = runs.roll_up({"images_per_second": 41.5, "train_time_s": 12.0, "params": 3.9e6,
                               "gmacs": 2.5, "final_step": 10, "bad": float("nan")},
                              tags={"effdet.variant": "efficientdet-d0"})
    assert set(rolled) == {"images_per_second", "train_time_s", "params", "gmacs"}
    with runs.step_context(uuid, "evaluate"):
        runs.roll_up({"AP": 0.31, "AP50": 0.52, "APs": 0.1})
    c = _client()
    p = c.get_run(parent)
    assert p.data.metrics == {"images_per_second": 41.5, "train_time_s": 12.0, "params": 3.9e6,
                              "gmacs": 2.5, "AP": 0.31, "AP50": 0.52}
    url = f"https://kubeflow.example.com/pipeline/#/runs/details/{uuid}"
    assert p.data.tags["kfp.pipeline_run_url"] == url
    assert url in p.data.tags["mlflow.note.content"]
    assert p.data.tags["effdet.variant"] == "efficientdet-d0"
    assert p.info.run_name == "efficientdet [kfp 1a2b3c4d]"
    assert "effdet.version" in p.data.tags
    train = c.get_run(train_id)
    assert train.info.run_name == "train efficientdet-d0 [kfp 1a2b3c4d]"
    assert train.data.tags["effdet.variant"] == "efficientdet-d0"
    assert train.data.tags["kfp.pipeline_run_url"] == url


def runs_subject():
    from efficientdet.run_identity import RunSubject

    return RunSubject(task="detection", variant="efficientdet-d0")


def test_failing_step_names_itself_and_close_run_ends_the_parent(mlflow_sqlite):
    with runs.step_context("run-x", "convert-train") as parent:
        pass
    with pytest.raises(pipeline_steps.StepError), runs.step_context("run-x", "train"):
        raise pipeline_steps.StepError("s3://bucket/missing: no such dataset directory")
    c = _client()
    assert c.get_run(parent).data.tags[runs.FAILED_STEP_TAG] == "train"
    assert c.get_run(parent).info.status == "RUNNING"
    assert runs.close_parent_run("run-x", "FAILED", error="Task exit-handler-1 failed.") == \
        "FAILED"
    p = c.get_run(parent)
    assert p.info.status == "FAILED" and p.data.tags[runs.FAILED_STEP_TAG] == "train"
    assert p.data.tags[runs.ERROR_TAG].startswith("train: StepError: s3://bucket/missing")
    # run-local's fall-back leaves a run the exit task ended alone
    assert runs.close_parent_run("run-x", "SUCCEEDED", if_running=True) is None
    assert c.get_run(parent).info.status == "FAILED"


def test_close_run_finds_the_failed_step_run_and_forgets_a_retried_failure(mlflow_sqlite):
    # the step's run failed but its context saw no error (as a component that fails outside
    # its step context): close-run finds the FAILED step run
    with runs.step_context("run-y", "evaluate") as parent, \
            pytest.raises(RuntimeError), tracking.step_run("evaluate"):
        raise RuntimeError("boom")
    c = _client()
    assert runs.FAILED_STEP_TAG not in c.get_run(parent).data.tags
    assert runs.close_parent_run("run-y", "FAILED") == "FAILED"
    assert c.get_run(parent).data.tags[runs.FAILED_STEP_TAG] == "evaluate"  # its FAILED run
    # a step failed, its retry succeeded, the pipeline succeeded: no failed step is left
    with pytest.raises(RuntimeError), runs.step_context("run-z", "export") as other:
        raise RuntimeError("transient")
    assert runs.close_parent_run("run-z", "SUCCEEDED") == "FINISHED"
    tags = c.get_run(other).data.tags
    assert runs.FAILED_STEP_TAG not in tags and runs.ERROR_TAG not in tags
    assert runs.close_parent_run("run-never-started", "FAILED") is None
    assert runs.close_parent_run("run-z", "CANCELLED") == "KILLED"


def test_roll_up_without_a_parent_or_tracking_is_a_no_op(monkeypatch):
    monkeypatch.delenv("EFFDET_MLFLOW_PARENT_RUN_ID", raising=False)
    assert runs.roll_up({"AP": 0.5}) == {}
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert runs.roll_up({"AP": 0.5}, parent_id="abc") == {}
    assert runs.kfp_run_url("r1", environ={}) is None
    assert runs.kfp_run_url("r1", environ={"EFFDET_KFP_UI_URL": "https://u:p@kfp"}) is None


@pytest.mark.slow  # three kfp.local subprocess tasks: about two minutes on 2 cores
def test_local_pipeline_run_with_a_failing_step_leaves_the_parent_failed(tmp_path, monkeypatch):
    """kfp.local runs the pipeline's exit handler: with the training annotations missing,
    convert-train fails, nothing downstream runs and close-run ends the parent run FAILED
    naming the step (run-local's own fall-back finds it ended already)."""
    from mlflow import MlflowClient

    from efficientdet.data.synthetic import write_synthetic_coco
    from efficientdet.kfp_pipelines.run_local import run_local

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for name in ("MLFLOW_RUN_ID", "EFFDET_MLFLOW_PARENT_RUN_ID", "KFP_PIPELINE_RUN_ID",
                 "KFP_TASK_NAME", "EFFDET_TRACKING", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(name, raising=False)
    tracking.reset_warning_state()
    fallback = []
    close = runs.close_parent_run
    monkeypatch.setattr(runs, "close_parent_run",
                        lambda *a, **k: fallback.append(close(*a, **k)))  # run-local's call
    write_synthetic_coco(tmp_path / "raw-val", images=2, image_size=64, seed=1)
    result = run_local("detection", {
        "train_annotations_uri": str(tmp_path / "missing" / "annotations.json"),
        "train_images_uri": str(tmp_path / "missing" / "images"),
        "val_annotations_uri": str(tmp_path / "raw-val" / "annotations.json"),
        "val_images_uri": str(tmp_path / "raw-val" / "images"),
        "mlflow_experiment": "failing-runs"}, pipeline_root=tmp_path / "root")
    assert result["state"] == "FAILED"
    assert fallback == [None]  # the exit task (a subprocess) had ended the run
    client = MlflowClient(uri)
    parent = client.get_run(result["parent_run_id"])
    assert parent.info.status == "FAILED"
    assert parent.data.tags[runs.FAILED_STEP_TAG] == "convert-train"
    assert "annotations.json" in parent.data.tags[runs.ERROR_TAG]
    assert client.get_experiment(parent.info.experiment_id).name == "failing-runs"
    assert "train" not in result["steps"]  # nothing downstream of the failure ran
