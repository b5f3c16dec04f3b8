"""The console of a run on rank 0: a line per phase (building, compiling the step, checkpoint
saved), the banner of what is trained, then one human line per logged step."""

from __future__ import annotations

import time

from efficientdet import console
from efficientdet.training.hooks.base import Hook

RATE_KEYS = ("learning_rate", "images_per_second")
TOTAL_KEYS = ("loss", "total_loss")


def _number(value: float) -> str:
    return f"{value:.4g}"


def format_values(logs: dict) -> str:
    """``loss 1.234 (cls 0.91 box 0.0065)  l2 1.2``: the task's loss with its ``*_loss`` parts
    in brackets, then the other values (weight decay ``l2``, ``accuracy``); rates left out."""
    terms = {k[:-len("_loss")]: v for k, v in logs.items()
             if k.endswith("_loss") and k not in (*TOTAL_KEYS, "l2_loss")}
    parts = []
    if "loss" in logs:
        inner = " ".join(f"{k} {_number(v)}" for k, v in terms.items())
        parts.append(f"loss {_number(logs['loss'])}" + (f" ({inner})" if inner else ""))
    shown = {*TOTAL_KEYS, *RATE_KEYS, *(f"{t}_loss" for t in terms)}
    parts += [f"{k.removesuffix('_loss')} {_number(v)}" for k, v in logs.items()
              if k not in shown]
    return "  ".join(parts)


def format_progress(step: int, total: int, logs: dict, eta_seconds: float | None = None) -> str:
    """``step 120/400  loss 1.234 (cls 0.91 box 0.0065)  l2 1.2  lr 0.0712  38.1 img/s  ETA
    2m31s``: the values (`format_values`), the learning rate, throughput and time left."""
    parts = [f"step {step}/{total}"]
    values = format_values(logs)
    if values:
        parts.append(values)
    if "learning_rate" in logs:
        parts.append(f"lr {_number(logs['learning_rate'])}")
    if "images_per_second" in logs:
        parts.append(f"{logs['images_per_second']:.1f} img/s")
    if eta_seconds is not None:
        parts.append(f"ETA {console.format_duration(eta_seconds)}")
    return "  ".join(parts)


def eta_seconds(step: int, total: int, seconds_per_step: float | None) -> float | None:
    """Time left at SECONDS_PER_STEP; None when unknown or nothing is left."""
    if step >= total or not seconds_per_step or seconds_per_step <= 0:
        return None
    return (total - step) * seconds_per_step


class ConsoleProgress(Hook):
    """Prints what the run is doing: the build, the banner (model, ranks, steps, batch, lr,
    precision, resume, init), the first (compiling) step, a progress line at every logged step
    and each checkpoint. Rank 0 only: list it on rank 0."""

    def __init__(self):
        self._phase_start = self._first_step_end = time.monotonic()

    def on_setup(self, trainer) -> None:
        c = trainer.config
        self._phase_start = time.monotonic()
        console.phase(f"building {c.model} ({c.task}) and its training state")

    def on_train_begin(self, trainer) -> None:
        c, lengths = trainer.config, trainer.lengths
        print(f"training {c.model} ({c.task}, {c.num_classes} classes, {c.image_size} px) on "
              f"{trainer.ctx.size} rank(s): steps {trainer.start_step}->{trainer.total_steps}, "
              f"global batch {lengths['global_batch']}, peak lr {lengths['peak_lr']:.4g}, "
              f"{trainer.policy}{', XLA' if c.precision.xla else ''}"
              + (f"; resumed from {trainer.restored} (state sha256 {trainer.restored_digest})"
                 if trainer.restored else ""), flush=True)
        for kind, info in trainer.init_report.items():
            print(f"init.{kind} {info['source']}: loaded {info['loaded']} variables"
                  + (f", re-initialised {', '.join(info['reinitialised'])}"
                     if info.get("reinitialised") else ""), flush=True)
        if trainer.start_step < trainer.total_steps:
            console.phase("compiling the training step"
                          + (" with XLA" if c.precision.xla else "")
                          + " (the first step takes longest)")
        self._phase_start = time.monotonic()

    def on_step_end(self, trainer, step, logs) -> None:
        now = time.monotonic()
        if step == trainer.start_step + 1:
            console.phase("first step compiled and run in "
                          f"{console.format_duration(now - self._phase_start)}")
            self._first_step_end = now
        if logs is not None:
            # the pace since the first step: compiling it says nothing about the others
            done = step - trainer.start_step - 1
            pace = (now - self._first_step_end) / done if done > 0 else None
            eta = eta_seconds(step, trainer.total_steps, pace)
            print(format_progress(step, trainer.total_steps, logs, eta), flush=True)

    def on_checkpoint(self, trainer, step, path) -> None:
        console.phase(f"checkpoint saved: {path} (step {step})")
