"""Learning rate: linear warm-up then cosine decay, peak scaled by the global batch.

Two cosine phases (``optimizer.lr_decay``):

- ``cosine``: the textbook schedule, from the peak at the end of warm-up to 0 at the last step;
- ``automl_cosine``: google/automl's, whose phase counts from step 0 over ``total - warmup``
  steps, so it starts the decay below the peak, reaches 0 ``warmup`` steps before the end and
  rises a little again. Over a short run it spends about a quarter less learning rate.
"""

from __future__ import annotations

import math

import keras
from keras import ops


def scaled_lr(base_lr: float, global_batch: int, reference_batch: int) -> float:
    """Linear scaling rule: ``base_lr`` is the rate for ``reference_batch`` images per step."""
    return float(base_lr) * global_batch / reference_batch


LR_DECAYS = ("cosine", "automl_cosine")


def warmup_cosine(step: float, *, peak_lr: float, total_steps: int, warmup_steps: int,
                  warmup_start_factor: float = 0.1, decay: str = "cosine") -> float:
    """The schedule as plain Python (reference for tests and for logging)."""
    if warmup_steps > 0 and step < warmup_steps:
        start = peak_lr * warmup_start_factor
        return start + (peak_lr - start) * step / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    if decay == "automl_cosine":
        return 0.5 * peak_lr * (1.0 + math.cos(math.pi * step / decay_steps))
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return 0.5 * peak_lr * (1.0 + math.cos(math.pi * progress))


@keras.saving.register_keras_serializable(package="efficientdet")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Keras schedule form of :func:`warmup_cosine`, evaluated on the optimizer's step."""

    def __init__(self, peak_lr: float, total_steps: int, warmup_steps: int,
                 warmup_start_factor: float = 0.1, decay: str = "cosine"):
        if decay not in LR_DECAYS:
            raise ValueError(f"lr decay must be one of {LR_DECAYS}, got {decay!r}")
        self.decay = decay
        self.peak_lr = float(peak_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.warmup_start_factor = float(warmup_start_factor)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        peak = self.peak_lr
        start = peak * self.warmup_start_factor
        warm = max(self.warmup_steps, 1)
        warmup_lr = start + (peak - start) * step / warm
        decay_steps = float(max(1, self.total_steps - self.warmup_steps))
        if self.decay == "automl_cosine":
            progress = step / decay_steps
        else:
            progress = ops.clip((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        cosine_lr = 0.5 * peak * (1.0 + ops.cos(math.pi * progress))
        if self.warmup_steps <= 0:
            return cosine_lr
        return ops.where(step < self.warmup_steps, warmup_lr, cosine_lr)

    def get_config(self):
        return {"peak_lr": self.peak_lr, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps,
                "warmup_start_factor": self.warmup_start_factor, "decay": self.decay}
