"""Real training runs on tiny synthetic sets: Horovod with 2 ranks, a signal then a resume
(with AMP and MLflow), and XLA. Images are 128 px (D0) / 32 px (B0) so they finish on 2 cores."""

from __future__ import annotations

import functools
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.test_training_unit import write_classification_set, write_detection_set

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "HOROVOD_"))}
    env.update({"CUDA_VISIBLE_DEVICES": "-1", "TF_CPP_MIN_LOG_LEVEL": "2",
                "PYTHONUNBUFFERED": "1"}, **extra)
    return env


def _dlll(path: Path) -> list[dict]:
    """The records of a run's DLLL file (the console carries human lines only)."""
    from efficientdet.training.dllogger import parse_line

    return [parse_line(line) for line in path.read_text().splitlines()]


@pytest.mark.horovod
def test_horovod_two_ranks_identical_weights_and_loss_falls(tmp_path):
    data = write_detection_set(tmp_path / "det", images=8, shards=2)
    out = tmp_path / "run"
    cmd = [str(BIN / "horovodrun"), "-np", "2", "-H", "localhost:2", "--gloo",
           str(BIN / "effdet"), "train", "--config", "synth-detection",
           "--set", f"data.train={data}", "--output", str(out),
           "--set", "image_size=128", "--set", "data.batch_size=2", "--set", "train.steps=12",
           "--set", "train.log_every=1", "--set", "data.deterministic=true",
           "--set", "optimizer.lr=0.08", "--set", "optimizer.reference_batch=2",
           "--set", "optimizer.warmup_steps=2", "--set", "logging.mlflow=false",
           "--set", "checkpoint.every_steps=5"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True,
                          timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout
    digests = dict(re.findall(r"rank (\d)/2 final trainable weights sha256 (\w+)", text))
    assert set(digests) == {"0", "1"}, text[-3000:]
    assert digests["0"] == digests["1"]
    full = dict(re.findall(r"rank (\d)/2 final weights sha256 (\w+)", text))
    assert full["0"] == full["1"]  # BN statistics averaged too
    # only rank 0 logs: one progress line per step
    assert len(re.findall(r"step \d+/12 ", text)) == 12
    assert "DLLL {" not in text  # the records go to dllogger.json only
    records = [r for r in _dlll(out / "dllogger.json") if isinstance(r["step"], int)]
    cls = [r["data"]["cls_loss"] for r in records]
    assert len(cls) == 12
    assert sum(cls[-3:]) / 3 < sum(cls[:3]) / 3, cls
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_batch"] == 4
    assert summary["peak_lr"] == pytest.approx(0.16)  # 0.08 per 2 images, global batch 4
    assert summary["images_per_second"] == pytest.approx(
        2 * summary["images_per_second_per_rank"])
    assert (out / "model" / "model.json").is_file()
    assert sorted(p.name for p in (out / "checkpoints").glob("ckpt-*.index")) == [
        "ckpt-10.index", "ckpt-12.index", "ckpt-5.index"]


def test_sigterm_checkpoint_then_resume_with_amp_and_mlflow(tmp_path, mlflow_env, caplog):
    """A SIGTERM mid-run writes a checkpoint and exits 143 (with a dead MLflow URI: training
    goes on, one warning); the rerun resumes from that step with the same optimizer and EMA
    state and logs into the live MLflow server."""
    import tensorflow as tf

    data = write_detection_set(tmp_path / "det", images=8, shards=1)
    out = tmp_path / "run"
    overrides = ["image_size=128", "data.batch_size=2", "train.steps=40", "train.log_every=1",
                 "checkpoint.every_steps=2", f"data.train={data}", f"output={out}",
                 "logging.system_metrics=false"]
    cmd = [str(BIN / "effdet"), "train", "--config", "synth-detection", "--amp"]
    for o in overrides:
        cmd += ["--set", o]
    dead = "http://127.0.0.1:9"  # discard port: nothing answers
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(MLFLOW_TRACKING_URI=dead),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("step 3/40"):
            proc.send_signal(signal.SIGTERM)
            break
    rest, err = proc.communicate(timeout=300)
    text = "".join(lines) + rest
    assert proc.returncode == 128 + signal.SIGTERM, text[-2000:] + err[-2000:]
    assert err.count("MLflow tracking disabled") == 1, err[-2000:]
    m = re.search(r"checkpoint (\S+) at step (\d+), state sha256 (\w+)", text)
    assert m, text[-2000:]
    saved_step, saved_digest = int(m.group(2)), m.group(3)
    assert 3 <= saved_step < 40
    ckpt_dir = out / "checkpoints"
    latest = tf.train.latest_checkpoint(str(ckpt_dir))
    assert latest.endswith(f"ckpt-{saved_step}")
    reader = tf.train.load_checkpoint(latest)
    assert reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE") == saved_step
    assert reader.get_tensor("ema/num_updates/.ATTRIBUTES/VARIABLE_VALUE") == saved_step

    # the rerun, in this process, against the live MLflow server
    from efficientdet.training.config import build_config
    from efficientdet.training.loop import train

    config = build_config({}, [f"{o}" for o in overrides]
                          + ["train.steps=" + str(saved_step + 2), "precision.amp=true",
                             "logging.dllogger_stdout=false", "model=efficientdet-d0",
                             "task=detection"])
    summary = train(config)
    assert summary["resumed_from_step"] == saved_step
    assert summary["restored_state_sha256"] == saved_digest  # optimizer + EMA + step
    assert summary["final_step"] == saved_step + 2
    assert summary["precision_policy"] == "mixed_bfloat16"
    assert all(math.isfinite(v) for v in summary["losses"].values())

    from mlflow.tracking import MlflowClient

    run = MlflowClient(mlflow_env).get_run(summary["mlflow_run_id"])
    assert run.data.params["model"] == "efficientdet-d0"
    assert run.data.params["precision.amp"] == "True"
    assert "total_loss" in run.data.metrics and "images_per_second" in run.data.metrics
    history = MlflowClient(mlflow_env).get_metric_history(run.info.run_id, "total_loss")
    assert [h.step for h in history] == [saved_step + 1, saved_step + 2]
    artifacts = {a.path for a in MlflowClient(mlflow_env).list_artifacts(run.info.run_id)}
    assert {"model", "config.json"} <= artifacts
    # the checkpoint (optimizer state) only with logging.mlflow_checkpoints (test_training_hooks)
    assert "checkpoint" not in artifacts
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "train efficientdet-d0 det"  # variant, the dataset's folder
    assert run.data.tags["effdet.variant"] == "efficientdet-d0"
    assert run.data.tags["effdet.dataset"] == str(data)
    assert run.data.tags["effdet.dataset_digest"]
    assert {"train_time_s", "params", "gmacs"} <= set(run.data.metrics)


def _tiny_classifier(name, num_classes=None, image_size=None, project_bn=False, **overrides):
    """A small Keras classifier standing in for EfficientNet: XLA-compiling B0 takes minutes on
    2 CPU cores (benchmarks/bench_train.py measures the real D0 with XLA). PROJECT_BN: its BN
    is the project's BatchNormalization (the one the models use), not Keras'."""
    import keras

    from efficientdet.models.layers import batch_norm

    inputs = keras.Input((image_size, image_size, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, use_bias=False, name="conv")(x)
    x = batch_norm("bn")(x) if project_bn else keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Activation("swish")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(num_classes, name="predictions")(x)
    logits = keras.layers.Activation("linear", dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name=name)


_tiny_classifier_with_project_bn = functools.partial(_tiny_classifier, project_bn=True)


def _frozen_bn_config(tmp_path, data, ema_decay):
    """8 steps of the tiny classifier, BN frozen for the last 4."""
    from efficientdet.training.config import build_config

    return build_config({
        "task": "classification", "model": "efficientnet-b0", "image_size": 32,
        "output": str(tmp_path / "run"), "data": {"train": str(data), "batch_size": 4},
        "train": {"steps": 8, "log_every": 1, "frozen_bn_fraction": 0.5},
        "optimizer": {"warmup_steps": 1, "lr": 0.2, "reference_batch": 4,
                      "ema_decay": ema_decay},
        "logging": {"mlflow": False, "dllogger_stdout": False},
    })


def test_frozen_bn_fraction_trains_the_last_steps_on_moving_statistics(tmp_path, monkeypatch):
    """train.frozen_bn_fraction=0.5 over 8 steps: BN moving statistics move during steps 1-4
    and stay fixed during 5-8, while BN's gamma and the other weights keep training."""
    import efficientdet.models
    from efficientdet.training.hooks.base import Hook
    from efficientdet.training.loop import train

    monkeypatch.setattr(efficientdet.models, "build_model", _tiny_classifier_with_project_bn)
    data = write_classification_set(tmp_path / "cls", per_class=4, classes=3, image_size=40)
    seen = []

    class Record(Hook):
        def on_train_begin(self, trainer):
            self.bn = trainer.model.get_layer("bn")
            self.on_step_end(trainer, 0, None)

        def on_step_end(self, trainer, step, logs):
            seen.append((step, self.bn.moving_mean.numpy().copy(), self.bn.gamma.numpy().copy()))

    config = _frozen_bn_config(tmp_path, data, ema_decay=0)
    train(config, hooks=[Record()])
    assert [s for s, _, _ in seen] == list(range(9))
    means, gammas = [m for _, m, _ in seen], [g for _, _, g in seen]
    for step in range(1, 5):  # batch statistics: the moving mean follows them
        assert not np.array_equal(means[step], means[step - 1]), step
    for step in range(5, 9):  # moving statistics: fixed, while gamma still trains
        np.testing.assert_array_equal(means[step], means[4])
        assert not np.array_equal(gammas[step], gammas[step - 1]), step


def test_resuming_past_the_frozen_bn_switch_keeps_the_checkpointed_ema(tmp_path, monkeypatch):
    """A run stopped at step 6 of 8 (BN frozen from step 4) and resumed keeps the EMA it
    checkpointed, which has averaged since the switch: 4 updates at the end, not 2 (a
    restart at the resume would drop steps 5-6)."""
    import efficientdet.models
    from efficientdet.training.hooks.base import Hook
    from efficientdet.training.hooks.checkpointing import Checkpointing
    from efficientdet.training.loop import train

    monkeypatch.setattr(efficientdet.models, "build_model", _tiny_classifier_with_project_bn)
    data = write_classification_set(tmp_path / "cls", per_class=4, classes=3, image_size=40)

    class Stop(Exception):
        pass

    class StopAt6(Hook):
        def on_step_end(self, trainer, step, logs):
            if step == 6:
                raise Stop

    class Record(Hook):
        def on_train_end(self, trainer):
            self.updates = int(trainer.ema.num_updates.numpy())
            self.frozen = trainer.model.get_layer("bn").use_moving_statistics

    config = _frozen_bn_config(tmp_path, data, ema_decay=0.9)
    with pytest.raises(Stop):
        train(config, hooks=[Checkpointing(6), StopAt6()])
    record = Record()
    summary = train(config, hooks=[Checkpointing(6), record])
    assert summary["resumed_from_step"] == 6
    assert record.frozen and record.updates == 4


def test_xla_and_amp_classification_no_nan(tmp_path, monkeypatch):
    """The XLA-compiled step under mixed_bfloat16, label smoothing, the classification task
    end to end (real input pipeline, loop, checkpoint and artifact)."""
    import efficientdet.models

    monkeypatch.setattr(efficientdet.models, "build_model", _tiny_classifier)
    data = write_classification_set(tmp_path / "cls", per_class=4, classes=3, image_size=40)
    from efficientdet.training.config import build_config
    from efficientdet.training.loop import train

    config = build_config({
        "task": "classification", "model": "efficientnet-b0", "image_size": 32,
        "output": str(tmp_path / "run"),
        "data": {"train": str(data), "batch_size": 4},
        "train": {"steps": 20, "log_every": 1},
        "optimizer": {"warmup_steps": 2, "label_smoothing": 0.1, "lr": 0.2,
                      "reference_batch": 4},
        "precision": {"xla": True, "amp": True},
        "logging": {"mlflow": False, "dllogger_stdout": False},
    })
    summary = train(config)
    assert summary["xla"] is True and summary["final_step"] == 20
    assert summary["precision_policy"] == "mixed_bfloat16"
    losses = summary["losses"]
    assert set(losses) >= {"loss", "accuracy", "l2_loss", "total_loss"}
    assert all(math.isfinite(v) and abs(v) < 1e6 for v in losses.values())
    from efficientdet.models.artifact import load_artifact

    _model, meta = load_artifact(summary["model_uri"])
    assert meta.task == "classification" and meta.num_classes == 3
    assert meta.class_names[0] == "class0"
    assert meta.training["ema"] is True and meta.training["final_step"] == 20


def test_deterministic_mode_repeats_a_run_exactly(tmp_path):
    """data.deterministic: the same seed gives the same loss curve and the same weights; another
    seed does not (so the check can fail). Batch 8 and 8 steps: without the mode's kernel
    and grappler settings, D0's losses at this size part by step 3-5 (docs/performance.md)."""
    data = write_detection_set(tmp_path / "det", images=16, shards=2)

    def run(name: str, seed: int) -> tuple[list, str]:
        out = tmp_path / name
        cmd = [str(BIN / "effdet"), "train", "--config", "synth-detection",
               "--set", f"data.train={data}", "--output", str(out), "--set", f"seed={seed}",
               "--set", "image_size=128", "--set", "data.batch_size=8", "--set", "train.steps=8",
               "--set", "train.log_every=1", "--set", "data.deterministic=true",
               "--set", "optimizer.warmup_steps=1", "--set", "logging.mlflow=false",
               "--set", "checkpoint.resume=false"]
        proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True,
                              timeout=600, check=False)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        losses = [r["data"]["total_loss"] for r in _dlll(out / "dllogger.json")
                  if isinstance(r["step"], int)]
        assert len(losses) == 8
        return losses, json.loads((out / "summary.json").read_text())["weights_sha256"]

    first, again, other = run("a", 3), run("b", 3), run("c", 4)
    assert first == again
    assert other[0] != first[0] and other[1] != first[1]
