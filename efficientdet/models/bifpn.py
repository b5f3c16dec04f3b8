"""BiFPN: the extra pyramid levels and the repeated bidirectional fusion cells.

The node graph is computed from (min_level, max_level), so P3-P7 and D7x's P3-P8 come from the
same code: top-down P_l' = f(P_l, P_{l+1}'), then bottom-up P_l'' = f(P_l, P_l', P_{l-1}'').
"""

from __future__ import annotations

import keras

from efficientdet.models.configs import EfficientDetConfig, bifpn_nodes
from efficientdet.models.layers import Swish, WeightedFusion, batch_norm

__all__ = ["bifpn_cell", "bifpn_nodes", "build_bifpn", "extra_levels"]


def _project(x, channels: int, name: str, sync_bn: bool):
    """1x1 conv (bias) + BN when the channel count differs from the BiFPN width."""
    if x.shape[-1] == channels:
        return x
    x = keras.layers.Conv2D(channels, 1, padding="same", name=name + "_conv")(x)
    return batch_norm(name + "_bn", sync_bn)(x)


def _resize(x, from_level: int, to_level: int, name: str):
    """Nearest-neighbour upsampling or 3x3/2 'same' max-pooling between adjacent levels."""
    if to_level < from_level:
        return keras.layers.UpSampling2D(2 ** (from_level - to_level), interpolation="nearest",
                                         name=name + "_up")(x)
    for step in range(to_level - from_level):
        x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name=f"{name}_down{step}")(x)
    return x


def extra_levels(features: dict, cfg: EfficientDetConfig, sync_bn: bool) -> dict:
    """P6..P_max from the top backbone level: P6 = pool(BN(conv1x1(C5))), P7 = pool(P6), ..."""
    feats = dict(features)
    top = max(feats)
    for level in range(top + 1, cfg.max_level + 1):
        x = _project(feats[level - 1], cfg.fpn_num_filters, f"resample_p{level}", sync_bn)
        feats[level] = _resize(x, level - 1, level, f"resample_p{level}")
    return feats


def bifpn_cell(features: dict, cfg: EfficientDetConfig, cell: int, sync_bn: bool) -> dict:
    """One BiFPN cell: {level: tensor} in, {level: tensor} out (all fpn_num_filters wide)."""
    levels = list(range(cfg.min_level, cfg.max_level + 1))
    feats = [(level, features[level]) for level in levels]
    width = cfg.fpn_num_filters
    for index, node in enumerate(bifpn_nodes(cfg.min_level, cfg.max_level)):
        p = f"fpn_cell{cell}_node{index}"
        target = node["level"]
        inputs = []
        for k, fid in enumerate(node["inputs"]):
            level, x = feats[fid]
            # In the first cell, raw backbone levels are re-projected by every node that uses them.
            x = _project(x, width, f"{p}_input{k}", sync_bn)
            inputs.append(_resize(x, level, target, f"{p}_input{k}"))
        x = WeightedFusion(cfg.fpn_weight_method, name=p + "_fusion")(inputs)
        x = Swish(name=p + "_activation")(x)
        x = keras.layers.SeparableConv2D(width, 3, padding="same", use_bias=True, name=p + "_conv")(x)
        x = batch_norm(p + "_bn", sync_bn)(x)
        feats.append((target, x))
    out = {}
    for level, x in reversed(feats):
        out.setdefault(level, x)
    return {level: out[level] for level in levels}


def build_bifpn(features: dict, cfg: EfficientDetConfig, sync_bn: bool = False) -> dict:
    """Backbone levels {3: C3, 4: C4, 5: C5} -> fused {3: P3, ..., max_level: P_max}."""
    feats = extra_levels(features, cfg, sync_bn)
    for cell in range(cfg.fpn_cell_repeats):
        feats = bifpn_cell(feats, cfg, cell, sync_bn)
    return feats
