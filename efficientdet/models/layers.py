"""Building blocks shared by the backbone, BiFPN and heads.

Initialisers, the BN factory (optionally synchronised across Horovod ranks), stochastic
depth, the input normalisation, squeeze-excite, fusion and the float32 output cast.
"""

from __future__ import annotations

import keras
from keras import ops

from efficientdet.models.configs import (
    BN_EPSILON,
    BN_MOMENTUM,
    IMAGENET_MEAN_RGB,
    IMAGENET_STD_RGB,
)


def conv_kernel_initializer():
    """fan_out variance scaling (scale 2.0, truncated normal), as EfficientNet."""
    return keras.initializers.VarianceScaling(2.0, mode="fan_out", distribution="truncated_normal")


def dense_kernel_initializer():
    """Uniform in +-1/sqrt(fan_out): variance scaling 1/3, fan_out, uniform."""
    return keras.initializers.VarianceScaling(1.0 / 3.0, mode="fan_out", distribution="uniform")


def head_kernel_initializer():
    """automl's heads use tf's default variance_scaling (scale 1, fan_in, truncated normal)."""
    return keras.initializers.VarianceScaling(1.0, mode="fan_in", distribution="truncated_normal")


def _horovod_world():
    """horovod.tensorflow when it is initialised with more than one rank, else None."""
    try:
        import horovod.tensorflow as hvd
    except (ImportError, OSError):  # horovod absent or built without TensorFlow: plain BN
        return None
    try:
        if hvd.is_initialized() and hvd.size() > 1:
            return hvd
    except (ValueError, RuntimeError):  # not initialised
        return None
    return None


@keras.saving.register_keras_serializable(package="efficientdet")
class BatchNormalization(keras.layers.BatchNormalization):
    """BN with the project's defaults; `cross_replica=True` averages batch statistics over
    Horovod ranks in training (synchronised BN), so small per-GPU batches see the global batch.

    The class keeps Keras' name so weight files are interchangeable with plain BN.
    """

    def __init__(self, cross_replica: bool = False, **kwargs):
        kwargs.setdefault("momentum", BN_MOMENTUM)
        kwargs.setdefault("epsilon", BN_EPSILON)
        super().__init__(**kwargs)
        self.cross_replica = bool(cross_replica)
        # Training state, not configuration: True normalises with the moving statistics (and
        # stops updating them) while gamma and beta still train (`train.frozen_bn_fraction`).
        self.use_moving_statistics = False

    def call(self, inputs, training=None, mask=None):
        # a non-trainable BN (Keras' frozen layer) normalises with its statistics, and so does
        # one told to use them while it trains
        training = bool(training) and self.trainable and not self.use_moving_statistics
        hvd = _horovod_world() if (self.cross_replica and training) else None
        if hvd is not None:
            return self._synchronized_call(inputs, hvd)
        if mask is None and self._fusable(inputs):
            return self._fused_call(inputs) if training else self._inference_call(inputs)
        return super().call(inputs, training=training, mask=mask)

    def _fusable(self, inputs) -> bool:
        """TensorFlow's fused kernel covers 4-D channels-last inputs (every BN of these models)."""
        return (keras.backend.backend() == "tensorflow" and len(inputs.shape) == 4
                and self.axis in (-1, 3) and inputs.dtype in ("float32", "float16", "bfloat16"))

    def _fused_call(self, inputs):
        """Training BN as one FusedBatchNormV3 op instead of Keras 3's element-wise ops
        (~1.3x faster on CPU). The moving statistics are updated inside the op
        (exponential_avg_factor), with the kernel's Bessel-corrected variance, as tf-keras
        (the reference's stack) does."""
        import tensorflow as tf

        channels = inputs.shape[-1]
        gamma = self.gamma if self.scale else tf.ones([channels], tf.float32)
        beta = self.beta if self.center else tf.zeros([channels], tf.float32)
        y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs,
            tf.cast(gamma, tf.float32),
            tf.cast(beta, tf.float32),
            mean=tf.cast(self.moving_mean, tf.float32),
            variance=tf.cast(self.moving_variance, tf.float32),
            epsilon=self.epsilon,
            is_training=True,
            exponential_avg_factor=1.0 - self.momentum,
        )
        self.moving_mean.assign(mean)
        self.moving_variance.assign(variance)
        return y

    def _inference_call(self, inputs):
        """Inference BN as x * scale + shift, Keras' arithmetic with the shift as a BiasAdd.
        In a frozen graph grappler folds the scale into a preceding Conv2D and oneDNN runs
        Conv2D + BiasAdd + swish as one kernel (an AddV2 shift stops the activation's fusion).
        Not TensorFlow's fused inference op: oneDNN fuses Conv2D + FusedBatchNormV3 into a
        kernel that is ~25x slower at batch 1 (the whole D0 forward 3.7 s instead of 0.19 s)."""
        import tensorflow as tf

        x = tf.cast(inputs, tf.float32)
        inv = tf.math.rsqrt(tf.cast(self.moving_variance, tf.float32) + self.epsilon)
        if self.scale:
            inv = inv * tf.cast(self.gamma, tf.float32)
        shift = -tf.cast(self.moving_mean, tf.float32) * inv
        if self.center:
            shift = tf.cast(self.beta, tf.float32) + shift
        return tf.cast(tf.nn.bias_add(x * inv, shift), inputs.dtype)

    def _synchronized_call(self, inputs, hvd):
        import tensorflow as tf

        x = ops.cast(inputs, "float32")
        reduce_axes = [i for i in range(len(x.shape)) if i != self.axis % len(x.shape)]
        local_mean = ops.mean(x, axis=reduce_axes)
        local_sq = ops.mean(ops.square(x), axis=reduce_axes)
        stats = hvd.allreduce(tf.concat([local_mean, local_sq], axis=0), op=hvd.Average)
        mean, mean_sq = tf.split(stats, 2)
        variance = ops.maximum(mean_sq - ops.square(mean), 0.0)
        m = self.momentum
        self.moving_mean.assign(self.moving_mean * m + mean * (1.0 - m))
        self.moving_variance.assign(self.moving_variance * m + variance * (1.0 - m))
        y = (x - mean) * ops.rsqrt(variance + self.epsilon)
        if self.scale:
            y = y * ops.cast(self.gamma, "float32")
        if self.center:
            y = y + ops.cast(self.beta, "float32")
        return ops.cast(y, inputs.dtype)

    def get_config(self):
        return {**super().get_config(), "cross_replica": self.cross_replica}


