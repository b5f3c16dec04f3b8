"""Box coding relative to anchors, the EfficientDet way (no scale factors).

Targets are ``ty = (y - ya) / ha``, ``tx = (x - xa) / wa``, ``th = log(h / ha)``,
``tw = log(w / wa)`` with centre (y, x) and size (h, w); order of the 4 codes is
(ty, tx, th, tw), the order the box head is trained to predict. Boxes are
[ymin, xmin, ymax, xmax] in input pixels.
"""

from __future__ import annotations

import math

import tensorflow as tf

# Largest log-scale accepted by decode: exp(4.135) = 62.5 x the anchor size. Untrained or
# diverging heads can emit huge th/tw; clipping keeps exp() finite (no inf/NaN boxes).
MAX_LOG_SCALE = math.log(1000.0 / 16.0)
_EPS = 1e-8


def _centers_and_sizes(boxes: tf.Tensor):
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
    return (ymin + ymax) / 2.0, (xmin + xmax) / 2.0, ymax - ymin, xmax - xmin


def encode_boxes(boxes: tf.Tensor, anchors: tf.Tensor) -> tf.Tensor:
    """Codes [..., 4] (ty, tx, th, tw) of boxes [..., 4] relative to anchors [..., 4].

    Box sizes are floored at a tiny epsilon so a degenerate box yields a finite code.
    """
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    yc, xc, h, w = _centers_and_sizes(boxes)
    yca, xca, ha, wa = _centers_and_sizes(anchors)
    h = tf.maximum(h, _EPS)
    w = tf.maximum(w, _EPS)
    ty = (yc - yca) / ha
    tx = (xc - xca) / wa
    th = tf.math.log(h / ha)
    tw = tf.math.log(w / wa)
    return tf.stack([ty, tx, th, tw], axis=-1)


def decode_boxes(codes: tf.Tensor, anchors: tf.Tensor) -> tf.Tensor:
    """Boxes [..., 4] (ymin, xmin, ymax, xmax) from codes [..., 4] and anchors [..., 4].

    The log-scales are clipped to ``MAX_LOG_SCALE`` before exp() for numerical stability.
    """
    codes = tf.cast(codes, tf.float32)
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    ty, tx, th, tw = tf.unstack(codes, axis=-1)
    yca, xca, ha, wa = _centers_and_sizes(anchors)
    h = tf.exp(tf.minimum(th, MAX_LOG_SCALE)) * ha
    w = tf.exp(tf.minimum(tw, MAX_LOG_SCALE)) * wa
    yc = ty * ha + yca
    xc = tx * wa + xca
    return tf.stack([yc - h / 2.0, xc - w / 2.0, yc + h / 2.0, xc + w / 2.0], axis=-1)
