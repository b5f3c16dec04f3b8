"""The one table of model variants: EfficientNet B0-B7 and EfficientDet D0-D7x.

Variants are data: every builder reads these records and nothing else, so adding a variant
is adding a row. Numbers follow the EfficientNet/EfficientDet papers and google/automl
(see /work/shared/reference/efficientdet-spec.md).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

# BN and initialisation constants shared by every variant.
BN_MOMENTUM = 0.99
BN_EPSILON = 1e-3
CLASS_PRIOR = 0.01  # class-output bias = -log((1 - p) / p)
# ImageNet statistics in [0, 255] RGB: models normalise their input with them, and pre-processing
# pads images with the mean colour, which the normalisation maps to 0 (as automl pads).
IMAGENET_MEAN_RGB = (0.485 * 255.0, 0.456 * 255.0, 0.406 * 255.0)
IMAGENET_STD_RGB = (0.229 * 255.0, 0.224 * 255.0, 0.225 * 255.0)


@dataclass(frozen=True)
class BlockSpec:
    """One MBConv stage of the B0 baseline (EfficientNet paper, Table 1)."""

    expand_ratio: int
    kernel_size: int
    strides: int
    repeats: int
    filters_in: int
    filters_out: int
    se_ratio: float = 0.25


B0_STAGES: tuple[BlockSpec, ...] = (
    BlockSpec(1, 3, 1, 1, 32, 16),
    BlockSpec(6, 3, 2, 2, 16, 24),
    BlockSpec(6, 5, 2, 2, 24, 40),
    BlockSpec(6, 3, 2, 3, 40, 80),
    BlockSpec(6, 5, 1, 3, 80, 112),
    BlockSpec(6, 5, 2, 4, 112, 192),
    BlockSpec(6, 3, 1, 1, 192, 320),
)


@dataclass(frozen=True)
class EfficientNetConfig:
    """An EfficientNet variant: compound-scaling coefficients plus the B0 stage table."""

    name: str
    width: float
    depth: float
    image_size: int
    dropout_rate: float
    drop_connect_rate: float = 0.2
    depth_divisor: int = 8
    stem_filters: int = 32
    head_filters: int = 1280
    stages: tuple[BlockSpec, ...] = B0_STAGES
    num_classes: int = 1000
    feature_levels: tuple[int, ...] = (3, 4, 5)  # C3/C4/C5 taps (strides 8/16/32)
    task: str = "classification"

    def round_filters(self, filters: int) -> int:
        """Scale a channel count by width and round to the depth divisor (never down >10%)."""
        scaled = filters * self.width
        divisor = self.depth_divisor
        rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
        if rounded < 0.9 * scaled:
            rounded += divisor
        return rounded

    def round_repeats(self, repeats: int) -> int:
        return math.ceil(self.depth * repeats)

    def blocks(self) -> list[dict]:
        """The expanded block list: one dict per MBConv block, in order, with its name."""
        out: list[dict] = []
        for stage_index, stage in enumerate(self.stages):
            filters_in = self.round_filters(stage.filters_in)
            filters_out = self.round_filters(stage.filters_out)
            for j in range(self.round_repeats(stage.repeats)):
                out.append({
                    "name": f"block{stage_index + 1}{chr(ord('a') + j)}",
                    "expand_ratio": stage.expand_ratio,
                    "kernel_size": stage.kernel_size,
                    "strides": stage.strides if j == 0 else 1,
                    "filters_in": filters_in if j == 0 else filters_out,
                    "filters_out": filters_out,
                    "se_ratio": stage.se_ratio,
                })
        return out


@dataclass(frozen=True)
class EfficientDetConfig:
    """An EfficientDet variant: backbone name, BiFPN size, head depth, anchors."""

    name: str
    backbone: str
    image_size: int
    fpn_num_filters: int
    fpn_cell_repeats: int
    box_class_repeats: int
    fpn_weight_method: str  # "fastattn" (fast normalized fusion) or "sum"
    anchor_scale: float = 4.0
    min_level: int = 3
    max_level: int = 7
    num_scales: int = 3
    aspect_ratios: tuple[float, ...] = (1.0, 2.0, 0.5)
    num_classes: int = 90
    # Backbone stochastic depth. automl's EfficientDet turns it off for B0 backbones (D0) and
    # keeps the backbone's own 0.2 (survival_prob 0.8) for the others.
    drop_connect_rate: float = 0.2
    task: str = "detection"

    @property
    def num_anchors_per_location(self) -> int:
        return self.num_scales * len(self.aspect_ratios)

    @property
    def levels(self) -> tuple[int, ...]:
        return tuple(range(self.min_level, self.max_level + 1))


_EFFICIENTNETS = (
    # name, width, depth, resolution, dropout
    ("efficientnet-b0", 1.0, 1.0, 224, 0.2),
    ("efficientnet-b1", 1.0, 1.1, 240, 0.2),
    ("efficientnet-b2", 1.1, 1.2, 260, 0.3),
    ("efficientnet-b3", 1.2, 1.4, 300, 0.3),
    ("efficientnet-b4", 1.4, 1.8, 380, 0.4),
    ("efficientnet-b5", 1.6, 2.2, 456, 0.4),
    ("efficientnet-b6", 1.8, 2.6, 528, 0.5),
    ("efficientnet-b7", 2.0, 3.1, 600, 0.5),
)

_EFFICIENTDETS = (
    # name, backbone, input, BiFPN width, BiFPN cells, head repeats, fusion, extra
    ("efficientdet-d0", "efficientnet-b0", 512, 64, 3, 3, "fastattn", {"drop_connect_rate": 0.0}),
    ("efficientdet-d1", "efficientnet-b1", 640, 88, 4, 3, "fastattn", {}),
    ("efficientdet-d2", "efficientnet-b2", 768, 112, 5, 3, "fastattn", {}),
    ("efficientdet-d3", "efficientnet-b3", 896, 160, 6, 4, "fastattn", {}),
    ("efficientdet-d4", "efficientnet-b4", 1024, 224, 7, 4, "fastattn", {}),
    ("efficientdet-d5", "efficientnet-b5", 1280, 288, 7, 4, "fastattn", {}),
    ("efficientdet-d6", "efficientnet-b6", 1280, 384, 8, 5, "sum", {}),
    ("efficientdet-d7", "efficientnet-b6", 1536, 384, 8, 5, "sum", {"anchor_scale": 5.0}),
    ("efficientdet-d7x", "efficientnet-b7", 1536, 384, 8, 5, "sum", {"max_level": 8}),
)

CONFIGS: dict[str, EfficientNetConfig | EfficientDetConfig] = {}
for _name, _w, _d, _res, _drop in _EFFICIENTNETS:
    CONFIGS[_name] = EfficientNetConfig(_name, _w, _d, _res, _drop)
for _name, _bb, _res, _ch, _cells, _reps, _fusion, _extra in _EFFICIENTDETS:
    CONFIGS[_name] = EfficientDetConfig(_name, _bb, _res, _ch, _cells, _reps, _fusion, **_extra)


def list_models() -> list[str]:
    """All variant names, EfficientNets first, in table order."""
    return list(CONFIGS)


def get_config(name: str, **overrides) -> EfficientNetConfig | EfficientDetConfig:
    """The config of a variant by name (case-insensitive), optionally with fields replaced."""
    key = str(name).strip().lower()
    if key not in CONFIGS:
        raise ValueError(
            f"unknown model {name!r}; known models: {', '.join(CONFIGS)}"
        )
    cfg = CONFIGS[key]
    if overrides:
        fields = {f.name for f in dataclasses.fields(cfg)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(f"unknown config field(s) for {key}: {', '.join(unknown)}")
        cfg = dataclasses.replace(cfg, **overrides)
    return cfg


def backbone_config(cfg: EfficientNetConfig | EfficientDetConfig) -> EfficientNetConfig:
    """The EfficientNet config a model's backbone is built from."""
    if isinstance(cfg, EfficientDetConfig):
        return dataclasses.replace(get_config(cfg.backbone), drop_connect_rate=cfg.drop_connect_rate)
    return cfg