def batch_norm_layers(model) -> list[BatchNormalization]:
    """Every BN layer of MODEL, nested models included, in layer order."""
    found, stack = [], [model]
    while stack:
        layer = stack.pop()
        if isinstance(layer, BatchNormalization):
            found.append(layer)
        stack.extend(reversed(getattr(layer, "layers", [])))
    return found


def batch_norm(name: str, sync_bn: bool = False) -> BatchNormalization:
    """The BN every model uses (momentum 0.99, epsilon 1e-3)."""
    return BatchNormalization(cross_replica=sync_bn, name=name)


@keras.saving.register_keras_serializable(package="efficientdet")
class StochasticDepth(keras.layers.Layer):
    """Drop a residual branch per sample with probability `rate` in training (drop connect),
    scaling survivors by 1/(1-rate); identity at inference."""

    def __init__(self, rate: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"stochastic depth rate must be in [0, 1), got {rate}")
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        if not training or self.rate == 0.0:
            return inputs
        keep = 1.0 - self.rate
        shape = (ops.shape(inputs)[0],) + (1,) * (len(inputs.shape) - 1)
        noise = keras.random.uniform(shape, seed=self.seed_generator, dtype=inputs.dtype)
        mask = ops.floor(keep + noise)
        return inputs / ops.cast(keep, inputs.dtype) * mask

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


