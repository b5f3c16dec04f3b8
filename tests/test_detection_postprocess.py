"""Post-processing: hard per-class NMS, Gaussian soft-NMS, rescaling, dynamic batch, export."""

import math

import numpy as np
import pytest
import tensorflow as tf

from efficientdet.detection.anchors import Anchors
from efficientdet.detection.postprocess import postprocess
from efficientdet.detection.targets import encode_targets

LOW = -20.0  # sigmoid(-20) = 2e-9, below the 0.001 score threshold


def logit(p):
    return math.log(p / (1 - p))


# Anchors double as the decoded boxes (box codes are zero).
BOXES = tf.constant([
    [0, 0, 10, 10],    # B0
    [0, 1, 10, 11],    # B1: IoU with B0 = 90 / 110 = 0.818
    [50, 50, 60, 60],  # B2: far away
], tf.float32)
IOU01 = 90 / 110


def crafted_outputs():
    cls = np.full([1, 3, 2], LOW, np.float32)
    cls[0, 0, 0] = logit(0.9)  # B0 class 0
    cls[0, 1, 0] = logit(0.8)  # B1 class 0: overlaps B0 in the same class
    cls[0, 1, 1] = logit(0.7)  # B1 class 1: overlaps B0 in another class
    cls[0, 2, 1] = logit(0.6)  # B2 class 1
    return tf.constant(cls), tf.zeros([1, 3, 4])


def test_hard_nms_suppresses_within_a_class_only():
    boxes, scores, classes, num = postprocess(*crafted_outputs(), BOXES, method="hard",
                                              max_detections=5)
    assert num.numpy().tolist() == [3]
    np.testing.assert_allclose(scores[0].numpy(), [0.9, 0.7, 0.6, 0, 0], rtol=1e-5)
    assert classes.dtype == tf.int32
    assert classes[0, :3].numpy().tolist() == [0, 1, 1]
    np.testing.assert_allclose(boxes[0, :3].numpy(), BOXES.numpy()[[0, 1, 2]], atol=1e-4)
    np.testing.assert_array_equal(boxes[0, 3:].numpy(), np.zeros([2, 4]))


def test_hard_nms_iou_threshold_is_respected():
    # at IoU threshold 0.9 the 0.818 overlap no longer suppresses
    _, scores, _, num = postprocess(*crafted_outputs(), BOXES, method="hard",
                                    iou_threshold=0.9, max_detections=5)
    assert num.numpy().tolist() == [4]
    np.testing.assert_allclose(scores[0, :4].numpy(), [0.9, 0.8, 0.7, 0.6], rtol=1e-5)


def test_soft_nms_decays_overlaps_by_the_gaussian():
    boxes, scores, classes, num = postprocess(*crafted_outputs(), BOXES, method="soft",
                                              max_detections=5, soft_nms_sigma=0.5)
    decay = math.exp(-IOU01**2 / (2 * 0.5))  # exp(-iou^2 / (2 sigma)), TF's and automl's
    # greedy: 0.9 (B0 c0) kept; both B1 candidates decayed by `decay`; 0.6 (B2) next;
    # then B1 c0 (0.8*decay), which decays B1 c1 again by exp(-1^2 / (2 * 0.5)) (class-agnostic)
    expected = [0.9, 0.6, 0.8 * decay, 0.7 * decay * math.exp(-1 / (2 * 0.5))]
    assert num.numpy().tolist() == [4]
    np.testing.assert_allclose(scores[0].numpy(), expected + [0.0], rtol=1e-4)
    assert classes[0, :4].numpy().tolist() == [0, 1, 0, 1]
    np.testing.assert_allclose(boxes[0, :4].numpy(), BOXES.numpy()[[0, 2, 1, 1]], atol=1e-4)


def test_score_threshold_and_pre_nms_topk():
    _, scores, _, num = postprocess(*crafted_outputs(), BOXES, method="hard",
                                    score_threshold=0.65, max_detections=5)
    assert num.numpy().tolist() == [2]
    np.testing.assert_allclose(scores[0, :2].numpy(), [0.9, 0.7], rtol=1e-5)
    for method in ("hard", "soft"):
        _, scores, _, num = postprocess(*crafted_outputs(), BOXES, method=method,
                                        pre_nms_topk=1, max_detections=5)
        assert num.numpy().tolist() == [1]
        assert scores[0, 0].numpy() == pytest.approx(0.9, rel=1e-5)


