"""Detection losses: sigmoid focal loss + Huber box loss, normalized by positive anchors.

normalizer = (positive anchors in this replica's batch) + 1. It is deliberately per replica
(no allreduce across Horovod ranks), as in the reference implementations; gradients are
averaged across ranks afterwards.
- classification: sum over all anchors and classes of the focal loss / normalizer; background
  anchors (class -1) are negatives for every class.
- box: Huber (delta 0.1) on the 4 codes of positive anchors, summed / (4 * normalizer).
- total = cls + box_loss_weight (50) * box.
Everything is computed in float32 whatever the model's compute dtype.
"""

from __future__ import annotations

from collections.abc import Mapping

import tensorflow as tf

from efficientdet.detection.anchors import flatten_outputs

ALPHA = 0.25
GAMMA = 1.5
HUBER_DELTA = 0.1
BOX_LOSS_WEIGHT = 50.0


def focal_loss(
    logits: tf.Tensor,
    labels: tf.Tensor,
    alpha: float = ALPHA,
    gamma: float = GAMMA,
    label_smoothing: float = 0.0,
) -> tf.Tensor:
    """Element-wise sigmoid focal loss of logits against 0/1 labels (same shape).

    loss = alpha_t * (1 - p_t)**gamma * BCE(logits, smoothed labels), where p_t and alpha_t
    use the hard labels and only the cross-entropy sees the smoothed ones
    (y * (1 - s) + 0.5 * s).
    """
    logits = tf.cast(logits, tf.float32)
    labels = tf.cast(labels, tf.float32)
    prob = tf.sigmoid(logits)
    p_t = labels * prob + (1.0 - labels) * (1.0 - prob)
    alpha_t = labels * alpha + (1.0 - labels) * (1.0 - alpha)
    modulator = tf.pow(tf.maximum(1.0 - p_t, 0.0), gamma)
    smoothed = labels * (1.0 - label_smoothing) + 0.5 * label_smoothing
    ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=smoothed, logits=logits)
    return alpha_t * modulator * ce


def huber_loss(predictions: tf.Tensor, targets: tf.Tensor, delta: float = HUBER_DELTA):
    """Element-wise Huber loss: 0.5 x^2 for |x| <= delta, delta * (|x| - 0.5 delta) above."""
    error = tf.abs(tf.cast(predictions, tf.float32) - tf.cast(targets, tf.float32))
    quadratic = tf.minimum(error, delta)
    return 0.5 * quadratic**2 + delta * (error - quadratic)


def _split_outputs(outputs_flat, num_classes):
    if isinstance(outputs_flat, Mapping):
        cls_out, box_out = outputs_flat["class_outputs"], outputs_flat["box_outputs"]
        if isinstance(cls_out, (list, tuple)):  # the model's raw per-level outputs
            return flatten_outputs(outputs_flat, num_classes)
        return cls_out, box_out
    if isinstance(outputs_flat, (list, tuple)) and len(outputs_flat) == 2:
        return outputs_flat
    raise ValueError(
        "outputs_flat must be (class_outputs [B, N, K], box_outputs [B, N, 4]) or a dict "
        "with 'class_outputs' and 'box_outputs'"
    )


def detection_loss(
    outputs_flat,
    targets: Mapping[str, tf.Tensor],
    num_classes: int,
    *,
    alpha: float = ALPHA,
    gamma: float = GAMMA,
    label_smoothing: float = 0.0,
    delta: float = HUBER_DELTA,
    box_loss_weight: float = BOX_LOSS_WEIGHT,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(total, cls_loss, box_loss) float32 scalars for one replica's batch.

    Args:
      outputs_flat: (class logits [B, N, K], box codes [B, N, 4]) in anchor order, or a dict
        with ``class_outputs``/``box_outputs`` (flattened, or the model's per-level lists).
      targets: batched ``encode_targets`` output: ``cls_targets`` [B, N] int (-1 background),
        ``box_targets`` [B, N, 4]; ``num_positives`` [B] is used when present, else counted.
      num_classes: K.
    """
    cls_out, box_out = _split_outputs(outputs_flat, num_classes)
    cls_out = tf.cast(cls_out, tf.float32)
    box_out = tf.cast(box_out, tf.float32)
    if cls_out.shape[-1] is not None and cls_out.shape[-1] != num_classes:
        raise ValueError(
            f"class outputs have {cls_out.shape[-1]} classes, num_classes is {num_classes}"
        )
    cls_targets = tf.cast(targets["cls_targets"], tf.int32)
    box_targets = tf.cast(targets["box_targets"], tf.float32)
    positive = tf.cast(cls_targets >= 0, tf.float32)  # [B, N]
    if "num_positives" in targets:
        num_positives = tf.reduce_sum(tf.cast(targets["num_positives"], tf.float32))
    else:
        num_positives = tf.reduce_sum(positive)
    normalizer = num_positives + 1.0

    labels = tf.one_hot(cls_targets, num_classes, dtype=tf.float32)  # -1 -> all zeros
    cls_loss = tf.reduce_sum(
        focal_loss(cls_out, labels, alpha, gamma, label_smoothing)
    ) / normalizer

    box_elementwise = huber_loss(box_out, box_targets, delta) * positive[..., None]
    box_loss = tf.reduce_sum(box_elementwise) / (4.0 * normalizer)

    total = cls_loss + box_loss_weight * box_loss
    return total, cls_loss, box_loss
