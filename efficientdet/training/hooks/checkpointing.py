"""Checkpoints: resume from the latest one, save every N steps and at the end (rank 0)."""

from __future__ import annotations

from efficientdet.training.hooks.base import Hook


class Checkpointing(Hook):
    """Resumes from the store's latest checkpoint when RESUME, saves every EVERY_STEPS steps
    and once at the end unless the last step was just saved; the store keeps the last K. Only
    rank 0 touches the store (the others receive its state by broadcast)."""

    def __init__(self, every_steps: int, resume: bool = True):
        if every_steps < 1:
            raise ValueError(f"checkpoint every_steps={every_steps}: must be at least 1")
        self.every_steps = every_steps
        self.resume = resume
        self.last_saved: int | None = None

    def on_restore(self, trainer) -> None:
        if trainer.is_chief and self.resume:
            trainer.restored = trainer.store.restore_latest()
            if trainer.restored:
                trainer.restored_digest = trainer.state_digest()

    def on_train_begin(self, trainer) -> None:
        self.last_saved = trainer.start_step if trainer.restored else None

    def on_step_end(self, trainer, step, logs) -> None:
        if trainer.is_chief and step % self.every_steps == 0 and step < trainer.total_steps:
            trainer.save_checkpoint(step)
            self.last_saved = step

    def on_train_end(self, trainer) -> None:
        path = None
        if trainer.is_chief:
            path = (trainer.save_checkpoint(trainer.step) if self.last_saved != trainer.step
                    else trainer.store.latest)
        trainer.summary["checkpoint"] = path