@pytest.mark.parametrize("method", ["hard", "soft"])
def test_rescaling_to_the_original_image(method):
    cls, box = crafted_outputs()
    cls, box = tf.concat([cls, cls], 0), tf.concat([box, box], 0)
    kwargs = {"method": method, "max_detections": 5}
    plain = postprocess(cls, box, BOXES, **kwargs)[0].numpy()
    # image 0 was downscaled by 0.5 (boxes double), image 1 by 0.25 in y and 0.5 in x
    scaled = postprocess(cls, box, BOXES, image_scales=tf.constant([0.5, 1.0]), **kwargs)[0]
    np.testing.assert_allclose(scaled[0].numpy(), plain[0] * 2, atol=1e-4)
    np.testing.assert_allclose(scaled[1].numpy(), plain[1], atol=1e-4)
    per_axis = postprocess(cls, box, BOXES, image_scales=tf.constant([[0.25, 0.5], [1, 1]]),
                           **kwargs)[0]
    np.testing.assert_allclose(per_axis[0].numpy(), plain[0] * [4, 2, 4, 2], atol=1e-4)
    # clipped to original sizes (height, width): image 0 is 100 x 105 after scaling by 2
    clipped = postprocess(cls, box, BOXES, image_scales=tf.constant([0.5, 1.0]),
                          image_sizes=tf.constant([[100, 105], [55, 8]]), **kwargs)[0].numpy()
    expected0 = np.minimum(plain[0] * 2, [100, 105, 100, 105])
    expected1 = np.minimum(plain[1], [55, 8, 55, 8])
    num = postprocess(cls, box, BOXES, **kwargs)[3].numpy()
    expected0[num[0]:] = 0
    expected1[num[1]:] = 0
    np.testing.assert_allclose(clipped[0], expected0, atol=1e-4)
    np.testing.assert_allclose(clipped[1], expected1, atol=1e-4)


def test_boxes_are_clipped_to_the_input_image_when_anchors_know_it():
    anchors = Anchors(3, 4, 1, [1.0], 4.0, 32)  # level 3 first anchor: [-12, -12, 20, 20]
    cls = np.full([1, anchors.num_anchors, 1], LOW, np.float32)
    cls[0, 0, 0] = 5.0
    boxes, _, _, num = postprocess(tf.constant(cls), tf.zeros([1, anchors.num_anchors, 4]),
                                   anchors)
    assert num.numpy().tolist() == [1]
    np.testing.assert_allclose(boxes[0, 0].numpy(), [0, 0, 20, 20])


@pytest.mark.parametrize("method", ["hard", "soft"])
def test_perfect_predictions_recover_the_ground_truth(method):
    anchors = Anchors(3, 7, 3, [1.0, 2.0, 0.5], 4.0, 128)
    gt_boxes = tf.constant([[10, 10, 50, 60], [70, 20, 120, 90], [5, 90, 30, 125]], tf.float32)
    gt_classes = tf.constant([2, 0, 2])
    targets = encode_targets(anchors, gt_boxes, gt_classes)
    cls = tf.where(tf.one_hot(targets["cls_targets"], 3) > 0, 8.0, LOW)[None]
    boxes, _, classes, num = postprocess(cls, targets["box_targets"][None], anchors,
                                         method=method, iou_threshold=0.5)
    # hard NMS leaves one box per object; soft-NMS keeps the duplicates with decayed scores,
    # so its 3 best detections are the 3 objects
    if method == "hard":
        assert num.numpy().tolist() == [3]
    found = {(int(c), tuple(np.round(b, 2))) for b, c in zip(boxes[0, :3].numpy(),
                                                               classes[0, :3].numpy())}
    expected = {(int(c), tuple(np.round(b, 2))) for b, c in zip(gt_boxes.numpy(),
                                                              gt_classes.numpy())}
    assert found == expected


@pytest.mark.parametrize("method", ["hard", "soft"])
def test_traceable_with_dynamic_batch(method):
    anchors = Anchors(3, 4, 3, [1.0, 2.0, 0.5], 4.0, 32)
    n = anchors.num_anchors

    @tf.function(input_signature=[tf.TensorSpec([None, n, 4], tf.float32),
                                  tf.TensorSpec([None, n, 4], tf.float32),
                                  tf.TensorSpec([None], tf.float32)])
    def detect(cls, box, scales):
        return postprocess(cls, box, anchors, method=method, max_detections=7,
                           image_scales=scales)

    rng = np.random.default_rng(0)
    for batch in (1, 3):
        cls = tf.constant(rng.normal(size=(batch, n, 4)), tf.float32)
        box = tf.constant(rng.normal(size=(batch, n, 4)) * 0.1, tf.float32)
        boxes, scores, classes, num = detect(cls, box, tf.ones([batch]))
        assert boxes.shape == (batch, 7, 4) and scores.shape == (batch, 7)
        assert classes.shape == (batch, 7) and num.shape == (batch,)
        eager = postprocess(cls, box, anchors, method=method, max_detections=7)
        np.testing.assert_allclose(scores.numpy(), eager[1].numpy(), rtol=1e-5)


