"""The console lines of a run on rank 0: what is trained, then one line per logged step."""

from __future__ import annotations

from efficientdet.training.hooks.base import Hook

RATE_KEYS = ("learning_rate", "images_per_second")


def format_progress(step: int, total: int, logs: dict) -> str:
    """``step 10/600  loss 1.2345  ...  lr 0.00800  12.3 img/s``."""
    parts = [f"step {step}/{total}"]
    parts += [f"{k} {v:.4f}" for k, v in logs.items() if k not in RATE_KEYS]
    parts += [f"lr {logs['learning_rate']:.5f}", f"{logs['images_per_second']:.1f} img/s"]
    return "  ".join(parts)


class ConsoleProgress(Hook):
    """Prints the run's banner (model, ranks, steps, batch, lr, precision, resume, init) and a
    progress line at every logged step. Rank 0 only: list it on rank 0."""

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

    def on_step_end(self, trainer, step, logs) -> None:
        if logs is not None:
            print(format_progress(step, trainer.total_steps, logs), flush=True)
