"""IoU, box coding and target assignment (threshold + forced matching, padding, tf.data)."""

import math

import numpy as np
import tensorflow as tf

from efficientdet.detection.anchors import Anchors
from efficientdet.detection.box_coder import MAX_LOG_SCALE, decode_boxes, encode_boxes
from efficientdet.detection.iou import pairwise_iou
from efficientdet.detection.targets import encode_targets, match_anchors


def test_pairwise_iou_hand_values():
    a = tf.constant([[0, 0, 10, 10], [0, 0, 0, 0]], tf.float32)
    b = tf.constant([[0, 5, 10, 15], [20, 20, 30, 30], [0, 0, 10, 10], [0, 0, 0, 0]], tf.float32)
    iou = pairwise_iou(a, b).numpy()
    # overlap 10x5=50, union 100+100-50=150
    np.testing.assert_allclose(iou[0], [50 / 150, 0, 1, 0], rtol=1e-6)
    np.testing.assert_array_equal(iou[1], [0, 0, 0, 0])  # empty boxes: 0, not NaN


def test_box_coding_hand_values_and_round_trip():
    anchors = tf.constant([[0, 0, 10, 10], [20, 20, 30, 30]], tf.float32)
    boxes = tf.constant([[0, 0, 10, 12], [20, 20, 40, 40]], tf.float32)
    codes = encode_boxes(boxes, anchors).numpy()
    # box 0: centre (5, 6), size 10x12 vs anchor centre (5, 5), size 10x10
    # box 1: centre (30, 30), size 20x20 vs anchor centre (25, 25), size 10x10
    np.testing.assert_allclose(codes, [[0, 0.1, 0, math.log(1.2)],
                                       [0.5, 0.5, math.log(2), math.log(2)]], atol=1e-6)
    rng = np.random.default_rng(0)
    anchors = Anchors(3, 5, 3, [1.0, 2.0, 0.5], 4.0, 64).boxes
    yx = rng.uniform(0, 60, size=(anchors.shape[0], 2))
    hw = rng.uniform(1, 80, size=(anchors.shape[0], 2))
    boxes = tf.constant(np.concatenate([yx, yx + hw], axis=1), tf.float32)
    decoded = decode_boxes(encode_boxes(boxes, anchors), anchors)
    np.testing.assert_allclose(decoded.numpy(), boxes.numpy(), atol=1e-3)


def test_decode_clips_log_scales():
    anchors = tf.constant([[0, 0, 10, 10]], tf.float32)
    decoded = decode_boxes(tf.constant([[0, 0, 1e4, 1e4]], tf.float32), anchors).numpy()
    assert np.all(np.isfinite(decoded))
    half = 10 * math.exp(MAX_LOG_SCALE) / 2
    np.testing.assert_allclose(decoded[0], [5 - half, 5 - half, 5 + half, 5 + half], rtol=1e-5)


ANCHORS = tf.constant([
    [0, 0, 10, 10],    # A0
    [0, 5, 10, 15],    # A1
    [20, 20, 30, 30],  # A2
    [0, 0, 100, 100],  # A3
], tf.float32)


def test_threshold_forced_match_and_padding():
    gt_boxes = tf.constant([
        [0, 0, 10, 12],     # class 2: IoU A0 = 100/120 = 0.83 (positive), A1 = 70/150 = 0.47
        [20, 20, 40, 40],   # class 1: best IoU A2 = 100/400 = 0.25 < 0.5 -> forced onto A2
        [0, 0, 100, 100],   # padding row (class -1) identical to A3: must be ignored
    ], tf.float32)
    targets = encode_targets(ANCHORS, gt_boxes, tf.constant([2, 1, -1]))
    np.testing.assert_array_equal(targets["cls_targets"].numpy(), [2, -1, 1, -1])
    assert targets["cls_targets"].dtype == tf.int32
    assert targets["num_positives"].numpy() == 2.0
    np.testing.assert_allclose(targets["box_targets"].numpy(), [
        [0, 0.1, 0, math.log(1.2)],
        [0, 0, 0, 0],
        [0.5, 0.5, math.log(2), math.log(2)],
        [0, 0, 0, 0],
    ], atol=1e-6)


def test_forced_match_overrides_a_threshold_match():
    anchors = tf.constant([[0, 0, 10, 10], [0, 0, 10, 16]], tf.float32)  # X, Y
    gt_boxes = tf.constant([
        [0, 0, 10, 50 / 3],  # A: IoU X = 0.6, IoU Y = 0.96 (best Y)
        [-8, -8, 10, 10],    # B: IoU X = 100/324 = 0.31, Y = 100/384 = 0.26 (best X)
    ], tf.float32)
    matches = match_anchors(anchors, gt_boxes, tf.constant([0, 1])).numpy()
    # X would match A by threshold, but it is B's best anchor: the forced match wins.
    np.testing.assert_array_equal(matches, [1, 0])


