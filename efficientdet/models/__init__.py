"""The model zoo: EfficientNet B0-B7 and EfficientDet D0-D7x as pure Keras 3 models.

Every model takes float32 RGB in [0, 255], [B, S, S, 3], and normalises internally.
Variants live in `configs.py`; this module is the public entry point:

    list_models(), get_config(name), build_model(name, ...), build_backbone(name, ...)
"""

from __future__ import annotations

from efficientdet.models.configs import (
    CONFIGS,
    EfficientDetConfig,
    EfficientNetConfig,
    backbone_config,
    get_config,
    list_models,
    num_anchors,
)

__all__ = [
    "CONFIGS",
    "EfficientDetConfig",
    "EfficientNetConfig",
    "backbone_config",
    "build_backbone",
    "build_model",
    "get_config",
    "list_models",
    "num_anchors",
]


def build_model(
    name: str,
    num_classes: int | None = None,
    image_size: int | None = None,
    *,
    sync_bn: bool = False,
    drop_connect_rate: float | None = None,
    dropout_rate: float | None = None,
):
    """Build a variant by name. Defaults: 1000 classes for EfficientNet, 90 for EfficientDet,
    the variant's native image size. `sync_bn` synchronises BN statistics across Horovod
    ranks in training. EfficientNets return float32 logits [B, K]; EfficientDets return
    {"class_outputs": [...], "box_outputs": [...]} (one float32 tensor per level)."""
    cfg = get_config(name)
    if isinstance(cfg, EfficientDetConfig):
        if dropout_rate is not None:
            raise ValueError(f"{cfg.name}: dropout_rate applies to EfficientNet classifiers only")
        from efficientdet.models.efficientdet import build_detector

        return build_detector(cfg, num_classes, image_size, sync_bn=sync_bn,
                              drop_connect_rate=drop_connect_rate)
    from efficientdet.models.efficientnet import build_classifier

    return build_classifier(cfg, num_classes, image_size, sync_bn=sync_bn,
                            drop_connect_rate=drop_connect_rate, dropout_rate=dropout_rate)


def build_backbone(
    name: str,
    image_size: int | None = None,
    *,
    sync_bn: bool = False,
    drop_connect_rate: float | None = None,
):
    """The multi-level feature extractor of a variant (an EfficientNet, or an EfficientDet's
    backbone): images in [0, 255] -> [C3, C4, C5] at strides 8/16/32."""
    from efficientdet.models.efficientnet import build_feature_extractor

    cfg = get_config(name)
    size = image_size or cfg.image_size
    return build_feature_extractor(backbone_config(cfg), size, sync_bn=sync_bn,
                                   drop_connect_rate=drop_connect_rate)
