"""EfficientDet D0-D7x: EfficientNet backbone -> BiFPN -> shared class/box heads."""

from __future__ import annotations

import keras

from efficientdet.models.bifpn import build_bifpn
from efficientdet.models.configs import EfficientDetConfig, backbone_config
from efficientdet.models.efficientnet import build_feature_extractor
from efficientdet.models.heads import box_head, class_head


def check_image_size(cfg: EfficientDetConfig, image_size: int) -> int:
    """Detector inputs must halve cleanly down to the top level (P7: 128, P8: 256)."""
    size = int(image_size)
    step = 2**cfg.max_level
    if size <= 0 or size % step:
        raise ValueError(
            f"{cfg.name}: image_size {image_size} must be a positive multiple of {step} "
            f"(2^max_level, so every pyramid level has an integer size)"
        )
    return size


def build_detector(
    cfg: EfficientDetConfig,
    num_classes: int | None = None,
    image_size: int | None = None,
    *,
    sync_bn: bool = False,
    drop_connect_rate: float | None = None,
) -> keras.Model:
    """The pure detector: images [B, S, S, 3] in [0, 255] ->
    {"class_outputs": [P3..P_max: [B, H, W, A*K]], "box_outputs": [..: [B, H, W, A*4]]}."""
    classes = cfg.num_classes if num_classes is None else int(num_classes)
    if classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    size = check_image_size(cfg, image_size or cfg.image_size)
    bb_cfg = backbone_config(cfg)
    backbone = build_feature_extractor(bb_cfg, size, sync_bn=sync_bn,
                                       drop_connect_rate=drop_connect_rate)
    inputs = keras.Input((size, size, 3), name="images")
    taps = backbone(inputs)
    feats = build_bifpn(dict(zip(bb_cfg.feature_levels, taps)), cfg, sync_bn)
    outputs = {
        "class_outputs": class_head(feats, cfg, classes, sync_bn),
        "box_outputs": box_head(feats, cfg, sync_bn),
    }
    return keras.Model(inputs, outputs, name=cfg.name)