def test_ties_are_deterministic():
    anchors = tf.constant([[0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], tf.float32)
    # Two identical anchors tie for the box: the lower index gets the forced match.
    gt = tf.constant([[0, 0, 10, 40]], tf.float32)  # IoU 0.25 with both
    np.testing.assert_array_equal(match_anchors(anchors, gt, tf.constant([0])).numpy(),
                                  [0, -1, -1])
    # Two boxes force the same anchor: the higher IoU wins, on equal IoU the lower row.
    gts = tf.constant([[0, 0, 10, 40], [0, 0, 10, 25]], tf.float32)  # IoU 0.25, 0.4
    np.testing.assert_array_equal(match_anchors(anchors[2:0:-1], gts, tf.constant([0, 1])),
                                  [-1, 1])
    same = tf.constant([[0, 0, 10, 40], [0, 0, 10, 40]], tf.float32)
    np.testing.assert_array_equal(match_anchors(anchors[2:0:-1], same, tf.constant([5, 7])),
                                  [-1, 0])


def test_no_boxes_or_only_padding_or_unreachable_boxes():
    for boxes, classes in [
        (tf.zeros([0, 4]), tf.zeros([0], tf.int32)),
        (tf.constant([[0, 0, 10, 10]], tf.float32), tf.constant([-1])),
        (tf.constant([[500, 500, 510, 510]], tf.float32), tf.constant([3])),  # overlaps nothing
    ]:
        targets = encode_targets(ANCHORS, boxes, classes)
        np.testing.assert_array_equal(targets["cls_targets"].numpy(), [-1, -1, -1, -1])
        np.testing.assert_array_equal(targets["box_targets"].numpy(), np.zeros([4, 4]))
        assert targets["num_positives"].numpy() == 0.0


def test_every_real_box_gets_an_anchor_on_a_real_grid():
    anchors = Anchors(3, 7, 3, [1.0, 2.0, 0.5], 4.0, 128)
    boxes = tf.constant([[3, 3, 9, 7], [10, 60, 120, 70], [0, 0, 128, 128], [40, 40, 90, 100]],
                        tf.float32)
    targets = encode_targets(anchors, boxes, tf.constant([0, 1, 2, 3]))
    cls = targets["cls_targets"].numpy()
    assert set(np.unique(cls)) == {-1, 0, 1, 2, 3}
    # positive box targets decode back to their ground-truth box
    positive = cls >= 0
    decoded = decode_boxes(targets["box_targets"], anchors.boxes).numpy()[positive]
    np.testing.assert_allclose(decoded, boxes.numpy()[cls[positive]], atol=1e-3)
    assert targets["num_positives"].numpy() == positive.sum()


def test_encode_targets_in_graph_mode_and_tf_data():
    anchors = Anchors(3, 7, 3, [1.0, 2.0, 0.5], 4.0, 128)
    images = [
        (np.array([[10, 10, 50, 60], [70, 20, 120, 90]], np.float32), np.array([4, 0])),
        (np.zeros([0, 4], np.float32), np.zeros([0], np.int64)),
        (np.array([[0, 0, 30, 30]], np.float32), np.array([7])),
    ]
    max_boxes = 3

    def padded(boxes, classes):
        pad = max_boxes - len(boxes)
        return (np.pad(boxes, [[0, pad], [0, 0]]),
                np.pad(classes, [0, pad], constant_values=-1).astype(np.int32))

    dataset = tf.data.Dataset.from_tensor_slices(
        tuple(np.stack(x) for x in zip(*(padded(*image) for image in images)))
    ).map(lambda b, c: encode_targets(anchors, b, c)).batch(3)
    batch = next(iter(dataset))
    assert batch["cls_targets"].shape == (3, anchors.num_anchors)
    assert batch["box_targets"].shape == (3, anchors.num_anchors, 4)

    graph_fn = tf.function(
        lambda b, c: encode_targets(anchors, b, c),
        input_signature=[tf.TensorSpec([None, 4], tf.float32), tf.TensorSpec([None], tf.int32)],
    )
    for i, (boxes, classes) in enumerate(images):
        eager = encode_targets(anchors, boxes, classes.astype(np.int32))
        graph = graph_fn(boxes, classes.astype(np.int32))
        for key in ("cls_targets", "box_targets", "num_positives"):
            np.testing.assert_allclose(batch[key][i].numpy(), eager[key].numpy(), atol=1e-6)
            np.testing.assert_allclose(graph[key].numpy(), eager[key].numpy(), atol=1e-6)
    assert batch["num_positives"].numpy()[1] == 0 and batch["num_positives"].numpy()[2] > 0


def test_d0_targets_are_float32_and_finite():
    anchors = Anchors(3, 7, 3, [1.0, 2.0, 0.5], 4.0, 512)
    targets = encode_targets(anchors, tf.constant([[100, 100, 300, 200]], tf.float32),
                             tf.constant([0]))
    assert targets["box_targets"].dtype == tf.float32
    assert np.all(np.isfinite(targets["box_targets"].numpy()))
    assert targets["num_positives"].numpy() >= 1
