"""Evaluation during training: the hook's schedule, best weights and summary (fake evaluator),
the in-memory evaluator against `effdet evaluate` (a tiny classifier), and real runs that log
``val_*`` metrics with their steps."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from efficientdet.training import config as cfg
from efficientdet.training.hooks import evaluation
from efficientdet.training.hooks.evaluation import PeriodicEvaluation, format_evaluation
from tests.test_training_unit import write_classification_set, write_detection_set


class ScriptedEvaluator:
    """Returns the next of APS as val_AP; records what is saved."""

    best_metric = "val_AP"

    def __init__(self, aps):
        self.aps = list(aps)
        self.saved: list = []
        self.closed = False

    def evaluate(self):
        return {"val_loss": 1.0, "val_AP": self.aps.pop(0), "num_images": 4}

    def save_model(self, uri, training):
        self.saved.append((uri, training))
        return uri

    def close(self):
        self.closed = True


def _trainer(tmp_path, **kw):
    excluded: list = []
    trainer = SimpleNamespace(
        config=cfg.build_config({"data": {"train": "d", "val": "v"}, "output": str(tmp_path),
                                 "evaluation": {"every_steps": 4}}),
        total_steps=10, step=0, restored=None, stop_agreed=False, stop_signal=0, summary={},
        meter=SimpleNamespace(exclude=excluded.append), excluded=excluded)
    trainer.__dict__.update(kw)
    return trainer


def _run(hook, trainer, steps):
    hook.on_train_begin(trainer)
    for step in steps:
        trainer.step = step
        hook.on_step_end(trainer, step, None)
    hook.on_train_end(trainer)
    hook.on_exit(trainer, None)


def test_evaluates_every_n_steps_and_at_the_end_keeping_the_best(tmp_path, monkeypatch, capsys):
    logged: list = []
    monkeypatch.setattr(evaluation.tracking, "log_metrics",
                        lambda metrics, step=None: logged.append((metrics, step)))
    scripted = ScriptedEvaluator([0.1, 0.3, 0.2])
    trainer = _trainer(tmp_path)
    _run(PeriodicEvaluation(4, evaluator=scripted), trainer, range(1, 11))
    best_uri = str(tmp_path / "best")
    best = {"step": 8, "metric": "val_AP", "value": 0.3, "model_uri": best_uri}
    assert [step for _, step in logged] == [4, 8, 10, 8]  # 4, 8, the end; then best_val_AP
    assert logged[0][0] == {"val_loss": 1.0, "val_AP": 0.1}
    assert logged[-1][0] == {"best_val_AP": 0.3}
    assert [uri for uri, _ in scripted.saved] == [best_uri, best_uri]  # at 4 and at 8
    assert scripted.saved[-1][1] == {"best": best}
    assert trainer.summary["best"] == best
    last = trainer.summary["evaluation"]
    assert (last["step"], last["val_AP"], last["num_images"]) == (10, 0.2, 4)
    assert len(trainer.excluded) == 3 and all(s >= 0 for s in trainer.excluded)
    assert scripted.closed
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("eval step 4/10  val_loss 1.0000  val_AP 0.1000  (4 images, ")
    assert lines[0].endswith(f"new best val_AP -> {best_uri}")
    assert lines[2].endswith("best val_AP 0.3000 at step 8")


def test_no_evaluation_while_stopping_on_a_signal(tmp_path, monkeypatch):
    monkeypatch.setattr(evaluation.tracking, "log_metrics", lambda *a, **k: None)
    scripted = ScriptedEvaluator([0.5])
    trainer = _trainer(tmp_path, stop_agreed=True)
    hook = PeriodicEvaluation(4, evaluator=scripted)
    hook.on_train_begin(trainer)
    hook.on_step_end(trainer, 4, None)
    assert scripted.aps == [0.5] and hook.last is None


def test_a_resumed_run_keeps_the_best_of_its_earlier_part(tmp_path, monkeypatch):
    from efficientdet.models.model_meta import ModelMeta

    monkeypatch.setattr(evaluation.tracking, "log_metrics", lambda *a, **k: None)
    earlier = {"step": 4, "metric": "val_AP", "value": 0.5, "model_uri": str(tmp_path / "best")}
    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "model.json").write_text(json.dumps(ModelMeta(
        task="detection", model="efficientdet-d0", num_classes=3, image_size=128,
        training={"best": earlier}).to_dict()))
    scripted = ScriptedEvaluator([0.2, 0.6])
    trainer = _trainer(tmp_path, restored="ckpt-4")
    _run(PeriodicEvaluation(4, evaluator=scripted), trainer, range(5, 11))
    assert [t["best"]["step"] for _, t in scripted.saved] == [10]  # 0.2 at 8 is not better
    assert trainer.summary["best"]["value"] == 0.6
    # a fresh run (nothing restored) does not inherit a stale best/ of the same output
    fresh = _trainer(tmp_path)
    hook = PeriodicEvaluation(4, evaluator=ScriptedEvaluator([0.1]))
    hook.on_train_begin(fresh)
    assert hook.best is None


def test_interval_must_be_positive():
    with pytest.raises(ValueError, match="every_steps=0"):
        PeriodicEvaluation(0)


def test_format_evaluation_line():
    assert format_evaluation(3, 9, {"val_loss": 0.5, "val_top1": 0.25, "num_images": 12},
                             1.234) == "eval step 3/9  val_loss 0.5000  val_top1 0.2500  " \
                                       "(12 images, 1.2 s)"


# --- the in-memory evaluator --------------------------------------------------------------------

def _classification_config(tmp_path, data, **extra):
    return cfg.build_config({
        "task": "classification", "model": "efficientnet-b0", "image_size": 32,
        "output": str(tmp_path / "run"),
        "data": {"train": str(data), "val": str(data), "batch_size": 4},
        "train": {"steps": 6, "log_every": 3},
        "optimizer": {"warmup_steps": 1, "lr": 0.2, "reference_batch": 4, "ema_decay": 0.9},
        "logging": {"mlflow": False, "dllogger_stdout": False}, **extra})


def test_evaluator_scores_ema_weights_as_effdet_evaluate_does(tmp_path, monkeypatch):
    import efficientdet.models
    from efficientdet.evaluation.evaluate import evaluate_model
    from efficientdet.training.ema import ExponentialMovingAverage
    from efficientdet.training.evaluator import ValidationEvaluator
    from efficientdet.training.tasks import get_task
    from tests.test_training_runs import _tiny_classifier

    monkeypatch.setattr(efficientdet.models, "build_model", _tiny_classifier)
    data = write_classification_set(tmp_path / "cls", per_class=4, classes=3, image_size=40)
    task = get_task("classification")
    config, label_map = task.resolve(_classification_config(tmp_path, data))
    model = task.build_model(config)
    ema = ExponentialMovingAverage(model.variables, 0.9)
    for shadow in ema.shadows:  # EMA weights visibly different from the raw ones
        shadow.assign(shadow * 0.5 + 0.01)
    raw = [v.numpy().copy() for v in model.variables]

    evaluator = ValidationEvaluator(config, task, model, label_map=label_map, ema=ema)
    metrics = evaluator.evaluate()
    assert set(metrics) == {"val_loss", "val_top1", "val_top5", "num_images"}
    assert metrics["num_images"] == 12 and math.isfinite(metrics["val_loss"])
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(raw, model.variables))  # restored
    assert evaluator.evaluate() == metrics  # traced functions kept: the same numbers again
    best = evaluator.save_model(str(tmp_path / "best"), {"best": {"step": 3}})
    evaluator.close()

    # `effdet evaluate` of the saved weights: the same scorer, the same numbers
    scored = evaluate_model(best, str(data), batch_size=4, report=False)
    assert scored["metrics"]["top1"] == pytest.approx(metrics["val_top1"])
    assert scored["num_images"] == 12
    from efficientdet.models.artifact import load_artifact

    saved, meta = load_artifact(best)
    assert meta.training == {"best": {"step": 3}, "ema": True}
    assert all(np.allclose(s.numpy(), v.numpy()) for s, v in zip(ema.shadows, saved.variables))

    capped = ValidationEvaluator(config, task, model, label_map=label_map, max_images=5)
    assert capped.evaluate()["num_images"] == 5


def test_evaluator_needs_a_validation_set(tmp_path):
    from efficientdet.training.evaluator import ValidationEvaluator

    config = cfg.build_config({"data": {"train": "d"}})
    with pytest.raises(ValueError, match="'data.val' is not set"):
        ValidationEvaluator(config, None, None)


def test_training_run_logs_val_metrics_and_keeps_the_best(tmp_path, monkeypatch):
    """A short classification run (tiny stand-in model): val_* metrics every 2 steps and at the
    end in summary.json and in a local MLflow store, the best weights in best/."""
    import efficientdet.models
    from efficientdet.training.loop import train
    from tests.test_training_runs import _tiny_classifier

    monkeypatch.setattr(efficientdet.models, "build_model", _tiny_classifier)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"  # a local store (file stores are refused)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("EFFDET_MLFLOW_PARENT_RUN_ID", raising=False)
    data = write_classification_set(tmp_path / "cls", per_class=4, classes=3, image_size=40)
    config = _classification_config(tmp_path, data, evaluation={"every_steps": 2})
    config = cfg.build_config(config.to_dict(), ["logging.mlflow=true",
                                                 "logging.system_metrics=false"])
    summary = train(config)
    written = json.loads((Path(config.output) / "summary.json").read_text())
    assert written["evaluation"]["step"] == 6 == summary["final_step"]
    assert {"val_loss", "val_top1", "val_top5"} <= set(written["evaluation"])
    best = written["best"]
    assert best["metric"] == "val_top1" and best["step"] in (2, 4, 6)
    assert (Path(best["model_uri"]) / "model.json").is_file()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)
    history = client.get_metric_history(summary["mlflow_run_id"], "val_top1")
    assert [h.step for h in history] == [2, 4, 6]
    assert [h.step for h in client.get_metric_history(summary["mlflow_run_id"],
                                                      "val_loss")] == [2, 4, 6]
    assert client.get_run(summary["mlflow_run_id"]).data.metrics["best_val_top1"] == \
        pytest.approx(best["value"])


@pytest.mark.slow
def test_detection_run_with_evaluation_from_the_command_line(tmp_path, monkeypatch):
    """`effdet train` of the real D0 with evaluation.every_steps: COCO AP of the in-memory
    model at each interval and at the end, the best artifact beside the final one."""
    from efficientdet.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    train_data = write_detection_set(tmp_path / "train", images=4, shards=1)
    val_data = write_detection_set(tmp_path / "val", images=4, shards=1, seed=1)
    out = tmp_path / "run"
    sets = [f"data.train={train_data}", f"data.val={val_data}", "image_size=128",
            "data.batch_size=2", "train.steps=2", "train.log_every=1",
            "optimizer.warmup_steps=1", "evaluation.every_steps=1",
            "logging.dllogger_stdout=false", "logging.mlflow=false"]
    argv = ["train", "--config", "synth-detection", "--output", str(out)]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    last = summary["evaluation"]
    assert last["step"] == 2 and last["num_images"] == 4
    assert {"val_loss", "val_cls_loss", "val_box_loss", "val_AP", "val_AP50"} <= set(last)
    assert summary["best"]["metric"] == "val_AP" and summary["best"]["step"] in (1, 2)
    assert (out / "best" / "model.weights.h5").is_file() and (out / "model").is_dir()


@pytest.mark.slow
@pytest.mark.horovod
def test_two_horovod_ranks_evaluate_on_rank_0_without_deadlock(tmp_path):
    """Rank 0 evaluates (a first evaluation of over a minute on 2 cores) while rank 1 waits in
    the next step's allreduce; both finish with the same weights, one evaluation line each."""
    import re
    import subprocess

    from tests.test_training_runs import BIN, _env

    train_data = write_detection_set(tmp_path / "train", images=8, shards=2)
    val_data = write_detection_set(tmp_path / "val", images=4, shards=1, seed=1)
    out = tmp_path / "run"
    cmd = [str(BIN / "horovodrun"), "-np", "2", "-H", "localhost:2", "--gloo",
           str(BIN / "effdet"), "train", "--config", "synth-detection", "--output", str(out)]
    for s in (f"data.train={train_data}", f"data.val={val_data}", "image_size=128",
              "data.batch_size=2", "train.steps=4", "train.log_every=1",
              "optimizer.warmup_steps=1", "evaluation.every_steps=2", "logging.mlflow=false",
              "logging.dllogger_stdout=false"):
        cmd += ["--set", s]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True,
                          timeout=1200, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.findall(r"eval step (\d)/4 ", proc.stdout) == ["2", "4"]  # rank 0 only
    full = dict(re.findall(r"rank (\d)/2 final weights sha256 (\w+)", proc.stdout))
    assert set(full) == {"0", "1"} and full["0"] == full["1"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["evaluation"]["step"] == 4 and summary["world_size"] == 2
