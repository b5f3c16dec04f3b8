"""The Trainer's event order and each hook on its own (fake trainers: no model is trained)."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from efficientdet.training import config as cfg
from efficientdet.training.hooks.base import Hook
from efficientdet.training.hooks.batchnorm import BatchNormAveraging
from efficientdet.training.hooks.checkpointing import Checkpointing
from efficientdet.training.hooks.dllogging import DLLLogging
from efficientdet.training.hooks.final_artifact import FinalArtifact
from efficientdet.training.hooks.mlflow_tracking import MLflowTracking
from efficientdet.training.hooks.progress import ConsoleProgress, eta_seconds, format_progress
from efficientdet.training.hooks.stop_signal import StopOnSignal, TrainingInterrupted
from efficientdet.training.trainer import Trainer, TrainingDiverged


class FakeCtx:
    def __init__(self, rank=0, size=1, flag=None):
        self.rank, self.size, self.local_rank = rank, size, 0
        self.flag = flag  # what the allreduce of the stop flag returns (None: its input)
        self.averaged: list = []

    @property
    def is_chief(self):
        return self.rank == 0

    def allreduce_grads(self, grads, extra=None):
        return grads, extra if self.flag is None else self.flag

    def average(self, values):
        return [v * 10 for v in values]  # visibly "averaged"

    def average_variables(self, variables):
        self.averaged = list(variables)

    def broadcast(self, variables):
        pass


class FakeStore:
    def __init__(self, latest=None):
        self.saved: list[int] = []
        self.latest = latest
        self.local_dir = "."

    def save(self, step):
        self.saved.append(step)
        self.latest = f"ckpt/ckpt-{step}"
        return self.latest

    def restore_latest(self):
        return self.latest


class Recorder(Hook):
    def __init__(self, name, events):
        self.name, self.events = name, events

    def __getattribute__(self, item):
        if item.startswith("on_"):
            events, name = object.__getattribute__(self, "events"), object.__getattribute__(
                self, "name")
            return lambda trainer, *args: events.append((name, item, *args))
        return object.__getattribute__(self, item)


def _config(**sets):
    base = {"data": {"train": "d", "batch_size": 2}, "train": {"steps": 4, "log_every": 2}}
    return cfg.build_config(base, [f"{k}={v}" for k, v in sets.items()])


def _fake_build(trainer, losses=None, batches=None):
    """What `Trainer._resolve` and `_build` make, without data or a model: steps that return
    LOSSES."""
    losses = losses or (lambda step: {"loss": 1.0, "total_loss": 1.5})
    step_var = SimpleNamespace(value=0)
    step_var.numpy = lambda: step_var.value
    trainer.task = SimpleNamespace(dataset=lambda *a, **k: batches or [(None, None)] * 100)
    trainer.label_map = None
    trainer.lengths = {"total_steps": trainer.config.train.steps, "global_batch": 2,
                       "peak_lr": 0.1}
    trainer.total_steps = trainer.config.train.steps
    trainer.policy = "float32"
    trainer.init_report = {}
    trainer.frozen = []
    trainer.step_var = step_var
    trainer.state_vars = []
    trainer.store = FakeStore()
    trainer.meter = SimpleNamespace(step=lambda warmup=False: None, window=lambda: 8.0)
    trainer.current_lr = lambda: 0.01
    trainer.train_step = lambda images, labels, stop: (losses(trainer.step + 1),
                                                       trainer.ctx.allreduce_grads([], [stop])[1])


def _trainer(config, ctx, hooks, monkeypatch, **build):
    trainer = Trainer(config, ctx, hooks)
    monkeypatch.setattr(trainer, "_resolve", lambda: None)
    monkeypatch.setattr(trainer, "_build", lambda: _fake_build(trainer, **build))
    monkeypatch.setattr("efficientdet.training.trainer.weights_digest", lambda v: "d")
    trainer.model = SimpleNamespace(trainable_variables=[], variables=[])
    return trainer


# --- the Trainer ------------------------------------------------------------------------------

def test_events_in_order_and_ends_in_reverse(monkeypatch):
    events: list = []
    trainer = _trainer(_config(), FakeCtx(), [Recorder("a", events), Recorder("b", events)],
                       monkeypatch)
    summary = trainer.fit()
    names = [(h, e) for h, e, *_ in events]
    assert names[:6] == [("a", "on_setup"), ("b", "on_setup"), ("a", "on_restore"),
                         ("b", "on_restore"), ("a", "on_train_begin"), ("b", "on_train_begin")]
    assert names[-4:] == [("b", "on_train_end"), ("a", "on_train_end"), ("b", "on_exit"),
                          ("a", "on_exit")]
    steps = [args for h, e, *args in events if e == "on_step_end" and h == "a"]
    # logs every log_every=2 steps: rank-averaged losses, lr and throughput
    assert steps[0] == [1, None] and steps[2] == [3, None]
    assert steps[1] == [2, {"loss": 10.0, "total_loss": 15.0, "learning_rate": 0.01,
                            "images_per_second": 8.0}]
    assert steps[3][0] == 4 and trainer.metrics == {"loss": 10.0, "total_loss": 15.0}
    assert events[-1] == ("a", "on_exit", None)
    assert summary["total_steps"] == 4 and summary["trainable_sha256"] == "d"


def test_a_nan_loss_ends_the_run_and_hooks_see_the_error(monkeypatch):
    events: list = []
    trainer = _trainer(_config(), FakeCtx(), [Recorder("a", events)], monkeypatch,
                       losses=lambda step: {"loss": 1.0, "total_loss": math.nan if step == 3
                                            else 1.0})
    with pytest.raises(TrainingDiverged, match="at step 3"):
        trainer.fit()
    assert events[-1][:2] == ("a", "on_exit") and isinstance(events[-1][2], TrainingDiverged)
    assert not [e for e in events if e[1] == "on_train_end"]


def test_save_checkpoint_tells_the_hooks(monkeypatch):
    """The cue an evaluation hook waits for."""
    events: list = []
    trainer = _trainer(_config(), FakeCtx(), [Recorder("eval", events)], monkeypatch)
    trainer.store = FakeStore()
    assert trainer.save_checkpoint(7) == "ckpt/ckpt-7"
    assert events == [("eval", "on_checkpoint", 7, "ckpt/ckpt-7")]


def test_train_refuses_a_dict():
    from efficientdet.training.loop import train

    with pytest.raises(TypeError, match="expected a TrainConfig"):
        train({"data": {"train": "d"}})


def test_standard_hooks_per_rank():
    from efficientdet.training.loop import standard_hooks

    chief = [type(h).__name__ for h in standard_hooks(_config(), True)]
    assert chief == ["ConsoleProgress", "MLflowTracking", "DLLLogging", "FinalArtifact",
                     "StopOnSignal", "Checkpointing", "BatchNormAveraging"]
    other = [type(h).__name__ for h in standard_hooks(_config(**{"logging.mlflow": False}),
                                                      False)]
    assert other == ["FinalArtifact", "StopOnSignal", "Checkpointing", "BatchNormAveraging"]
    evaluating = _config(**{"data.val": "v", "evaluation.every_steps": 5})
    chief = [type(h).__name__ for h in standard_hooks(evaluating, True)]
    # after the BN statistics are averaged (reverse order at the end), before the artifact
    assert chief[3:6] == ["FinalArtifact", "PeriodicEvaluation", "StopOnSignal"]
    assert "PeriodicEvaluation" not in [type(h).__name__
                                        for h in standard_hooks(evaluating, False)]


# --- checkpointing ------------------------------------------------------------------------------

def _fake_trainer(**kw):
    trainer = SimpleNamespace(is_chief=True, total_steps=10, step=0, start_step=0, summary={},
                              restored=None, restored_digest=None, store=FakeStore(),
                              state_digest=lambda: "s")
    trainer.save_checkpoint = trainer.store.save
    trainer.__dict__.update(kw)
    return trainer


def test_checkpointing_saves_every_n_and_at_the_end():
    hook, trainer = Checkpointing(every_steps=4), _fake_trainer()
    hook.on_restore(trainer)
    hook.on_train_begin(trainer)
    for step in range(1, 11):
        trainer.step = step
        hook.on_step_end(trainer, step, None)
    hook.on_train_end(trainer)
    assert trainer.store.saved == [4, 8, 10]
    assert trainer.summary["checkpoint"] == "ckpt/ckpt-10"


def test_checkpointing_does_not_save_the_last_step_twice():
    hook, trainer = Checkpointing(every_steps=5), _fake_trainer(total_steps=5, step=5)
    hook.on_train_begin(trainer)
    hook.last_saved = 5
    trainer.store.latest = "ckpt/ckpt-5"
    hook.on_train_end(trainer)
    assert trainer.store.saved == [] and trainer.summary["checkpoint"] == "ckpt/ckpt-5"


def test_checkpointing_resumes_on_rank_0_only():
    hook = Checkpointing(every_steps=5)
    chief = _fake_trainer(store=FakeStore(latest="ckpt/ckpt-3"))
    hook.on_restore(chief)
    assert (chief.restored, chief.restored_digest) == ("ckpt/ckpt-3", "s")
    other = _fake_trainer(is_chief=False, store=FakeStore(latest="ckpt/ckpt-3"))
    hook.on_restore(other)
    hook.on_step_end(other, 5, None)
    hook.on_train_end(other)
    assert other.restored is None and other.store.saved == []
    assert other.summary["checkpoint"] is None
    fresh = _fake_trainer(store=FakeStore(latest="ckpt/ckpt-3"))
    Checkpointing(every_steps=5, resume=False).on_restore(fresh)
    assert fresh.restored is None


def test_checkpointing_resumed_run_does_not_resave_its_start():
    hook = Checkpointing(every_steps=100)
    trainer = _fake_trainer(store=FakeStore(latest="ckpt/ckpt-10"), start_step=10, step=10)
    hook.on_restore(trainer)
    hook.on_train_begin(trainer)
    hook.on_train_end(trainer)
    assert trainer.store.saved == [] and trainer.summary["checkpoint"] == "ckpt/ckpt-10"


def test_checkpointing_rejects_a_zero_interval():
    with pytest.raises(ValueError, match="every_steps=0"):
        Checkpointing(every_steps=0)


def test_checkpoint_store_keeps_the_last_k_and_resumes(tmp_path):
    import tensorflow as tf

    from efficientdet.training.checkpoints import CheckpointStore

    step = tf.Variable(0, dtype=tf.int64)
    store = CheckpointStore(tf.train.Checkpoint(step=step), str(tmp_path), keep=2)
    hook, trainer = Checkpointing(every_steps=1), _fake_trainer(store=store, total_steps=9)
    trainer.save_checkpoint = store.save
    for s in range(1, 5):
        step.assign(s)
        hook.on_step_end(trainer, s, None)
    assert sorted(p.name for p in tmp_path.glob("ckpt-*.index")) == ["ckpt-3.index",
                                                                      "ckpt-4.index"]
    step.assign(0)
    hook.on_restore(trainer)
    assert trainer.restored.endswith("ckpt-4") and int(step.numpy()) == 4


# --- signals ------------------------------------------------------------------------------------

def test_sigterm_stops_after_the_step_with_a_checkpoint(capsys):
    hook, trainer = StopOnSignal(), _fake_trainer(stop_signal=0, stop_agreed=False)
    before = signal.getsignal(signal.SIGTERM)
    hook.on_setup(trainer)
    try:
        hook.on_step_end(trainer, 1, None)  # no signal: nothing happens
        os.kill(os.getpid(), signal.SIGTERM)
        assert trainer.stop_signal == signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) is before  # a second signal acts as usual
        with pytest.raises(TrainingInterrupted) as info:
            hook.on_step_end(trainer, 2, None)
    finally:
        hook.on_exit(trainer, None)
    assert info.value.checkpoint == "ckpt/ckpt-2" and info.value.exit_code == 143
    assert info.value.step == 2 and trainer.store.saved == [2]
    out = capsys.readouterr()
    assert "received SIGTERM: stopping after this step" in out.err
    assert "checkpoint ckpt/ckpt-2 at step 2, state sha256 s" in out.out


def test_a_signal_on_another_rank_stops_this_one_without_saving():
    hook = StopOnSignal()
    trainer = _fake_trainer(is_chief=False, stop_signal=0, stop_agreed=True)
    with pytest.raises(TrainingInterrupted) as info:
        hook.on_step_end(trainer, 3, None)
    assert info.value.checkpoint is None and info.value.signum == signal.SIGTERM
    assert trainer.store.saved == []


def test_signal_handlers_are_restored_on_exit():
    hook, trainer = StopOnSignal(), _fake_trainer(stop_signal=0)
    before = signal.getsignal(signal.SIGINT)
    hook.on_setup(trainer)
    assert signal.getsignal(signal.SIGINT) is not before
    hook.on_exit(trainer, RuntimeError("x"))
    assert signal.getsignal(signal.SIGINT) is before


# --- BN averaging -------------------------------------------------------------------------------

def test_batchnorm_averaging_takes_moving_statistics_and_their_ema():
    import keras

    from efficientdet.training.ema import ExponentialMovingAverage

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
                              keras.layers.BatchNormalization()])
    ema = ExponentialMovingAverage(model.variables, 0.9)
    ctx = FakeCtx()
    BatchNormAveraging().on_train_end(SimpleNamespace(model=model, ema=ema, ctx=ctx))
    names = sorted(v.path.rsplit("/", 1)[-1] for v in ctx.averaged[:2])
    assert names == ["moving_mean", "moving_variance"] and len(ctx.averaged) == 4
    trainable = {id(v) for v in model.trainable_variables}
    assert not [v for v in ctx.averaged if id(v) in trainable]


# --- console, dllogger, MLflow --------------------------------------------------------------------

def _logging_trainer(tmp_path, **kw):
    config = _config(output=str(tmp_path))
    trainer = _fake_trainer(
        config=config, ctx=FakeCtx(), lengths={"global_batch": 8, "peak_lr": 0.08},
        policy="float32", init_report={}, run_params={"optimizer.lr": 0.08}, log_files=[],
        metrics={"loss": 0.5}, step=10)
    trainer.summary = {"throughput": {"images_per_second": 12.0, "timed_steps": 8,
                                      "warmup_images_per_second": None},
                       "model_uri": str(tmp_path / "model"), "checkpoint": None}
    trainer.__dict__.update(kw)
    return trainer


def test_console_banner_phases_and_progress_lines(tmp_path, capsys, monkeypatch):
    from efficientdet.training.hooks import progress

    clock = iter([0.0, 0.0, 10.0, 40.0, 40.5, 41.0])  # new, setup, begin, steps 5 (first), 6, 7
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    trainer = _logging_trainer(
        tmp_path, restored="ckpt-4", restored_digest="abc", start_step=4, total_steps=10,
        init_report={"backbone": {"source": "b0.h5", "loaded": 12}})
    hook = ConsoleProgress()
    hook.on_setup(trainer)
    hook.on_train_begin(trainer)
    hook.on_step_end(trainer, 5, None)
    hook.on_step_end(trainer, 6, {"loss": 1.23456, "cls_loss": 0.91234, "box_loss": 0.0065,
                                  "l2_loss": 1.2, "total_loss": 2.43, "learning_rate": 0.008,
                                  "images_per_second": 16.0})
    hook.on_step_end(trainer, 7, None)
    hook.on_checkpoint(trainer, 6, "ckpt/ckpt-6")
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == ("training efficientdet-d0 (detection, None classes, None px) on 1 "
                        "rank(s): steps 4->10, global batch 8, peak lr 0.08, float32; resumed "
                        "from ckpt-4 (state sha256 abc)")
    assert lines[1] == "init.backbone b0.h5: loaded 12 variables"
    # 4 steps left at the 0.5 s a step since the first (compiling) step: 2 s
    assert lines[2] == ("step 6/10  loss 1.235 (cls 0.9123 box 0.0065)  l2 1.2  lr 0.008  "
                        "16.0 img/s  ETA 2.0s")
    assert len(lines) == 3
    phases = captured.err.splitlines()
    assert phases[0] == "building efficientdet-d0 (detection) and its training state"
    assert phases[1] == "compiling the training step (the first step takes longest)"
    assert phases[2] == "first step compiled and run in 30s"
    assert phases[3] == "checkpoint saved: ckpt/ckpt-6 (step 6)"
    assert len(phases) == 4


def test_progress_line_format():
    assert format_progress(1, 2, {"learning_rate": 1.0, "images_per_second": 2.0}) == (
        "step 1/2  lr 1  2.0 img/s")
    classifier = {"loss": 2.3026, "accuracy": 0.125, "l2_loss": 0.5, "total_loss": 2.8,
                  "learning_rate": 0.0712, "images_per_second": 38.12}
    assert format_progress(120, 400, classifier, 151.0) == (
        "step 120/400  loss 2.303  accuracy 0.125  l2 0.5  lr 0.0712  38.1 img/s  ETA 2m31s")
    assert eta_seconds(400, 400, 0.5) is None and eta_seconds(1, 400, None) is None
    assert eta_seconds(100, 400, 0.5) == 150.0


def test_dllogger_writes_parameters_steps_and_the_end(tmp_path, capsys):
    from efficientdet.training.dllogger import parse_line

    trainer = _logging_trainer(tmp_path)
    hook = DLLLogging.for_output(str(tmp_path), stdout=False)
    assert hook.file == str(tmp_path / "dllogger.json") and hook.upload_uri is None
    hook.on_train_begin(trainer)
    hook.on_step_end(trainer, 9, None)
    hook.on_step_end(trainer, 10, {"loss": 0.5})
    hook.on_train_end(trainer)
    hook.on_exit(trainer, None)
    records = [parse_line(x) for x in Path(hook.file).read_text().splitlines()]
    assert [r["step"] for r in records] == ["PARAMETER", 10, []]
    assert records[0]["data"] == {"optimizer.lr": 0.08}
    assert records[2]["data"] == {"loss": 0.5, "images_per_second": 12.0, "timed_steps": 8,
                                  "final_step": 10}
    assert trainer.log_files == [hook.file] and capsys.readouterr().out == ""


def test_dllogger_for_s3_output_uploads_also_after_an_error(tmp_path, monkeypatch):
    from efficientdet.training.hooks import dllogging

    uploads = []
    monkeypatch.setattr(dllogging.storage, "upload_file", lambda f, uri: uploads.append(uri))
    hook = DLLLogging.for_output("s3://bucket/run", stdout=False)
    assert hook.upload_uri == "s3://bucket/run/dllogger.json"
    assert not hook.file.startswith("s3://")
    hook.on_train_begin(_logging_trainer(tmp_path))
    hook.on_exit(None, RuntimeError("boom"))
    assert uploads == ["s3://bucket/run/dllogger.json"]
    assert DLLLogging.for_output("s3://b/r", str(tmp_path / "x.json")).upload_uri is None


class FakeMlflow:
    def __init__(self):
        self.calls: list = []
        self.exited = None

    def step_run(self, step, *, params, subject, log_system_metrics):
        self.calls.append(("step_run", step, params, log_system_metrics))
        self.subject = subject
        outer = self

        class Context:
            def __enter__(self):
                return SimpleNamespace(info=SimpleNamespace(run_id="run-9"))

            def __exit__(self, *exc):
                outer.exited = exc
                return False
        return Context()

    def record(self, name):
        return lambda *a, **k: self.calls.append((name, *a, *k.values()))


def test_mlflow_records_params_metrics_and_artifacts(tmp_path, monkeypatch):
    from efficientdet.training.hooks import mlflow_tracking

    fake = FakeMlflow()
    monkeypatch.setattr(mlflow_tracking.tracking, "step_run", fake.step_run)
    for name in ("log_dict", "log_metrics", "log_artifacts", "log_artifact"):
        monkeypatch.setattr(mlflow_tracking.tracking, name, fake.record(name))
    (tmp_path / "model").mkdir()
    (tmp_path / "dllogger.json").write_text("x")
    trainer = _logging_trainer(tmp_path, log_files=[str(tmp_path / "dllogger.json")])
    trainer.summary.update({"train_time_s": 4.5, "params": 1000, "gmacs": None})
    hook = MLflowTracking(system_metrics=False)
    hook.on_train_begin(trainer)
    hook.on_step_end(trainer, 3, None)
    hook.on_step_end(trainer, 4, {"loss": 0.5})
    hook.on_train_end(trainer)
    hook.on_exit(trainer, None)
    assert fake.calls[0] == ("step_run", "train", {"optimizer.lr": 0.08}, False)
    assert (fake.subject.task, fake.subject.variant) == ("detection", "efficientdet-d0")
    assert fake.subject.dataset == trainer.config.data.train
    assert trainer.summary["mlflow_run_id"] == "run-9"
    assert fake.calls[1][0] == "log_dict" and fake.calls[1][2] == "config.json"
    assert fake.calls[1][1]["precision"] == {"amp": False, "xla": False}
    assert fake.calls[2] == ("log_metrics", {"loss": 0.5}, 4)
    assert fake.calls[3] == ("log_metrics", {"images_per_second": 12.0, "timed_steps": 8,
                                             "train_time_s": 4.5, "params": 1000}, 10)
    assert fake.calls[4] == ("log_artifacts", str(tmp_path / "model"), "model")
    assert fake.calls[5] == ("log_artifact", str(tmp_path / "dllogger.json"), "logs")
    assert fake.exited == (None, None, None)


@pytest.mark.parametrize("checkpoints", [False, True])
def test_mlflow_uploads_the_checkpoint_only_when_asked(tmp_path, monkeypatch, checkpoints):
    from efficientdet.training.hooks import mlflow_tracking

    fake = FakeMlflow()
    monkeypatch.setattr(mlflow_tracking.tracking, "step_run", fake.step_run)
    for name in ("log_dict", "log_metrics", "log_artifacts", "log_artifact"):
        monkeypatch.setattr(mlflow_tracking.tracking, name, fake.record(name))
    (tmp_path / "model").mkdir()
    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    for name in ("ckpt-10.index", "ckpt-10.data-00000-of-00001", "checkpoint"):
        (ckpt / name).write_text("x")
    trainer = _logging_trainer(tmp_path, store=SimpleNamespace(local_dir=str(ckpt)))
    trainer.summary["checkpoint"] = str(ckpt / "ckpt-10")
    hook = MLflowTracking(system_metrics=False, checkpoints=checkpoints)
    hook.on_train_begin(trainer)
    hook.on_train_end(trainer)
    uploaded = sorted(Path(c[1]).name for c in fake.calls
                      if c[0] == "log_artifact" and c[2] == "checkpoint")
    assert uploaded == (["checkpoint", "ckpt-10.data-00000-of-00001", "ckpt-10.index"]
                        if checkpoints else [])


def test_mlflow_run_ends_with_the_error(tmp_path, monkeypatch):
    from efficientdet.training.hooks import mlflow_tracking

    fake = FakeMlflow()
    monkeypatch.setattr(mlflow_tracking.tracking, "step_run", fake.step_run)
    monkeypatch.setattr(mlflow_tracking.tracking, "log_dict", fake.record("log_dict"))
    hook = MLflowTracking()
    hook.on_train_begin(_logging_trainer(tmp_path))
    error = TrainingInterrupted(signal.SIGTERM, 3, None)
    hook.on_exit(None, error)
    assert fake.exited[0] is TrainingInterrupted and fake.exited[1] is error


# --- final artifact + summary.json ----------------------------------------------------------------

def test_final_artifact_writes_summary_and_model_on_rank_0(tmp_path, monkeypatch, capsys):
    saved = []
    monkeypatch.setattr(FinalArtifact, "save_model", staticmethod(saved.append))
    meter = SimpleNamespace(summary=lambda: {"images_per_second": 12.0,
                                             "images_per_second_per_rank": 12.0,
                                             "timed_steps": 8})
    model = SimpleNamespace(variables=[], trainable_weights=[np.zeros((3, 4))], layers=[],
                            name="fake")
    trainer = _logging_trainer(tmp_path, meter=meter, model=model, ema=None, label_map=None)
    trainer.summary = {"mlflow_run_id": None, "checkpoint": "c", "world_size": 1,
                       "precision_policy": "float32"}
    hook = FinalArtifact()
    hook.on_train_begin(trainer)
    hook.on_train_end(trainer)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {"final_step", "losses", "images_per_second", "images_per_second_per_rank",
            "throughput", "weights_sha256", "state_sha256", "model_uri",
            "checkpoint", "train_time_s"} <= set(summary)
    assert summary["params"] == 12 and summary["gmacs"] == 0.0
    assert 0 <= summary["train_time_s"] < 60
    assert summary["model_uri"] == str(tmp_path / "model") and summary["final_step"] == 10
    assert saved == [trainer]
    out = capsys.readouterr().out
    assert out == ""  # one rank: the digest is in summary.json, no rank needs comparing

    from efficientdet.training.hooks.final_artifact import artifact_meta

    trainer.config = _config(output=str(tmp_path), num_classes=3, image_size=128)
    meta = artifact_meta(trainer)  # a ModelMeta, as model.json is read back
    assert (meta.task, meta.model, meta.num_classes, meta.image_size) == (
        "detection", "efficientdet-d0", 3, 128)
    assert meta.training == {"final_step": 10, "losses": {"loss": 0.5},
                                "images_per_second": 12.0, "world_size": 1,
                                "precision_policy": "float32", "mlflow_run_id": None,
                                "ema": False}


def test_final_artifact_on_other_ranks_only_reports(tmp_path, monkeypatch):
    saved = []
    monkeypatch.setattr(FinalArtifact, "save_model", staticmethod(saved.append))
    meter = SimpleNamespace(summary=lambda: {"images_per_second": 1.0,
                                             "images_per_second_per_rank": 1.0})
    trainer = _logging_trainer(tmp_path, meter=meter, model=SimpleNamespace(variables=[]),
                               is_chief=False, ctx=FakeCtx(rank=1, size=2))
    FinalArtifact().on_train_end(trainer)
    assert saved == [] and not (tmp_path / "summary.json").exists()
    assert trainer.summary["model_uri"] == str(tmp_path / "model")