@pytest.mark.parametrize("method,op", [("hard", "NonMaxSuppressionV3"),
                                       ("combined", "CombinedNonMaxSuppression")])
def test_hard_nms_survives_a_saved_model_round_trip(tmp_path, method, op):
    anchors = Anchors(3, 4, 3, [1.0, 2.0, 0.5], 4.0, 32)
    n = anchors.num_anchors
    module = tf.Module()
    module.detect = tf.function(
        lambda cls, box: postprocess(cls, box, anchors, method=method, max_detections=5),
        input_signature=[tf.TensorSpec([None, n, 2], tf.float32),
                         tf.TensorSpec([None, n, 4], tf.float32)],
    )
    # "combined" traces the op TF-TRT maps onto TensorRT's NMS plugin
    graph = module.detect.get_concrete_function().graph
    ops = {o.type for o in graph.get_operations()}
    for body in graph._functions.values():  # map_fn bodies
        ops |= {o.type for o in body.graph.get_operations()}
    assert op in ops
    tf.saved_model.save(module, str(tmp_path / "nms"))
    loaded = tf.saved_model.load(str(tmp_path / "nms"))
    rng = np.random.default_rng(1)
    cls = tf.constant(rng.normal(size=(2, n, 2)), tf.float32)
    box = tf.zeros([2, n, 4])
    for a, b in zip(loaded.detect(cls, box), postprocess(cls, box, anchors, max_detections=5)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5)


def test_bad_arguments_are_named():
    cls, box = crafted_outputs()
    with pytest.raises(ValueError, match="method"):
        postprocess(cls, box, BOXES, method="fast")
    with pytest.raises(ValueError, match="soft_nms_sigma"):
        postprocess(cls, box, BOXES, method="soft", soft_nms_sigma=0.0)


