"""The automl name mapping covers every variant, not only the fixture's D0.

automl's variable list is rebuilt here from automl's own layer tree (block/conv/BN numbering,
BiFPN node table, head layers) with the shapes automl gives them, independently of our layers;
our mapping must name exactly that set with the same shapes."""

from __future__ import annotations

import itertools

import pytest

import efficientdet  # noqa: F401  (protobuf shim before TensorFlow)
from efficientdet.models import backbone_config, build_backbone, build_model, get_config
from efficientdet.models.automl_names import NameMappingError, automl_variable_map

BN = "tpu_batch_normalization"


def _bn(out, scope, ch):
    for v in ("gamma", "beta", "moving_mean", "moving_variance"):
        out[f"{scope}/{v}"] = (ch,)


def _sep(out, scope, cin, cout):
    out[f"{scope}/depthwise_kernel"] = (3, 3, cin, 1)
    out[f"{scope}/pointwise_kernel"] = (1, 1, cin, cout)
    out[f"{scope}/bias"] = (cout,)


def automl_backbone(cfg, with_head: bool) -> dict:
    """efficientnet_model.Model: stem, blocks_N (conv2d/_1, tpu_batch_normalization/_1/_2 in
    creation order, depthwise_conv2d, se/conv2d/_1), head (conv2d, BN, dense)."""
    p, out = cfg.name, {}
    stem = cfg.round_filters(cfg.stem_filters)
    out[f"{p}/stem/conv2d/kernel"] = (3, 3, 3, stem)
    _bn(out, f"{p}/stem/{BN}", stem)
    for i, b in enumerate(cfg.blocks()):
        s = f"{p}/blocks_{i}"
        convs, bns = iter(["conv2d", "conv2d_1"]), iter([BN, f"{BN}_1", f"{BN}_2"])
        fin, fout = b["filters_in"], b["filters_out"]
        mid = fin * b["expand_ratio"]
        if b["expand_ratio"] != 1:
            out[f"{s}/{next(convs)}/kernel"] = (1, 1, fin, mid)
            _bn(out, f"{s}/{next(bns)}", mid)
        k = b["kernel_size"]
        out[f"{s}/depthwise_conv2d/depthwise_kernel"] = (k, k, mid, 1)
        _bn(out, f"{s}/{next(bns)}", mid)
        se = max(1, int(fin * b["se_ratio"]))
        out.update({f"{s}/se/conv2d/kernel": (1, 1, mid, se), f"{s}/se/conv2d/bias": (se,),
                    f"{s}/se/conv2d_1/kernel": (1, 1, se, mid), f"{s}/se/conv2d_1/bias": (mid,)})
        out[f"{s}/{next(convs)}/kernel"] = (1, 1, mid, fout)
        _bn(out, f"{s}/{next(bns)}", fout)
    if with_head:
        top, last = cfg.round_filters(cfg.head_filters), cfg.blocks()[-1]["filters_out"]
        out[f"{p}/head/conv2d/kernel"] = (1, 1, last, top)
        _bn(out, f"{p}/head/{BN}", top)
        out[f"{p}/head/dense/kernel"] = (top, cfg.num_classes)
        out[f"{p}/head/dense/bias"] = (cfg.num_classes,)
    return out


def automl_bifpn_nodes(min_level, max_level):
    """fpn_configs.bifpn_config's node table: (feat_level, inputs_offsets)."""
    ids = {lvl: [i] for i, lvl in enumerate(range(min_level, max_level + 1))}
    count = itertools.count(len(ids))
    nodes = []
    for lvl in range(max_level - 1, min_level - 1, -1):
        nodes.append((lvl, [ids[lvl][-1], ids[lvl + 1][-1]]))
        ids[lvl].append(next(count))
    for lvl in range(min_level + 1, max_level + 1):
        nodes.append((lvl, ids[lvl] + [ids[lvl - 1][-1]]))
        ids[lvl].append(next(count))
    return nodes


def automl_detector(cfg, num_classes: int) -> dict:
    """EfficientDetNet: backbone, resample_pN, fpn_cells/cell_c/fnodeI, class_net, box_net."""
    bb = backbone_config(cfg)
    out = automl_backbone(bb, with_head=False)
    taps = {}
    stride = 1
    for b in bb.blocks():
        stride += b["strides"] == 2
        taps[stride] = b["filters_out"]
    w = cfg.fpn_num_filters
    channels = [taps[lvl] for lvl in (3, 4, 5)]
    for lvl in range(6, cfg.max_level + 1):
        if channels[-1] != w:
            out[f"resample_p{lvl}/conv2d/kernel"] = (1, 1, channels[-1], w)
            out[f"resample_p{lvl}/conv2d/bias"] = (w,)
            _bn(out, f"resample_p{lvl}/bn", w)
        channels.append(w)
    n = len(cfg.levels)
    for c in range(cfg.fpn_cell_repeats):
        feats = list(channels) if c == 0 else [w] * n
        for i, (_, offsets) in enumerate(automl_bifpn_nodes(cfg.min_level, cfg.max_level)):
            s = f"fpn_cells/cell_{c}/fnode{i}"
            for k, o in enumerate(offsets):
                if feats[o] != w:
                    r = f"{s}/resample_{k}_{o}_{len(feats)}"
                    out[f"{r}/conv2d/kernel"] = (1, 1, feats[o], w)
                    out[f"{r}/conv2d/bias"] = (w,)
                    _bn(out, f"{r}/bn", w)
                if cfg.fpn_weight_method == "fastattn":
                    out[f"{s}/WSM" + ("" if k == 0 else f"_{k}")] = ()
            _sep(out, f"{s}/op_after_combine{len(feats)}/conv", w, w)
            _bn(out, f"{s}/op_after_combine{len(feats)}/bn", w)
            feats.append(w)
    anchors = cfg.num_anchors_per_location
    for head, width in (("class", num_classes), ("box", 4)):
        for r in range(cfg.box_class_repeats):
            _sep(out, f"{head}_net/{head}-{r}", w, w)
            for lvl in cfg.levels:
                _bn(out, f"{head}_net/{head}-{r}-bn-{lvl}", w)
        _sep(out, f"{head}_net/{head}-predict", w, anchors * width)
    return out


