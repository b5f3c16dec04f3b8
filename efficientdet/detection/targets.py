"""Target assignment for one image: IoU matching with a forced best-anchor match, box coding.

Pure TF ops on one image, float32, so it runs inside a ``tf.data`` map (graph mode).

Rules (the EfficientDet recipe):
- An anchor whose best IoU with a real ground-truth box is >= ``match_threshold`` (0.5) is
  positive for that box; below it the anchor is background. There is no ignore band.
- Each ground-truth box is also force-matched to its best anchor, even when that IoU is below
  the threshold; a forced match overrides the anchor's threshold match. Ties are broken
  deterministically: a box's best anchor is the lowest anchor index among equal IoUs, and when
  several boxes force-match one anchor, the box with the highest IoU with it wins (then the
  lowest box index). A box that overlaps no anchor at all (IoU 0 everywhere) is not forced.
- Rows with class < 0 are padding and are ignored entirely.
- Crowd boxes are not handled here: the data pipeline drops them before encoding (the recipe
  skips crowd boxes in training).
"""

from __future__ import annotations

import tensorflow as tf

from efficientdet.detection.anchors import as_anchor_boxes
from efficientdet.detection.box_coder import encode_boxes
from efficientdet.detection.iou import pairwise_iou

MATCH_THRESHOLD = 0.5


def match_anchors(
    anchor_boxes: tf.Tensor,
    gt_boxes: tf.Tensor,
    gt_classes: tf.Tensor,
    match_threshold: float = MATCH_THRESHOLD,
) -> tf.Tensor:
    """Index [N] int32 of the ground-truth row each anchor is matched to, -1 for background."""
    anchor_boxes = tf.convert_to_tensor(anchor_boxes, tf.float32)
    gt_boxes = tf.reshape(tf.cast(gt_boxes, tf.float32), [-1, 4])
    gt_classes = tf.reshape(tf.cast(gt_classes, tf.int32), [-1])
    # One padding row is appended so argmax never runs over an empty axis (images without
    # boxes, or only padding). Padding rows become empty boxes: IoU 0 with every anchor, so they
    # never reach the threshold, and they are excluded from forcing below. (Masking the boxes
    # rather than the [N, M] IoU matrix saves a pass over the matrix.)
    valid = tf.concat([gt_classes >= 0, [False]], axis=0)  # [M+1]
    gt_boxes = tf.concat([gt_boxes, tf.zeros([1, 4], tf.float32)], axis=0)
    gt_boxes = tf.where(valid[:, None], gt_boxes, 0.0)
    # [M+1, N] rather than [N, M+1]: TF's CPU argmax over the long anchor axis is much faster
    # as the innermost axis.
    iou = pairwise_iou(gt_boxes, anchor_boxes)
    num_gt, num_anchors = tf.shape(iou)[0], tf.shape(iou)[1]

    # Threshold matches: each anchor's best box.
    best_gt = tf.argmax(iou, axis=0, output_type=tf.int32)  # [N]
    best_iou = tf.gather_nd(iou, tf.stack([best_gt, tf.range(num_anchors)], axis=1))
    matches = tf.where(best_iou >= match_threshold, best_gt, -1)

    # Forced matches: each real box's best anchor (argmax takes the first of equal values).
    best_anchor = tf.argmax(iou, axis=1, output_type=tf.int32)  # [M+1]
    best_anchor_iou = tf.gather(iou, best_anchor[:, None], batch_dims=1)[:, 0]
    forceable = valid & (best_anchor_iou > 0.0)
    # Preference among boxes forcing the same anchor: higher IoU, then lower row (stable sort).
    order = tf.argsort(tf.where(forceable, best_anchor_iou, -1.0), direction="DESCENDING",
                       stable=True)
    priority = num_gt - tf.math.invert_permutation(order)  # num_gt for the most preferred
    priority = tf.where(forceable, priority, 0)
    # Scatter-max is order independent, hence deterministic with duplicate anchors.
    anchor_priority = tf.tensor_scatter_nd_max(
        tf.zeros([num_anchors], tf.int32), best_anchor[:, None], priority
    )
    forced_gt = tf.gather(order, tf.minimum(num_gt - anchor_priority, num_gt - 1))
    return tf.where(anchor_priority > 0, forced_gt, matches)


def encode_targets(
    anchors,
    gt_boxes: tf.Tensor,
    gt_classes: tf.Tensor,
    match_threshold: float = MATCH_THRESHOLD,
) -> dict[str, tf.Tensor]:
    """Training targets for one image.

    Args:
      anchors: an ``Anchors`` or its float32 [N, 4] boxes (input pixels).
      gt_boxes: [M, 4] ground-truth boxes in input pixels (ymin, xmin, ymax, xmax).
      gt_classes: [M] int32 class indices (category_id - 1); -1 marks padding rows.

    Returns:
      ``cls_targets`` [N] int32 (class index, -1 background), ``box_targets`` [N, 4] float32
      (codes of the matched box, zeros on background) and ``num_positives`` [] float32.
    """
    anchor_boxes = as_anchor_boxes(anchors)
    gt_boxes = tf.reshape(tf.cast(gt_boxes, tf.float32), [-1, 4])
    gt_classes = tf.reshape(tf.cast(gt_classes, tf.int32), [-1])
    matches = match_anchors(anchor_boxes, gt_boxes, gt_classes, match_threshold)
    positive = matches >= 0
    safe = tf.maximum(matches, 0)
    # Gathering from an empty gt list is invalid even for masked rows: pad one dummy row.
    padded_classes = tf.concat([gt_classes, [-1]], axis=0)
    padded_boxes = tf.concat([gt_boxes, [[0.0, 0.0, 1.0, 1.0]]], axis=0)
    cls_targets = tf.where(positive, tf.gather(padded_classes, safe), -1)
    codes = encode_boxes(tf.gather(padded_boxes, safe), anchor_boxes)
    box_targets = tf.where(positive[:, None], codes, tf.zeros_like(codes))
    return {
        "cls_targets": cls_targets,
        "box_targets": box_targets,
        "num_positives": tf.reduce_sum(tf.cast(positive, tf.float32)),
    }
