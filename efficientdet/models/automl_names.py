"""google/automl's variable names for this project's models, derived from our structure.

automl names every weight by its place in its own Keras layer tree (``efficientnet-b0/blocks_3/
conv2d/kernel``, ``fpn_cells/cell_0/fnode2/resample_0_2_7/conv2d/kernel``, ``class_net/
class-1-bn-4/gamma``). Our layer names encode the same facts (block, level, cell, node, input
index), so each of our variables gets its automl name by rule, not by a table; a layer no rule
covers is an error, which keeps the mapping complete for every variant.
"""

from __future__ import annotations

import re

import keras

from efficientdet.models.configs import (
    EfficientDetConfig,
    EfficientNetConfig,
    backbone_config,
    bifpn_nodes,
)

BN = "tpu_batch_normalization"


class NameMappingError(ValueError):
    """A layer of the model has no automl counterpart (a rule is missing)."""


def _short(variable) -> str:
    """A Keras 3 variable's own name: 'kernel', 'gamma', 'depthwise_kernel', ..."""
    return variable.path.rsplit("/", 1)[-1]


def _block_names(cfg: EfficientNetConfig) -> dict[str, dict]:
    """Our MBConv block name -> {"index": automl block number, "expand": has an expand conv}."""
    return {b["name"]: {"index": i, "expand": b["expand_ratio"] != 1}
            for i, b in enumerate(cfg.blocks())}


def backbone_layer_name(layer_name: str, cfg: EfficientNetConfig) -> str:
    """automl's scope (below ``efficientnet-bN/``) of a backbone or classifier-top layer."""
    fixed = {"stem_conv": "stem/conv2d", "stem_bn": f"stem/{BN}", "top_conv": "head/conv2d",
             "top_bn": f"head/{BN}", "predictions": "head/dense"}
    if layer_name in fixed:
        return fixed[layer_name]
    m = re.fullmatch(r"(block\d+[a-z]+)_(expand_conv|expand_bn|dwconv|bn|se_reduce|se_expand|"
                     r"project_conv|project_bn)", layer_name)
    blocks = _block_names(cfg)
    if not m or m.group(1) not in blocks:
        raise NameMappingError(f"backbone layer {layer_name!r}: no automl name rule")
    block, part = blocks[m.group(1)], m.group(2)
    # automl numbers convs and BNs within a block in creation order: the expand conv and its
    # BN exist only when expand_ratio != 1 and shift the later ones by one.
    shift = 1 if block["expand"] else 0
    bn = [BN, f"{BN}_1", f"{BN}_2"]
    scope = {
        "expand_conv": "conv2d", "expand_bn": bn[0],
        "dwconv": "depthwise_conv2d", "bn": bn[shift],
        "se_reduce": "se/conv2d", "se_expand": "se/conv2d_1",
        "project_conv": "conv2d_1" if shift else "conv2d", "project_bn": bn[1 + shift],
    }[part]
    return f"blocks_{block['index']}/{scope}"


def detector_layer_name(layer_name: str, cfg: EfficientDetConfig) -> str:
    """automl's scope of a BiFPN or head layer (P6+ resampling, fusion nodes, class/box nets)."""
    n_levels = len(cfg.levels)
    m = re.fullmatch(r"resample_p(\d+)_(conv|bn)", layer_name)
    if m:
        return f"resample_p{m.group(1)}/{'conv2d' if m.group(2) == 'conv' else 'bn'}"
    m = re.fullmatch(r"fpn_cell(\d+)_node(\d+)_input(\d+)_(conv|bn)", layer_name)
    if m:
        cell, node, k = int(m.group(1)), int(m.group(2)), int(m.group(3))
        offset = bifpn_nodes(cfg.min_level, cfg.max_level)[node]["inputs"][k]
        # automl names a node's resampler by (input index, input id, features so far)
        return (f"fpn_cells/cell_{cell}/fnode{node}/resample_{k}_{offset}_{n_levels + node}/"
                f"{'conv2d' if m.group(4) == 'conv' else 'bn'}")
    m = re.fullmatch(r"fpn_cell(\d+)_node(\d+)_(conv|bn|fusion)", layer_name)
    if m:
        cell, node, part = int(m.group(1)), int(m.group(2)), m.group(3)
        base = f"fpn_cells/cell_{cell}/fnode{node}"
        if part == "fusion":
            return base
        return f"{base}/op_after_combine{n_levels + node}/{part}"
    m = re.fullmatch(r"(class|box)_net_(conv(\d+)|bn(\d+)_p(\d+)|predict)", layer_name)
    if m:
        head = m.group(1)
        if m.group(3) is not None:
            return f"{head}_net/{head}-{m.group(3)}"
        if m.group(4) is not None:
            return f"{head}_net/{head}-{m.group(4)}-bn-{m.group(5)}"
        return f"{head}_net/{head}-predict"
    raise NameMappingError(f"detector layer {layer_name!r}: no automl name rule")


def _variable_names(layer, scope: str) -> list[tuple[object, tuple[str, ...]]]:
    """(our variable, automl names) for one layer; fusion weights are one vector here and one
    scalar per input edge (WSM, WSM_1, ...) in automl."""
    out = []
    for v in layer.weights:
        short = _short(v)
        if short == "fusion_weights":
            names = tuple(f"{scope}/WSM" + ("" if i == 0 else f"_{i}") for i in range(v.shape[0]))
        elif isinstance(layer, keras.layers.DepthwiseConv2D) and short == "kernel":
            names = (f"{scope}/depthwise_kernel",)
        else:
            names = (f"{scope}/{short}",)
        out.append((v, names))
    return out


def automl_variable_map(model: keras.Model, cfg) -> list[tuple[object, tuple[str, ...]]]:
    """Every variable of `model` (an EfficientDet, EfficientNet classifier or backbone built by
    `models.build_model`/`build_backbone` for `cfg`) with its automl name(s), in model order."""
    bb_cfg = backbone_config(cfg)
    prefix = bb_cfg.name
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):  # the nested backbone
            for inner in layer.layers:
                if inner.weights:
                    scope = f"{prefix}/{backbone_layer_name(inner.name, bb_cfg)}"
                    out += _variable_names(inner, scope)
            continue
        if not layer.weights:
            continue
        if isinstance(cfg, EfficientDetConfig):
            scope = detector_layer_name(layer.name, cfg)
        else:
            scope = f"{prefix}/{backbone_layer_name(layer.name, bb_cfg)}"
        out += _variable_names(layer, scope)
    return out
