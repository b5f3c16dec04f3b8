"""Class and box heads: conv weights shared across levels, BN separate per level and repeat.

Each repeat is separable 3x3 -> BN -> swish; the output separable conv predicts A*K class
logits (bias = -log((1 - 0.01) / 0.01), the focal-loss prior) or A*4 box deltas per location.
Outputs are cast to float32 so losses stay stable under mixed precision.
"""

from __future__ import annotations

import math

import keras

from efficientdet.models.configs import CLASS_PRIOR, EfficientDetConfig
from efficientdet.models.layers import (
    Swish,
    batch_norm,
    float32_output,
    head_kernel_initializer,
)


def _separable(filters: int, name: str, bias_initializer="zeros"):
    return keras.layers.SeparableConv2D(
        filters, 3, padding="same", use_bias=True,
        depthwise_initializer=head_kernel_initializer(),
        pointwise_initializer=head_kernel_initializer(),
        bias_initializer=bias_initializer, name=name,
    )


def _head(features: dict, cfg: EfficientDetConfig, outputs_per_anchor: int, prefix: str,
          bias_initializer, sync_bn: bool) -> list:
    width = cfg.fpn_num_filters
    convs = [_separable(width, f"{prefix}_conv{r}") for r in range(cfg.box_class_repeats)]
    predict = _separable(cfg.num_anchors_per_location * outputs_per_anchor, f"{prefix}_predict",
                         bias_initializer)
    outputs = []
    for level in cfg.levels:
        x = features[level]
        for r, conv in enumerate(convs):
            x = conv(x)
            x = batch_norm(f"{prefix}_bn{r}_p{level}", sync_bn)(x)
            x = Swish(name=f"{prefix}_activation{r}_p{level}")(x)
        x = predict(x)
        outputs.append(float32_output(f"{prefix}_output_p{level}")(x))
    return outputs


def class_head(features: dict, cfg: EfficientDetConfig, num_classes: int, sync_bn: bool = False):
    """Per-level class logits [B, H_l, W_l, A*K], anchor-major (channel = a*K + k)."""
    prior_bias = -math.log((1.0 - CLASS_PRIOR) / CLASS_PRIOR)
    return _head(features, cfg, num_classes, "class_net",
                 keras.initializers.Constant(prior_bias), sync_bn)


def box_head(features: dict, cfg: EfficientDetConfig, sync_bn: bool = False):
    """Per-level box regression [B, H_l, W_l, A*4] (ty, tx, th, tw per anchor)."""
    return _head(features, cfg, 4, "box_net", "zeros", sync_bn)
