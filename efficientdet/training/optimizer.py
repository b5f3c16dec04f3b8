"""The optimizer step in few kernels: gradient clipping as one vectorised computation and SGD
with momentum as TensorFlow's fused per-variable kernel.

D0 has 455 gradient tensors. Written per tensor with Keras' and TensorFlow's ops, clipping and
the momentum update launch about 20 small ops each, and at 128 px the optimizer step took a
sixth of a CPU training step in per-op overhead alone (benchmarks/profile_train.py). The
arithmetic is unchanged: automl's per-tensor clip, then the global norm, then Keras' SGD.
"""

from __future__ import annotations

import keras
import tensorflow as tf


class MomentumSGD(keras.optimizers.SGD):
    """Keras' SGD whose momentum update runs as one ``ResourceApplyKerasMomentum`` kernel per
    variable: m = momentum * m - lr * g, then w += m (Nesterov: w += momentum * m - lr * g),
    the formula of Keras' `update_step`. Slots, iterations and checkpoints are Keras' own."""

    def update_step(self, gradient, variable, learning_rate):
        if self.momentum == 0 or not hasattr(variable, "handle"):
            return super().update_step(gradient, variable, learning_rate)
        slot = self.momentums[self._get_variable_index(variable)]
        dtype = variable.dtype
        tf.raw_ops.ResourceApplyKerasMomentum(
            var=variable.handle, accum=getattr(slot, "value", slot).handle,
            lr=tf.cast(learning_rate, dtype), grad=tf.cast(gradient, dtype),
            momentum=tf.cast(self.momentum, dtype), use_nesterov=self.nesterov)
        return None


def clip_gradients(grads: list, per_tensor=None, global_norm=None) -> list:
    """Each gradient clipped to norm PER_TENSOR (``tf.clip_by_norm``), then all of them to the
    global norm GLOBAL_NORM (Keras' ``global_clipnorm``; a non-finite norm makes every
    gradient NaN, as there). A limit of None is off; limits may be tensors (loss scaling).
    The norms are computed once: the clipped tensors' norms follow from the factors, so the
    gradients are read twice in all."""
    present = [i for i, g in enumerate(grads) if g is not None]
    if not present or (per_tensor is None and global_norm is None):
        return list(grads)
    tensors = [tf.convert_to_tensor(grads[i]) for i in present]
    norms = tf.sqrt(2.0 * tf.stack([tf.cast(tf.nn.l2_loss(g), tf.float32) for g in tensors]))
    factors = tf.ones_like(norms)
    if per_tensor is not None:
        limit = tf.cast(per_tensor, tf.float32)
        factors = limit / tf.maximum(norms, limit)
    if global_norm is not None:
        limit = tf.cast(global_norm, tf.float32)
        total = tf.sqrt(tf.reduce_sum(tf.square(norms * factors)))
        scale = limit * tf.minimum(1.0 / total, 1.0 / limit)
        factors = factors * (scale + (total - total))  # NaN/inf norm -> NaN, as in Keras
    out = list(grads)
    for i, g, f in zip(present, tensors, tf.unstack(factors)):
        out[i] = g * tf.cast(f, g.dtype)
    return out
