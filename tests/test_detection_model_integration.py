"""The detection core around the real EfficientDet-D0 (tiny input): the contracts line up."""

import numpy as np
import pytest
import tensorflow as tf

from efficientdet.detection.anchors import Anchors, flatten_outputs
from efficientdet.detection.losses import detection_loss
from efficientdet.detection.postprocess import postprocess
from efficientdet.detection.targets import encode_targets
from efficientdet.training.regularization import kernel_variables, l2_loss

pytestmark = pytest.mark.slow
NUM_CLASSES = 3
SIZE = 128


@pytest.fixture(scope="module")
def d0():
    from efficientdet.models import build_model, get_config

    cfg = get_config("efficientdet-d0")
    return build_model("efficientdet-d0", num_classes=NUM_CLASSES, image_size=SIZE), cfg


def test_train_step_and_postprocess_on_d0(d0):
    model, cfg = d0
    anchors = Anchors.from_config(cfg, SIZE)
    gt_boxes = tf.constant([[[10, 10, 60, 70], [0, 0, 0, 0]], [[30, 40, 120, 100], [5, 5, 20, 30]]],
                           tf.float32)
    gt_classes = tf.constant([[1, -1], [0, 2]], tf.int32)
    encoded = [encode_targets(anchors, b, c) for b, c in zip(gt_boxes, gt_classes)]
    targets = {key: tf.stack([e[key] for e in encoded]) for key in encoded[0]}
    images = tf.random.stateless_uniform([2, SIZE, SIZE, 3], [1, 2], 0, 255)

    with tf.GradientTape() as tape:  # eager: tracing all of D0 would cost a minute
        outputs = model(images, training=True)
        total, cls_loss, box_loss = detection_loss(outputs, targets, NUM_CLASSES)
        loss = total + l2_loss(model)
    grads = tape.gradient(loss, model.trainable_variables)
    assert np.isfinite(loss.numpy()) and cls_loss.numpy() > 0 and box_loss.numpy() > 0
    assert all(g is not None and np.all(np.isfinite(g.numpy())) for g in grads)

    outputs = model(images, training=False)
    cls_flat, box_flat = flatten_outputs(outputs, NUM_CLASSES)
    assert cls_flat.shape == (2, anchors.num_anchors, NUM_CLASSES)
    assert box_flat.shape == (2, anchors.num_anchors, 4)
    for method in ("hard", "soft"):
        boxes, scores, classes, num = postprocess(cls_flat, box_flat, anchors, method=method)
        assert boxes.shape == (2, 100, 4)
        # an untrained head scores ~sigmoid(-4.6) = 0.01 > 0.001: all 100 slots are filled
        assert num.numpy().tolist() == [100, 100]
        assert np.all(np.diff(scores.numpy(), axis=1) <= 1e-7)  # best first
        assert np.all(boxes.numpy() >= 0) and np.all(boxes.numpy() <= SIZE)
        assert np.all((classes.numpy() >= 0) & (classes.numpy() < NUM_CLASSES))

    decayed = {v.path.split("/")[-1] for v in kernel_variables(model)}
    assert decayed == {"kernel", "depthwise_kernel", "pointwise_kernel"}
    every = {v.path.split("/")[-1] for v in model.trainable_variables}
    assert {"bias", "gamma", "beta"} <= every - decayed
