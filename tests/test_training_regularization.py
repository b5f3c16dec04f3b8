"""L2 weight decay: conv/depthwise/pointwise/dense kernels only, trainable only."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from efficientdet.training.regularization import kernel_variables, l2_loss


class Fusion(keras.layers.Layer):
    """Stand-in for BiFPN fast-normalized fusion: one scalar weight per input."""

    def build(self, input_shape):
        self.fusion_weights = self.add_weight(shape=(2,), initializer="ones", name="weights")

    def call(self, x):
        return x * self.fusion_weights[0] + x * self.fusion_weights[1]


def small_model():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.DepthwiseConv2D(3, name="dw")(x)
    x = keras.layers.SeparableConv2D(5, 1, name="sep")(x)
    x = Fusion(name="fusion")(x)
    frozen = keras.layers.Conv2D(2, 1, name="frozen")
    x = frozen(x)
    frozen.trainable = False
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, name="dense")(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    for v in model.variables:  # non-trivial values everywhere (biases, BN, fusion too)
        v.assign(rng.normal(size=v.shape).astype("float32"))
    return model


def test_only_trainable_kernels_are_decayed():
    model = small_model()
    names = sorted(v.path for v in kernel_variables(model))
    assert names == ["conv/kernel", "dense/kernel", "dw/kernel", "sep/depthwise_kernel",
                     "sep/pointwise_kernel"]
    layers = {layer.name: layer for layer in model.layers}
    kernels = [layers["conv"].kernel, layers["dw"].kernel, layers["sep"].depthwise_kernel,
               layers["sep"].pointwise_kernel, layers["dense"].kernel]
    expected = 4e-5 * sum(float(np.sum(np.square(k.numpy()))) for k in kernels) / 2
    assert l2_loss(model).numpy() == pytest.approx(expected, rel=1e-5)
    everything = 4e-5 * sum(float(np.sum(np.square(v.numpy()))) for v in model.variables) / 2
    assert everything > expected * 1.05  # the biases/BN/fusion/frozen values would matter
    assert l2_loss(model, weight_decay=1e-3).numpy() == pytest.approx(expected / 4e-5 * 1e-3,
                                                                      rel=1e-5)


def test_gradient_is_weight_decay_times_the_kernel():
    model = small_model()
    conv = model.get_layer("conv")

    @tf.function
    def grads():
        with tf.GradientTape() as tape:
            loss = l2_loss(model)
        return tape.gradient(loss, [conv.kernel, conv.bias])

    kernel_grad, bias_grad = grads()
    np.testing.assert_allclose(kernel_grad.numpy(), 4e-5 * conv.kernel.numpy(), rtol=1e-5)
    assert bias_grad is None


def test_model_without_kernels_gives_zero():
    model = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization()])
    assert l2_loss(model).numpy() == 0.0
