"""The vectorised clipping and the fused momentum update against the per-tensor forms they
replace (tf.clip_by_norm, Keras' global_clipnorm and SGD)."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from efficientdet.training.optimizer import MomentumSGD, clip_gradients


def _grads(seed=0):
    rng = np.random.default_rng(seed)
    # norms well under, near and far over the per-tensor limit of 1.0, and an all-zero tensor
    return [tf.constant(rng.normal(size=shape) * scale, tf.float32)
            for shape, scale in (((3, 3, 8, 16), 0.01), ((16,), 0.2), ((5, 7), 3.0),
                                 ((1, 1, 32, 4), 50.0), ((4,), 0.0))]


def _reference(grads, per_tensor, global_norm):
    if per_tensor is not None:
        grads = [tf.clip_by_norm(g, per_tensor) for g in grads]
    if global_norm is not None:
        grads = keras.src.optimizers.base_optimizer.clip_by_global_norm(grads, global_norm)
    return grads


@pytest.mark.parametrize("per_tensor,global_norm", [(1.0, 10.0), (1.0, 2.0), (None, 2.0),
                                                    (1.0, None), (None, None)])
def test_clip_gradients_matches_per_tensor_then_global_clipping(per_tensor, global_norm):
    grads = _grads()
    got = clip_gradients(grads, per_tensor, global_norm)
    want = _reference(grads, per_tensor, global_norm)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), np.asarray(w), rtol=2e-6, atol=1e-9)
    if global_norm is not None:  # the limit binds in these cases
        assert math.sqrt(sum(float(tf.reduce_sum(g * g)) for g in got)) <= global_norm * 1.0001


def test_clip_gradients_keeps_missing_gradients_and_poisons_non_finite_norms():
    grads = _grads()
    grads[1] = None
    got = clip_gradients(grads, 1.0, 10.0)
    assert got[1] is None and all(g is not None for i, g in enumerate(got) if i != 1)
    grads[2] = tf.constant([[np.inf, 1.0]])
    got = clip_gradients(grads, 1.0, 10.0)
    assert all(np.isnan(g.numpy()).all() for g in got if g is not None)


def test_clip_gradients_takes_tensor_limits_in_a_graph():
    @tf.function
    def clip(grads, scale):
        return clip_gradients(grads, 1.0 * scale, 10.0 * scale)

    grads = _grads()
    got = clip(grads, tf.constant(4.0))
    want = _reference(grads, 4.0, 40.0)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), np.asarray(w), rtol=2e-6, atol=1e-9)


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_sgd_follows_keras_sgd(nesterov):
    def run(optimizer_class):
        rng = np.random.default_rng(1)
        variables = [keras.Variable(rng.normal(size=s).astype("float32"))
                     for s in ((3, 3, 4, 8), (8,))]
        optimizer = optimizer_class(learning_rate=keras.optimizers.schedules.CosineDecay(
            0.1, 10), momentum=0.9, nesterov=nesterov)
        optimizer.build(variables)
        start = variables[0].numpy()
        step = tf.function(lambda grads: optimizer.apply(grads, variables))
        for i in range(4):
            step([tf.constant(rng.normal(size=v.shape).astype("float32")) for v in variables])
        assert np.abs(variables[0].numpy() - start).min() > 1e-4  # every weight moved
        graph = step.get_concrete_function([tf.TensorSpec(v.shape) for v in variables]).graph
        kernels = {op.type for op in graph.get_operations()}
        assert ("ResourceApplyKerasMomentum" in kernels) == (optimizer_class is MomentumSGD)
        return ([v.numpy() for v in variables], [m.numpy() for m in optimizer.momentums],
                int(optimizer.iterations.numpy()))

    fused, keras_sgd = run(MomentumSGD), run(keras.optimizers.SGD)
    assert fused[2] == keras_sgd[2] == 4
    for a, b in zip(fused[0] + fused[1], keras_sgd[0] + keras_sgd[1]):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_momentum_sgd_without_momentum_is_plain_sgd():
    variable = keras.Variable(np.ones(3, np.float32))
    optimizer = MomentumSGD(learning_rate=0.5, momentum=0.0)
    optimizer.build([variable])
    optimizer.apply([tf.constant([1.0, 2.0, 3.0])], [variable])
    np.testing.assert_allclose(variable.numpy(), [0.5, 0.0, -0.5])