def feature_sizes(cfg: EfficientDetConfig, image_size: int) -> dict[int, int]:
    """Spatial size of each pyramid level for a square input (ceil division, as the anchors)."""
    return {level: -(-image_size // 2**level) for level in cfg.levels}


def num_anchors(cfg: EfficientDetConfig, image_size: int) -> int:
    """Anchors per image: locations over all levels times anchors per location."""
    return sum(s * s for s in feature_sizes(cfg, image_size).values()) * cfg.num_anchors_per_location


def bifpn_nodes(min_level: int, max_level: int) -> list[dict]:
    """The fusion nodes of one cell, in evaluation order.

    Each node is {"level": l, "inputs": [ids]}, where ids index the running list of features
    that starts with the cell inputs P_min..P_max (ids 0..n-1) and grows by one per node.
    """
    last = {level: i for i, level in enumerate(range(min_level, max_level + 1))}
    every = {level: [i] for level, i in last.items()}
    nodes = []
    next_id = len(last)
    for level in range(max_level - 1, min_level - 1, -1):  # top-down
        nodes.append({"level": level, "inputs": [last[level], last[level + 1]]})
        last[level] = next_id
        every[level].append(next_id)
        next_id += 1
    for level in range(min_level + 1, max_level + 1):  # bottom-up
        nodes.append({"level": level, "inputs": every[level] + [last[level - 1]]})
        last[level] = next_id
        every[level].append(next_id)
        next_id += 1
    return nodes