def _reference_hard_nms(cls_flat, box_flat, anchors, k=5000, max_det=100, iou=0.5, thr=0.001):
    """The straightforward definition: top-k over every (anchor, class) logit, then per-class
    NMS with TensorFlow's combined NMS."""
    from efficientdet.detection.anchors import as_anchor_boxes
    from efficientdet.detection.box_coder import decode_boxes

    num_classes = cls_flat.shape[-1]
    logits = tf.reshape(cls_flat, [cls_flat.shape[0], -1])
    top, index = tf.math.top_k(logits, k=min(k, logits.shape[1]))
    codes = tf.gather(box_flat, index // num_classes, batch_dims=1)
    boxes = decode_boxes(codes, tf.gather(as_anchor_boxes(anchors), index // num_classes))
    h, w = anchors.image_size
    boxes = tf.stack([tf.clip_by_value(boxes[..., 0], 0, h), tf.clip_by_value(boxes[..., 1], 0, w),
                      tf.clip_by_value(boxes[..., 2], 0, h), tf.clip_by_value(boxes[..., 3], 0, w)],
                     -1)
    scores = tf.one_hot(index % num_classes, num_classes) * tf.sigmoid(top)[..., None]
    out = tf.image.combined_non_max_suppression(boxes[:, :, None], scores, max_det, max_det, iou,
                                                thr, pad_per_class=False, clip_boxes=False)
    return [np.asarray(t) for t in out]


@pytest.mark.parametrize("num_classes,pre_nms_topk", [(90, 5000), (3, 200), (7, 100000)])
def test_fast_hard_nms_equals_topk_over_all_pairs_and_combined_nms(num_classes, pre_nms_topk):
    """Two-stage candidate selection and class-shifted NMS give exactly the detections of a
    top-k over all N*K logits followed by per-class combined NMS."""
    anchors = Anchors(3, 7, 3, (1.0, 2.0, 0.5), 4.0, 256)
    n = anchors.num_anchors
    rng = np.random.default_rng(num_classes)
    # clustered logits: many overlapping candidates of several classes compete
    cls_flat = tf.constant(rng.normal(-4.0, 2.0, (2, n, num_classes)), tf.float32)
    box_flat = tf.constant(rng.normal(0.0, 0.3, (2, n, 4)), tf.float32)
    ref_boxes, ref_scores, ref_classes, ref_num = _reference_hard_nms(
        cls_flat, box_flat, anchors, k=pre_nms_topk)
    for method in ("combined", "hard"):
        _assert_same_detections(
            postprocess(cls_flat, box_flat, anchors, method=method, pre_nms_topk=pre_nms_topk),
            (ref_boxes, ref_scores, ref_classes, ref_num))


def _assert_same_detections(detections, reference):
    boxes, scores, classes, num = detections
    ref_boxes, ref_scores, ref_classes, ref_num = reference
    np.testing.assert_array_equal(num.numpy(), ref_num)
    assert num.numpy().min() > 50  # the comparison covers many detections per image
    np.testing.assert_array_equal(classes.numpy(), ref_classes.astype(np.int32) * (
        np.arange(100)[None] < ref_num[:, None]))
    np.testing.assert_allclose(scores.numpy(), ref_scores, rtol=0, atol=1e-6)
    np.testing.assert_allclose(boxes.numpy(), ref_boxes, rtol=0, atol=1e-4)


def test_anchor_max_candidates_take_each_anchors_best_class_as_automl():
    """automl's default (max_nms_inputs 0): one candidate per anchor, its best class, all
    anchors, then soft-NMS with TF's soft_nms_sigma 0.25 (automl's sigma 0.5 halved)."""
    cls, box = crafted_outputs()
    _, scores, classes, num = postprocess(
        cls, box, BOXES, method="soft", candidates="anchor_max", pre_nms_topk=0,
        soft_nms_sigma=0.25, max_detections=5)
    assert int(num[0]) == 3  # B1's class-1 pair is no candidate: its class 0 scores higher
    np.testing.assert_allclose(scores[0, :3], [0.9, 0.6, 0.8 * math.exp(-IOU01**2 / 0.5)],
                               rtol=1e-4)
    assert classes[0, :3].numpy().tolist() == [0, 1, 0]
    _, top_scores, _, _ = postprocess(cls, box, BOXES, method="soft", candidates="anchor_max",
                                      pre_nms_topk=1, soft_nms_sigma=0.25, max_detections=5)
    np.testing.assert_allclose(top_scores[0], [0.9, 0, 0, 0, 0], rtol=1e-5)
    with pytest.raises(ValueError, match="candidates"):
        postprocess(cls, box, BOXES, candidates="best")


@pytest.mark.parametrize("batch,pre_nms_topk", [(1, 500), (3, 500), (2, 40000)])
def test_candidates_are_exactly_a_topk_over_all_pairs_ties_included(batch, pre_nms_topk):
    """Both candidate paths (k <= N anchors: only pairs reaching the k-th anchor maximum are
    ranked; k > N: all pairs of the k anchors) pick what one top-k over N*K logits picks, in
    its order, ties broken to the lower index: integer logits make thousands of ties."""
    from efficientdet.detection.postprocess import _top_candidates

    n, num_classes = 3000, 20
    rng = np.random.default_rng(batch)
    cls_flat = tf.constant(rng.integers(-6, 3, (batch, n, num_classes)), tf.float32)
    anchor_boxes = tf.constant([[i, i, i + 1, i + 1] for i in range(n)], tf.float32)
    boxes, scores, classes = _top_candidates(cls_flat, tf.zeros([batch, n, 4]), anchor_boxes,
                                             pre_nms_topk)
    top, index = tf.math.top_k(tf.reshape(cls_flat, [batch, -1]), k=min(pre_nms_topk,
                                                                        n * num_classes))
    np.testing.assert_array_equal(classes.numpy(), index.numpy() % num_classes)
    np.testing.assert_array_equal(boxes.numpy()[..., 0], index.numpy() // num_classes)
    np.testing.assert_array_equal(scores.numpy(), tf.sigmoid(top).numpy())


def test_candidates_of_nan_logits_do_not_fail():
    """A diverged model's NaN logits still give k candidates (garbage in, no crash)."""
    from efficientdet.detection.postprocess import _top_candidates

    cls_flat = np.random.default_rng(0).normal(size=(2, 600, 5)).astype(np.float32)
    cls_flat[0, ::3] = np.nan
    cls_flat[1] = np.nan
    boxes, scores, classes = _top_candidates(
        tf.constant(cls_flat), tf.zeros([2, 600, 4]), tf.zeros([600, 4]), 100)
    assert boxes.shape == (2, 100, 4) and scores.shape == (2, 100) and classes.shape == (2, 100)
