"""L2 weight decay on convolution and dense kernels only.

The recipe decays conv/dense kernels (including depthwise and pointwise kernels of separable
convolutions) but not biases, batch-norm parameters or BiFPN fusion weights. Kernels are found
by the last component of the Keras 3 variable path ending in "kernel" (``kernel``,
``depthwise_kernel``, ``pointwise_kernel``); only trainable variables count, so a frozen
backbone is not decayed.
"""

from __future__ import annotations

import tensorflow as tf

WEIGHT_DECAY = 4e-5


def _variable_name(variable) -> str:
    path = getattr(variable, "path", None) or getattr(variable, "name", "")
    return path.split("/")[-1].split(":")[0]


def kernel_variables(model) -> list:
    """The trainable conv/dense kernels of a Keras model (the variables that get decayed)."""
    return [v for v in model.trainable_variables if _variable_name(v).endswith("kernel")]


def l2_loss(model, weight_decay: float = WEIGHT_DECAY) -> tf.Tensor:
    """weight_decay * sum(w**2) / 2 over the model's kernels, a float32 scalar."""
    kernels = kernel_variables(model)
    if not kernels:
        return tf.constant(0.0, tf.float32)
    total = tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in kernels])  # sum(w^2)/2
    return tf.cast(weight_decay, tf.float32) * total
