"""The inference forms of BN and swish: Keras' numbers, in the shape oneDNN fuses into one kernel."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from efficientdet.models.layers import Swish, batch_norm


def _trained_like(bn, channels, seed=0):
    """Non-trivial statistics: with Keras' initial values (shift 0) grappler drops the shift."""
    rng = np.random.default_rng(seed)
    if not bn.built:
        bn.build((None, 4, 4, channels))
    bn.gamma.assign(rng.uniform(0.5, 1.5, channels).astype("float32"))
    bn.beta.assign(rng.normal(0.0, 0.5, channels).astype("float32"))
    bn.moving_mean.assign(rng.normal(0.0, 0.5, channels).astype("float32"))
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, channels).astype("float32"))


def test_inference_batch_norm_computes_what_keras_batch_norm_computes():
    x = np.random.default_rng(1).normal(0.0, 2.0, (2, 5, 5, 6)).astype("float32")
    ours = batch_norm("ours")
    plain = keras.layers.BatchNormalization(momentum=0.99, epsilon=1e-3)
    _trained_like(ours, 6)
    plain.build((None, 5, 5, 6))
    plain.set_weights(ours.get_weights())
    np.testing.assert_allclose(np.asarray(ours(x, training=False)),
                               np.asarray(plain(x, training=False)), rtol=0, atol=1e-6)
    graph = tf.function(lambda t: ours(t, training=False))(tf.constant(x))
    np.testing.assert_allclose(np.asarray(graph), np.asarray(plain(x, training=False)),
                               rtol=0, atol=1e-6)


def test_batch_norm_on_moving_statistics_in_training_keeps_them_and_trains_gamma():
    """`use_moving_statistics` (train.frozen_bn_fraction): training calls normalise like
    inference and leave the moving statistics alone; gamma and beta still get gradients."""
    x = tf.constant(np.random.default_rng(2).normal(1.0, 2.0, (4, 5, 5, 6)).astype("float32"))
    bn = batch_norm("frozen")
    _trained_like(bn, 6)
    before = [np.array(v) for v in (bn.moving_mean, bn.moving_variance)]
    bn(x, training=True)
    assert not np.array_equal(np.array(bn.moving_mean), before[0])  # batch statistics
    bn.moving_mean.assign(before[0])
    bn.moving_variance.assign(before[1])
    bn.use_moving_statistics = True
    with tf.GradientTape() as tape:
        y = bn(x, training=True)
        loss = tf.reduce_sum(y * y)
    grads = tape.gradient(loss, [bn.gamma, bn.beta])
    np.testing.assert_allclose(np.asarray(y), np.asarray(bn(x, training=False)), atol=1e-6)
    for v, b in zip((bn.moving_mean, bn.moving_variance), before):
        np.testing.assert_array_equal(np.array(v), b)
    assert all(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)


def test_swish_is_silu_in_values_and_gradients_in_both_modes():
    x = tf.constant(np.linspace(-8.0, 8.0, 33, dtype="float32"))
    layer = Swish()
    for training in (True, False):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=training)
        grad = tape.gradient(y, x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            ref = tf.nn.silu(x)
        np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=0, atol=1e-6)
        np.testing.assert_allclose(np.asarray(grad), np.asarray(tape.gradient(ref, x)),
                                   rtol=0, atol=1e-6)


def _onednn_on() -> bool:
    from tensorflow.python.util import _pywrap_util_port

    return (os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "1"
            and _pywrap_util_port.IsMklEnabled())


@pytest.mark.skipif(not _onednn_on(), reason="oneDNN is off (not x86-64, or "
                    "TF_ENABLE_ONEDNN_OPTS is not 1): the fusion is oneDNN's")
def test_frozen_conv_batch_norm_swish_runs_as_one_fused_kernel():
    """What the serving graphs gain from the inference forms: grappler folds BN's scale into
    the conv, and Conv2D + BiasAdd + swish become one oneDNN kernel (D0 batch 1: ~0.93x)."""
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    inputs = keras.Input((16, 16, 8))
    y = keras.layers.Conv2D(12, 1, use_bias=False, name="conv")(inputs)
    bn = batch_norm("bn")
    y = Swish(name="act")(bn(y))
    model = keras.Model(inputs, y)
    _trained_like(bn, 12)
    x = np.random.default_rng(2).normal(size=(1, 16, 16, 8)).astype("float32")
    traced = tf.function(lambda t: model(t, training=False)).get_concrete_function(
        tf.TensorSpec(x.shape, tf.float32))
    frozen = convert_variables_to_constants_v2(traced)
    graph = tf.Graph()
    with graph.as_default():
        feed = tf.compat.v1.placeholder(tf.float32, x.shape)
        (out,) = tf.graph_util.import_graph_def(
            frozen.graph.as_graph_def(), input_map={frozen.inputs[0].name: feed},
            return_elements=[frozen.outputs[0].name])
        metadata = tf.compat.v1.RunMetadata()
        with tf.compat.v1.Session(graph=graph) as session:
            result = session.run(out, {feed: x}, run_metadata=metadata, options=tf.compat.v1.
                                 RunOptions(output_partition_graphs=True))
    np.testing.assert_allclose(result, np.asarray(model(x, training=False)), atol=1e-5)
    nodes = [node for g in metadata.partition_graphs for node in g.node]
    fused = [[op.decode() for op in node.attr["fused_ops"].list.s]
             for node in nodes if node.op.endswith("FusedConv2D")]
    assert fused == [["BiasAdd", "_MklSwish"]], (
        f"expected one Conv2D + BiasAdd + swish kernel, got {fused} in "
        f"{sorted({node.op for node in nodes})}")