def ours(model, cfg) -> dict:
    out = {}
    for variable, names in automl_variable_map(model, cfg):
        shape = tuple(variable.shape)
        for name in names:
            assert name not in out, f"{name} mapped twice"
            out[name] = shape[1:] if len(names) > 1 else shape  # WSM: one scalar per edge
    return out


def _compare(got: dict, expected: dict):
    assert sorted(set(expected) - set(got)) == []  # automl variables we never fill
    assert sorted(set(got) - set(expected)) == []  # names automl does not have
    wrong = {k: (got[k], expected[k]) for k in expected if got[k] != expected[k]}
    assert wrong == {}


@pytest.mark.parametrize("name,size", [
    ("efficientdet-d1", 128),
    pytest.param("efficientdet-d6", 128, marks=pytest.mark.slow),  # "sum" fusion: no WSM
    pytest.param("efficientdet-d7x", 256, marks=pytest.mark.slow),  # P3-P8, B7
])
def test_detector_mapping_is_automls_variable_list(name, size):
    cfg = get_config(name)
    model = build_model(name, num_classes=90, image_size=size)
    _compare(ours(model, cfg), automl_detector(cfg, 90))


def test_efficientnet_classifier_and_backbone_mapping():
    cfg = get_config("efficientnet-b3")
    _compare(ours(build_model("efficientnet-b3", image_size=64), cfg),
             automl_backbone(cfg, with_head=True))
    _compare(ours(build_backbone("efficientnet-b3", 64), cfg),
             automl_backbone(cfg, with_head=False))


def test_unknown_layer_is_named():
    import keras

    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1, name="mystery")(inputs))
    with pytest.raises(NameMappingError, match="mystery"):
        automl_variable_map(model, get_config("efficientnet-b0"))


def write_automl_checkpoint(prefix, model, cfg, seed=0) -> dict:
    """An automl-style TF1 checkpoint of MODEL's variables under automl names, with
    ExponentialMovingAverage shadows (raw + 1); returns {automl name: EMA value}."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    values = {}
    for variable, names in automl_variable_map(model, cfg):
        shape = tuple(variable.shape)[1:] if len(names) > 1 else tuple(variable.shape)
        for name in names:
            values[name] = rng.normal(0, 0.1, shape).astype("float32")
    tensors = {**values, **{f"{k}/ExponentialMovingAverage": v + 1 for k, v in values.items()},
               "global_step": np.int64(7)}
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=list(tensors),
                      shape_and_slices=[""] * len(tensors),
                      tensors=[tf.constant(v) for v in tensors.values()])
    return {k: v + 1 for k, v in values.items()}


@pytest.mark.slow
def test_efficientnet_checkpoint_imports_as_classifier_and_as_backbone(tmp_path):
    import numpy as np

    from efficientdet.cli import main
    from efficientdet.models.artifact import load_artifact
    from efficientdet.models.automl_import import load_automl_weights

    cfg = get_config("efficientnet-b0")
    (tmp_path / "efficientnet-b0").mkdir()
    ema = write_automl_checkpoint(tmp_path / "efficientnet-b0" / "model.ckpt",
                                  build_model("efficientnet-b0", image_size=64), cfg)
    assert main(["models", "import", "--from", "automl", "--model", "efficientnet-b0",
                 "--weights", str(tmp_path / "efficientnet-b0"), "--output",
                 str(tmp_path / "cls"), "--image-size", "64"]) == 0
    classifier, meta = load_artifact(str(tmp_path / "cls"))
    assert meta.task == "classification" and meta.num_classes == 1000
    dense = classifier.get_layer("predictions").weights[1]
    assert np.array_equal(np.asarray(dense), ema["efficientnet-b0/head/dense/bias"])

    detector = build_model("efficientdet-d0", num_classes=4, image_size=128)
    backbone = detector.get_layer("backbone")
    report = load_automl_weights(backbone, cfg, str(tmp_path / "efficientnet-b0"),
                                 allow_unused=r"/head/")
    assert report.variables == len(backbone.weights)
    assert len(report.unused_allowed) == 2 * 7  # head conv, BN (4), dense (2) + shadows
    stem = np.asarray(backbone.get_layer("stem_conv").weights[0])
    assert np.array_equal(stem, ema["efficientnet-b0/stem/conv2d/kernel"])
