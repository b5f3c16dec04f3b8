"""Focal + Huber detection loss against hand-computed values; normalizer; dtypes; gradients."""

import math

import numpy as np
import pytest
import tensorflow as tf

from efficientdet.detection.losses import detection_loss, focal_loss, huber_loss


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def bce(label, x):  # binary cross-entropy with logits, written out
    return -(label * math.log(sigmoid(x)) + (1 - label) * math.log(1 - sigmoid(x)))


def test_focal_loss_hand_computed():
    # positive, logit 0: p = 0.5, p_t = 0.5, alpha_t = 0.25, (1 - p_t)^1.5 = 0.353553,
    # CE = ln 2 = 0.693147 -> 0.25 * 0.353553 * 0.693147 = 0.0612661
    # negative, logit 2: p = 0.880797, p_t = 1 - p = 0.119203, alpha_t = 0.75,
    # (1 - p_t)^1.5 = 0.880797^1.5 = 0.826635, CE = ln(1 + e^2) = 2.126928
    # -> 0.75 * 0.826635 * 2.126928 = 1.318645
    loss = focal_loss(tf.constant([0.0, 2.0]), tf.constant([1.0, 0.0])).numpy()
    np.testing.assert_allclose(loss, [0.0612661, 1.318645], rtol=1e-5)


def test_focal_loss_label_smoothing_only_changes_the_cross_entropy():
    s = 0.1
    # label 1 -> CE target 1 - s + s/2 = 0.95; p_t and alpha_t still use the hard label
    x = 0.7
    p = sigmoid(x)
    expected = 0.25 * (1 - p) ** 1.5 * bce(0.95, x)
    got = focal_loss(tf.constant([x]), tf.constant([1.0]), label_smoothing=s).numpy()[0]
    assert got == pytest.approx(expected, rel=1e-5)


def test_huber_loss_hand_values():
    # delta 0.1: |0.05| -> 0.5*0.05^2 = 0.00125; |0.3| -> 0.1*0.3 - 0.5*0.01 = 0.025
    got = huber_loss(tf.constant([0.05, -0.3, 0.1]), tf.constant([0.0, 0.0, 0.0])).numpy()
    np.testing.assert_allclose(got, [0.00125, 0.025, 0.005], rtol=1e-5)


def hand_focal(x, y):
    p = sigmoid(x)
    p_t = p if y else 1 - p
    alpha_t = 0.25 if y else 0.75
    return alpha_t * (1 - p_t) ** 1.5 * bce(y, x)


def test_detection_loss_hand_computed():
    # one image, two anchors, two classes: anchor 0 is class 1, anchor 1 is background
    cls_out = tf.constant([[[0.5, -1.0], [-2.0, 1.5]]])
    box_out = tf.constant([[[0.05, -0.2, 0.0, 0.1], [9.0, 9.0, 9.0, 9.0]]])  # bg box ignored
    targets = {
        "cls_targets": tf.constant([[1, -1]], tf.int32),
        "box_targets": tf.zeros([1, 2, 4]),
        "num_positives": tf.constant([1.0]),
    }
    normalizer = 1 + 1
    cls_expected = (hand_focal(0.5, 0) + hand_focal(-1.0, 1)
                    + hand_focal(-2.0, 0) + hand_focal(1.5, 0)) / normalizer
    # Huber, delta 0.1: 0.5*0.05^2 + (0.1*0.2 - 0.005) + 0 + 0.5*0.1^2 = 0.02125
    box_expected = 0.02125 / (4 * normalizer)
    total, cls_loss, box_loss = detection_loss((cls_out, box_out), targets, 2)
    assert cls_loss.numpy() == pytest.approx(cls_expected, rel=1e-5)
    assert box_loss.numpy() == pytest.approx(box_expected, rel=1e-5)
    assert total.numpy() == pytest.approx(cls_expected + 50 * box_expected, rel=1e-5)