@keras.saving.register_keras_serializable(package="efficientdet")
class Swish(keras.layers.Layer):
    """swish (SiLU), x * sigmoid(x). Inference spells the product out because grappler fuses
    that pattern, not TensorFlow's custom-gradient silu, into a preceding Conv2D + BiasAdd
    (one oneDNN kernel in frozen graphs). Training on TensorFlow runs the fused silu kernel
    forward and `_swish_gradient` backward, storing only x."""

    def call(self, inputs, training=None):
        if training:
            if keras.backend.backend() == "tensorflow":
                return _tf_swish(inputs)
            return ops.silu(inputs)
        return inputs * ops.sigmoid(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape


def _tf_swish(x):
    import tensorflow as tf

    @tf.custom_gradient
    def swish(x):
        return tf.nn.silu(x), lambda dy: _swish_gradient(x, dy)

    return swish(x)


def _swish_gradient(x, dy):
    """dy * d/dx[x sigmoid(x)] = dy * (s + x s (1 - s)), s = sigmoid(x), in four passes over
    the activation (Sigmoid, SigmoidGrad, AddV2, Mul). TensorFlow's silu gradient takes six or
    more, and also computes a gradient for its beta; those passes were about a tenth of a D0
    training step's op time (benchmarks/profile_train.py)."""
    import tensorflow as tf

    with tf.name_scope("swish_gradient"), tf.control_dependencies([dy]):
        s = tf.sigmoid(x)  # recomputed here, not held from the forward pass
        return dy * (s + tf.raw_ops.SigmoidGrad(y=s, dy=x))


@keras.saving.register_keras_serializable(package="efficientdet")
class ImageNormalization(keras.layers.Layer):
    """[0, 255] RGB -> (x - mean) / std with ImageNet statistics. Weightless, so checkpoints
    carry no preprocessing state and pre-processing outside the model is decode + resize."""

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        mean = ops.convert_to_tensor(IMAGENET_MEAN_RGB, dtype=self.compute_dtype)
        inv_std = ops.convert_to_tensor([1.0 / s for s in IMAGENET_STD_RGB], self.compute_dtype)
        return (x - mean) * inv_std

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="efficientdet")
class WeightedFusion(keras.layers.Layer):
    """BiFPN feature fusion of same-shaped inputs.

    "fastattn": one scalar per input edge (init 1), w = relu(w), out = sum(w_i x_i) /
    (sum(w) + 1e-4). "sum": plain sum, no weights (D6+).
    """

    def __init__(self, method: str = "fastattn", epsilon: float = 1e-4, **kwargs):
        super().__init__(**kwargs)
        if method not in ("fastattn", "sum"):
            raise ValueError(f"fusion method must be 'fastattn' or 'sum', got {method!r}")
        self.method = method
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        if self.method == "fastattn":
            self.fusion_weights = self.add_weight(
                name="fusion_weights",
                shape=(len(input_shape),),
                initializer="ones",
                trainable=True,
            )

    def call(self, inputs):
        # A weighted sum of the inputs (scalars normalised first): no stacked copy of the
        # feature maps, no reduction over a new axis.
        if self.method == "sum":
            return ops.add(inputs[0], inputs[1]) if len(inputs) == 2 else _add_n(inputs)
        w = ops.relu(ops.cast(self.fusion_weights, inputs[0].dtype))
        w = w / (ops.sum(w) + ops.cast(self.epsilon, inputs[0].dtype))
        return _add_n([x * w[i] for i, x in enumerate(inputs)])

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "method": self.method, "epsilon": self.epsilon}


def _add_n(tensors):
    total = tensors[0]
    for x in tensors[1:]:
        total = ops.add(total, x)
    return total


def float32_output(name: str):
    """Identity that outputs float32: logits leave the model in float32 under any policy."""
    return keras.layers.Activation("linear", dtype="float32", name=name)


def squeeze_excite(x, filters_in: int, se_ratio: float, prefix: str):
    """SE: global pool -> 1x1 reduce (swish) -> 1x1 expand (sigmoid) -> rescale.
    The bottleneck is se_ratio of the *block input* filters."""
    filters = x.shape[-1]
    reduced = max(1, int(filters_in * se_ratio))
    se = keras.layers.GlobalAveragePooling2D(keepdims=True, name=prefix + "se_squeeze")(x)
    se = keras.layers.Conv2D(
        reduced, 1, padding="same", activation="swish",
        kernel_initializer=conv_kernel_initializer(), name=prefix + "se_reduce",
    )(se)
    se = keras.layers.Conv2D(
        filters, 1, padding="same", activation="sigmoid",
        kernel_initializer=conv_kernel_initializer(), name=prefix + "se_expand",
    )(se)
    return keras.layers.Multiply(name=prefix + "se_excite")([x, se])
