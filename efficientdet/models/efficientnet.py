"""EfficientNet B0-B7: the multi-level feature extractor and the classifier built on it.

The feature extractor (stem + MBConv blocks, no 1x1 head conv) is a nested Keras model named
"backbone" that takes [0, 255] RGB and returns [C3, C4, C5] (strides 8/16/32). The classifier
adds the 1x1 head conv, pooling, dropout and the dense layer on C5, so a classifier's backbone
weights drop straight into a detector's backbone.
"""

from __future__ import annotations

import keras

from efficientdet.models.configs import EfficientNetConfig
from efficientdet.models.layers import (
    ImageNormalization,
    StochasticDepth,
    Swish,
    batch_norm,
    conv_kernel_initializer,
    dense_kernel_initializer,
    float32_output,
    squeeze_excite,
)

BACKBONE_NAME = "backbone"


def mbconv_block(x, block: dict, drop_rate: float, sync_bn: bool):
    """Inverted residual: expand 1x1 -> depthwise kxk -> SE -> project 1x1 (+ residual)."""
    p = block["name"] + "_"
    inputs = x
    filters_in, filters_out = block["filters_in"], block["filters_out"]
    expanded = filters_in * block["expand_ratio"]
    if block["expand_ratio"] != 1:
        x = keras.layers.Conv2D(
            expanded, 1, padding="same", use_bias=False,
            kernel_initializer=conv_kernel_initializer(), name=p + "expand_conv",
        )(x)
        x = batch_norm(p + "expand_bn", sync_bn)(x)
        x = Swish(name=p + "expand_activation")(x)
    x = keras.layers.DepthwiseConv2D(
        block["kernel_size"], strides=block["strides"], padding="same", use_bias=False,
        depthwise_initializer=conv_kernel_initializer(), name=p + "dwconv",
    )(x)
    x = batch_norm(p + "bn", sync_bn)(x)
    x = Swish(name=p + "activation")(x)
    if 0 < block["se_ratio"] <= 1:
        x = squeeze_excite(x, filters_in, block["se_ratio"], p)
    x = keras.layers.Conv2D(
        filters_out, 1, padding="same", use_bias=False,
        kernel_initializer=conv_kernel_initializer(), name=p + "project_conv",
    )(x)
    x = batch_norm(p + "project_bn", sync_bn)(x)
    if block["strides"] == 1 and filters_in == filters_out:
        if drop_rate > 0:
            x = StochasticDepth(drop_rate, name=p + "drop")(x)
        x = keras.layers.Add(name=p + "add")([x, inputs])
    return x


def build_feature_extractor(
    cfg: EfficientNetConfig,
    image_size: int | None = None,
    *,
    sync_bn: bool = False,
    drop_connect_rate: float | None = None,
    name: str = BACKBONE_NAME,
) -> keras.Model:
    """Stem + MBConv blocks as a model: [B, S, S, 3] in [0, 255] -> [C3, C4, C5]."""
    size = image_size or cfg.image_size
    rate = cfg.drop_connect_rate if drop_connect_rate is None else drop_connect_rate
    inputs = keras.Input((size, size, 3), name="images")
    x = ImageNormalization(name="normalize")(inputs)
    x = keras.layers.Conv2D(
        cfg.round_filters(cfg.stem_filters), 3, strides=2, padding="same", use_bias=False,
        kernel_initializer=conv_kernel_initializer(), name="stem_conv",
    )(x)
    x = batch_norm("stem_bn", sync_bn)(x)
    x = Swish(name="stem_activation")(x)

    blocks = cfg.blocks()
    stride_level = 1
    taps: dict[int, object] = {}
    for index, block in enumerate(blocks):
        x = mbconv_block(x, block, rate * index / len(blocks), sync_bn)
        stride_level += block["strides"] == 2
        taps[stride_level] = x  # the last block at each stride is that level's output
    missing = [lvl for lvl in cfg.feature_levels if lvl not in taps]
    if missing:
        raise ValueError(f"{cfg.name}: no blocks at feature level(s) {missing}")
    return keras.Model(inputs, [taps[lvl] for lvl in cfg.feature_levels], name=name)


def build_classifier(
    cfg: EfficientNetConfig,
    num_classes: int | None = None,
    image_size: int | None = None,
    *,
    sync_bn: bool = False,
    drop_connect_rate: float | None = None,
    dropout_rate: float | None = None,
) -> keras.Model:
    """EfficientNet classifier: backbone -> 1x1 head conv -> pool -> dropout -> dense.

    Returns float32 logits [B, num_classes] (no softmax) under any precision policy.
    """
    classes = cfg.num_classes if num_classes is None else int(num_classes)
    if classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    size = image_size or cfg.image_size
    dropout = cfg.dropout_rate if dropout_rate is None else dropout_rate
    backbone = build_feature_extractor(cfg, size, sync_bn=sync_bn, drop_connect_rate=drop_connect_rate)
    inputs = keras.Input((size, size, 3), name="images")
    x = backbone(inputs)[-1]
    x = keras.layers.Conv2D(
        cfg.round_filters(cfg.head_filters), 1, padding="same", use_bias=False,
        kernel_initializer=conv_kernel_initializer(), name="top_conv",
    )(x)
    x = batch_norm("top_bn", sync_bn)(x)
    x = Swish(name="top_activation")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="top_dropout")(x)
    x = keras.layers.Dense(
        classes, kernel_initializer=dense_kernel_initializer(), bias_initializer="zeros",
        name="predictions",
    )(x)
    logits = float32_output("logits")(x)
    return keras.Model(inputs, logits, name=cfg.name)
