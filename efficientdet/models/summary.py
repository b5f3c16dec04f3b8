"""What a variant costs: parameters, multiply-adds, anchors and levels.

GMACs are counted analytically from the built graph: every call of a Conv2D, DepthwiseConv2D,
SeparableConv2D or Dense layer contributes output-locations x kernel x input/output channels
multiply-adds (shared head convs count once per level they run on). BN, activations, pooling
and fusion are not multiply-accumulates and are left out, as in the papers' tables.
"""

from __future__ import annotations

import math

from efficientdet.models.configs import (
    EfficientDetConfig,
    EfficientNetConfig,
    backbone_config,
    bifpn_nodes,
    feature_sizes,
    get_config,
    num_anchors,
)


def _prod(values) -> int:
    return int(math.prod(int(v) for v in values))


def _call_macs(layer, node) -> int:
    """Multiply-adds of one call of a layer (0 for layers without a kernel)."""
    import keras

    if not node.input_tensors or not node.output_tensors:
        return 0
    in_shape = node.input_tensors[0].shape
    out_shape = node.output_tensors[0].shape
    if isinstance(layer, keras.layers.SeparableConv2D):
        kh, kw = layer.kernel_size
        cin = in_shape[-1]
        mid = cin * layer.depth_multiplier
        locations = _prod(out_shape[1:-1])
        return locations * (kh * kw * mid + mid * out_shape[-1])
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kh, kw = layer.kernel_size
        return _prod(out_shape[1:]) * kh * kw
    if isinstance(layer, keras.layers.Conv2D):
        kh, kw = layer.kernel_size
        return _prod(out_shape[1:]) * kh * kw * in_shape[-1] // layer.groups
    if isinstance(layer, keras.layers.Dense):
        return _prod(out_shape[1:]) * in_shape[-1]
    return 0


def count_macs(model) -> int:
    """Multiply-adds of one forward pass of one image (batch 1), nested models included."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            calls = sum(1 for n in layer._inbound_nodes if not n.is_input)
            total += count_macs(layer) * max(calls, 1)
            continue
        for node in layer._inbound_nodes:
            total += _call_macs(layer, node)
    return total


def count_params(weights) -> int:
    return sum(_prod(w.shape) for w in weights)


def _bn(channels: int) -> tuple[int, int]:
    return 2 * channels, 2 * channels  # gamma/beta trainable, moving mean/variance not


def tap_channels(cfg: EfficientNetConfig) -> dict[int, int]:
    """Channels of the backbone's C-level outputs (last block at each stride)."""
    level, out = 1, {}
    for block in cfg.blocks():
        level += block["strides"] == 2
        out[level] = block["filters_out"]
    return {lvl: out[lvl] for lvl in cfg.feature_levels}


def analytic_params(name: str, num_classes: int | None = None) -> tuple[int, int]:
    """(trainable, total) parameter counts computed from the config alone, without building
    the model (instant, used by `effdet models list`; tests check it equals the built model)."""
    cfg = get_config(name)
    bb = backbone_config(cfg)
    train = fixed = 0

    def add(weights: int = 0, bn: int = 0):
        nonlocal train, fixed
        t, f = _bn(bn)
        train += weights + t
        fixed += f

    stem = bb.round_filters(bb.stem_filters)
    add(27 * stem, stem)
    for b in bb.blocks():
        fi, fo, k = b["filters_in"], b["filters_out"], b["kernel_size"]
        mid = fi * b["expand_ratio"]
        if b["expand_ratio"] != 1:
            add(fi * mid, mid)
        add(k * k * mid, mid)
        if 0 < b["se_ratio"] <= 1:
            r = max(1, int(fi * b["se_ratio"]))
            add(mid * r + r + r * mid + mid)
        add(mid * fo, fo)
    if not isinstance(cfg, EfficientDetConfig):
        classes = cfg.num_classes if num_classes is None else num_classes
        last = bb.blocks()[-1]["filters_out"]
        head = bb.round_filters(bb.head_filters)
        add(last * head, head)
        add(head * classes + classes)
        return train, train + fixed

    classes = cfg.num_classes if num_classes is None else num_classes
    width = cfg.fpn_num_filters
    channels = dict(tap_channels(bb))
    for level in range(max(channels) + 1, cfg.max_level + 1):
        if channels[level - 1] != width:
            add(channels[level - 1] * width + width, width)
        channels[level] = width
    sepconv = 9 * width + width * width + width
    for cell in range(cfg.fpn_cell_repeats):
        feats = [channels[lvl] if cell == 0 else width for lvl in cfg.levels]
        for node in bifpn_nodes(cfg.min_level, cfg.max_level):
            for fid in node["inputs"]:
                if fid < len(feats) and feats[fid] != width:
                    add(feats[fid] * width + width, width)
            if cfg.fpn_weight_method == "fastattn":
                add(len(node["inputs"]))
            add(sepconv, width)
    anchors = cfg.num_anchors_per_location
    for outputs in (anchors * classes, anchors * 4):
        add(cfg.box_class_repeats * sepconv)
        for _ in range(cfg.box_class_repeats * len(cfg.levels)):
            add(bn=width)
        add(9 * width + width * outputs + outputs)
    return train, train + fixed


def describe_model(model, name: str, image_size: int) -> dict:
    """The description of an already-built model (see `describe`)."""
    cfg = get_config(name)
    out = {
        "name": cfg.name,
        "task": cfg.task,
        "input_size": int(image_size),
        "num_classes": None,
        "trainable_params": count_params(model.trainable_weights),
        "total_params": count_params(model.weights),
        "gmacs": round(count_macs(model) / 1e9, 3),
    }
    if isinstance(cfg, EfficientDetConfig):
        sizes = feature_sizes(cfg, image_size)
        per_loc = cfg.num_anchors_per_location
        out["num_classes"] = int(model.output["class_outputs"][0].shape[-1]) // per_loc
        out["num_anchors"] = num_anchors(cfg, image_size)
        out["levels"] = [
            {"level": lvl, "stride": 2**lvl, "size": s, "anchors": s * s * per_loc}
            for lvl, s in sizes.items()
        ]
        out["backbone"] = cfg.backbone
    else:
        bb = backbone_config(cfg)
        out["num_classes"] = int(model.output.shape[-1])
        out["num_anchors"] = None
        out["levels"] = [
            {"level": lvl, "stride": 2**lvl, "size": -(-int(image_size) // 2**lvl)}
            for lvl in bb.feature_levels
        ]
    return out


def describe(name: str, num_classes: int | None = None, image_size: int | None = None) -> dict:
    """Build a variant and report name, input_size, trainable_params, total_params (incl. BN
    moving statistics), gmacs (per image), num_anchors (None for classifiers) and levels."""
    import keras

    from efficientdet.models import build_model

    cfg = get_config(name)
    size = int(image_size or cfg.image_size)
    model = build_model(cfg.name, num_classes, size)
    try:
        return describe_model(model, cfg.name, size)
    finally:
        del model
        keras.backend.clear_session()
