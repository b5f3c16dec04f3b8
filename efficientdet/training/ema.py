"""Exponential moving average of all model weights (trainable and BN statistics).

Decay warms up as ``min(decay, (1 + n) / (10 + n))`` so early averages are not dominated by
the random initialization. The shadow copies are plain ``tf.Variable`` s inside a ``tf.Module``,
so ``tf.train.Checkpoint`` saves and restores them with the model.
"""

from __future__ import annotations

import contextlib

import tensorflow as tf


def ema_decay(decay: float, num_updates: int) -> float:
    """The effective decay after ``num_updates`` updates (plain Python, for tests and logs)."""
    return min(decay, (1.0 + num_updates) / (10.0 + num_updates))


class ExponentialMovingAverage(tf.Module):
    def __init__(self, variables, decay: float = 0.9998, name: str = "ema"):
        super().__init__(name=name)
        self.decay = float(decay)
        self._model_vars = list(variables)
        self.num_updates = tf.Variable(0, dtype=tf.int64, trainable=False, name="num_updates")
        # Shadows are float32 even when a policy stores something else, for accuracy.
        self.shadows = [
            tf.Variable(tf.cast(_value(v), tf.float32), trainable=False,
                        name=f"shadow_{i}")
            for i, v in enumerate(self._model_vars)
        ]

    @property
    def model_variables(self):
        return self._model_vars

    def update(self):
        """One EMA step (call inside or outside tf.function after the optimizer step)."""
        n = tf.cast(self.num_updates, tf.float32)
        decay = tf.minimum(self.decay, (1.0 + n) / (10.0 + n))
        for shadow, var in zip(self.shadows, self._model_vars):
            value = tf.cast(_value(var), tf.float32)
            shadow.assign(decay * shadow + (1.0 - decay) * value)
        self.num_updates.assign_add(1)

    def restart(self):
        """Start averaging again from the current weights (warm-up included)."""
        for shadow, var in zip(self.shadows, self._model_vars):
            shadow.assign(tf.cast(_value(var), tf.float32))
        self.num_updates.assign(0)

    def copy_to_model(self):
        for shadow, var in zip(self.shadows, self._model_vars):
            var.assign(tf.cast(shadow, var.dtype))

    @contextlib.contextmanager
    def swapped(self):
        """Within the block the model holds the EMA weights; the raw ones come back after."""
        backup = [tf.identity(_value(v)) for v in self._model_vars]
        self.copy_to_model()
        try:
            yield
        finally:
            for var, value in zip(self._model_vars, backup):
                var.assign(value)


def _value(var):
    """The tensor of a Keras 3 or TF variable."""
    return var.value if hasattr(var, "value") and not isinstance(var, tf.Variable) else var