def test_normalizer_counts_positives_of_the_whole_batch():
    rng = np.random.default_rng(1)
    cls_out = tf.constant(rng.normal(size=(2, 6, 3)), tf.float32)
    box_out = tf.constant(rng.normal(size=(2, 6, 4)), tf.float32)
    cls_targets = tf.constant([[0, -1, 2, -1, -1, -1], [-1, -1, -1, 1, -1, -1]], tf.int32)
    box_targets = tf.constant(rng.normal(size=(2, 6, 4)), tf.float32)
    targets = {"cls_targets": cls_targets, "box_targets": box_targets}
    _, cls_loss, box_loss = detection_loss((cls_out, box_out), targets, 3)
    labels = tf.one_hot(cls_targets, 3)
    positive = (cls_targets.numpy() >= 0)[..., None]
    # 3 positives in the batch -> normalizer 4 (num_positives counted when not given)
    assert cls_loss.numpy() == pytest.approx(
        focal_loss(cls_out, labels).numpy().sum() / 4, rel=1e-5)
    assert box_loss.numpy() == pytest.approx(
        (huber_loss(box_out, box_targets).numpy() * positive).sum() / 16, rel=1e-5)
    given = dict(targets, num_positives=tf.constant([2.0, 1.0]))
    assert detection_loss((cls_out, box_out), given, 3)[1].numpy() == pytest.approx(
        cls_loss.numpy())


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_low_precision_outputs_give_float32_losses(dtype):
    rng = np.random.default_rng(2)
    cls32 = tf.constant(rng.normal(size=(1, 5, 2)) * 3, tf.float32)
    box32 = tf.constant(rng.normal(size=(1, 5, 4)), tf.float32)
    targets = {"cls_targets": tf.constant([[1, -1, 0, -1, -1]]), "box_targets": tf.zeros([1, 5, 4])}
    cls_low, box_low = tf.cast(cls32, dtype), tf.cast(box32, dtype)
    low = detection_loss({"class_outputs": cls_low, "box_outputs": box_low}, targets, 2)
    ref = detection_loss((tf.cast(cls_low, tf.float32), tf.cast(box_low, tf.float32)), targets, 2)
    for a, b in zip(low, ref):
        assert a.dtype == tf.float32
        assert a.numpy() == pytest.approx(b.numpy(), rel=1e-6)


def test_per_level_outputs_are_flattened():
    rng = np.random.default_rng(3)
    levels_cls = [tf.constant(rng.normal(size=(1, 2, 2, 2 * 3)), tf.float32),
                  tf.constant(rng.normal(size=(1, 1, 1, 2 * 3)), tf.float32)]
    levels_box = [tf.constant(rng.normal(size=(1, 2, 2, 2 * 4)), tf.float32),
                  tf.constant(rng.normal(size=(1, 1, 1, 2 * 4)), tf.float32)]
    targets = {"cls_targets": tf.constant([[0, -1, -1, 2, -1, -1, -1, -1, 1, -1]]),
               "box_targets": tf.constant(rng.normal(size=(1, 10, 4)), tf.float32)}
    flat = (tf.concat([tf.reshape(x, [1, -1, 3]) for x in levels_cls], 1),
            tf.concat([tf.reshape(x, [1, -1, 4]) for x in levels_box], 1))
    by_level = detection_loss({"class_outputs": levels_cls, "box_outputs": levels_box},
                              targets, 3)
    np.testing.assert_allclose([t.numpy() for t in by_level],
                               [t.numpy() for t in detection_loss(flat, targets, 3)], rtol=1e-6)


def test_gradients_are_finite_in_graph_mode_even_for_confident_logits():
    cls_out = tf.Variable([[[30.0, -30.0], [-30.0, 0.0]]])
    box_out = tf.Variable(tf.zeros([1, 2, 4]))
    targets = {"cls_targets": tf.constant([[0, -1]]), "box_targets": tf.zeros([1, 2, 4])}

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            total, _, _ = detection_loss((cls_out, box_out), targets, 2)
        return total, tape.gradient(total, [cls_out, box_out])

    total, grads = step()
    assert np.isfinite(total.numpy())
    for g in grads:
        assert np.all(np.isfinite(g.numpy()))


def test_wrong_number_of_classes_is_reported():
    with pytest.raises(ValueError, match="num_classes is 5"):
        detection_loss((tf.zeros([1, 2, 3]), tf.zeros([1, 2, 4])),
                       {"cls_targets": tf.zeros([1, 2], tf.int32),
                        "box_targets": tf.zeros([1, 2, 4])}, 5)
