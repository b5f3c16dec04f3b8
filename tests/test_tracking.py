"""efficientdet.tracking against a real MLflow server on loopback, and a dead one."""

from __future__ import annotations

import logging

import pytest

from efficientdet import tracking


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    for key in ("MLFLOW_RUN_ID", "EFFDET_MLFLOW_PARENT_RUN_ID", "MLFLOW_EXPERIMENT_NAME",
                "MLFLOW_EXPERIMENT_ID", "EFFDET_TRACKING", "KFP_PIPELINE_RUN_ID",
                "KFP_TASK_NAME"):
        monkeypatch.delenv(key, raising=False)
    tracking.reset_warning_state()
    yield
    tracking.reset_warning_state()


def test_params_tags_metrics_land(mlflow_env, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "effdet-test-top")
    monkeypatch.setenv("KFP_PIPELINE_RUN_ID", "kfp-run-42")
    monkeypatch.setenv("KFP_TASK_NAME", "train")
    with tracking.step_run("train", params={"optimizer.lr": 0.08, "s3.secret_key": "x",
                                            "model": "efficientdet-d0"},
                           tags={"custom": "yes"}) as run:
        assert run is not None
        assert tracking.log_metrics({"loss": 1.5}, step=1)
        assert tracking.log_metrics({"loss": 1.0, "skipped": None}, step=2)
        assert tracking.log_dict({"a": 1}, "config.json")
        run_id = tracking.active_run_id()
    client = MlflowClient(mlflow_env)
    got = client.get_run(run_id)
    assert got.data.params == {"optimizer.lr": "0.08", "model": "efficientdet-d0"}
    assert got.data.tags["effdet.step"] == "train" and got.data.tags["custom"] == "yes"
    assert got.data.tags["kfp.pipeline_run_id"] == "kfp-run-42"
    assert got.data.tags["kfp.task_name"] == "train"
    assert [m.value for m in client.get_metric_history(run_id, "loss")] == [1.5, 1.0]
    assert got.info.status == "FINISHED"
    exp = client.get_experiment(got.info.experiment_id)
    assert exp.name == "effdet-test-top"
    assert not tracking.log_metrics({"loss": 0.5})  # no active run any more: a no-op


def test_existing_run_and_nested_run(mlflow_env, monkeypatch):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_env)
    exp_id = client.create_experiment("effdet-test-kfp")
    parent = client.create_run(exp_id, run_name="pipeline")
    # KFP plugin mode: MLFLOW_RUN_ID names the run to log into
    task_run = client.create_run(exp_id, run_name="task")
    monkeypatch.setenv("MLFLOW_RUN_ID", task_run.info.run_id)
    with tracking.step_run("evaluate", params={"x": 1}) as run:
        assert run.info.run_id == task_run.info.run_id
        tracking.log_metrics({"AP": 0.5})
    assert client.get_run(task_run.info.run_id).data.metrics["AP"] == 0.5
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)  # mlflow.end_run pops it
    # our own layout: a nested run under EFFDET_MLFLOW_PARENT_RUN_ID
    monkeypatch.setenv("EFFDET_MLFLOW_PARENT_RUN_ID", parent.info.run_id)
    with tracking.step_run("train") as run:
        nested_id = run.info.run_id
    nested = client.get_run(nested_id)
    assert nested.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert nested.info.experiment_id == exp_id


def test_dead_server_warns_once_and_goes_on(monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    caplog.set_level(logging.WARNING, logger="efficientdet.tracking")
    done = []
    for _ in range(2):
        with tracking.step_run("train", params={"a": 1}) as run:
            assert run is None
            assert not tracking.log_metrics({"loss": 1.0}, step=1)
            done.append(True)
    assert done == [True, True]
    warnings = [r for r in caplog.records if "MLflow tracking disabled" in r.getMessage()]
    assert len(warnings) == 1
    assert "127.0.0.1:9" in warnings[0].getMessage()


def test_tracking_off(monkeypatch, mlflow_env):
    monkeypatch.setenv("EFFDET_TRACKING", "off")
    with tracking.step_run("train") as run:
        assert run is None
    monkeypatch.delenv("EFFDET_TRACKING")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with tracking.step_run("train") as run:
        assert run is None


def test_clean_params():
    out = tracking.clean_params({"password": "p", "aws_access_key_id": "k", "lr": None,
                                 "long": "x" * 10000, "api_token": "t"})
    assert out == {"lr": "null", "long": "x" * tracking.MAX_PARAM_CHARS}


def test_credentials_in_uris_never_reach_params_or_logs(monkeypatch, caplog):
    assert tracking.clean_params({"data": "s3://b/set", "uri": "http://u:pw@h:5000/x",
                                  "db": "postgresql://me:pw@db/m"}) == {"data": "s3://b/set"}
    tracking.reset_warning_state()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://admin:hunter2@127.0.0.1:9")
    caplog.set_level(logging.WARNING, logger="efficientdet.tracking")
    with tracking.step_run("train", params={"a": 1}) as run:
        assert run is None
    assert "carries credentials" in caplog.text and "hunter2" not in caplog.text
    tracking.reset_warning_state()
