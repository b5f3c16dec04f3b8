"""Pairwise intersection-over-union of [ymin, xmin, ymax, xmax] boxes (TF ops, graph-safe)."""

from __future__ import annotations

import tensorflow as tf


def box_areas(boxes: tf.Tensor) -> tf.Tensor:
    """Areas of boxes [..., 4]; degenerate (inverted) boxes count as zero area."""
    heights = tf.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
    widths = tf.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
    return heights * widths


def pairwise_iou(boxes1: tf.Tensor, boxes2: tf.Tensor) -> tf.Tensor:
    """IoU matrix [N, M] between boxes1 [N, 4] and boxes2 [M, 4] (float32).

    Pairs whose union is empty (two zero-area boxes) get IoU 0 rather than NaN.
    """
    boxes1 = tf.convert_to_tensor(boxes1, tf.float32)
    boxes2 = tf.convert_to_tensor(boxes2, tf.float32)
    y1a, x1a, y2a, x2a = tf.unstack(boxes1[:, None, :], axis=-1)  # [N, 1]
    y1b, x1b, y2b, x2b = tf.unstack(boxes2[None, :, :], axis=-1)  # [1, M]
    inter_h = tf.maximum(tf.minimum(y2a, y2b) - tf.maximum(y1a, y1b), 0.0)
    inter_w = tf.maximum(tf.minimum(x2a, x2b) - tf.maximum(x1a, x1b), 0.0)
    intersection = inter_h * inter_w
    union = box_areas(boxes1)[:, None] + box_areas(boxes2)[None, :] - intersection
    return tf.math.divide_no_nan(intersection, union)
