"""Fast unit tests of the model table, the BiFPN graph and the small layers."""

from __future__ import annotations

import math

import numpy as np
import pytest

import efficientdet  # noqa: F401  (protobuf shim before TensorFlow)
from efficientdet.models import configs
from efficientdet.models.bifpn import bifpn_nodes
from efficientdet.models.configs import get_config, list_models, num_anchors


def test_list_models_has_every_variant_in_table_order():
    names = list_models()
    assert names[:8] == [f"efficientnet-b{i}" for i in range(8)]
    assert names[8:] == [f"efficientdet-d{i}" for i in range(8)] + ["efficientdet-d7x"]


def test_get_config_is_case_insensitive_and_rejects_unknown_names():
    assert get_config("EfficientDet-D0").name == "efficientdet-d0"
    with pytest.raises(ValueError, match="unknown model 'efficientdet-d9'.*efficientdet-d7x"):
        get_config("efficientdet-d9")
    with pytest.raises(ValueError, match="unknown config field"):
        get_config("efficientdet-d0", not_a_field=1)
    assert get_config("efficientdet-d0", num_classes=3).num_classes == 3


@pytest.mark.parametrize(
    "name, stem, head, c3, c4, c5, blocks",
    [
        # channel widths of the taps as keras.applications / automl build them
        ("efficientnet-b0", 32, 1280, 40, 112, 320, 16),
        ("efficientnet-b3", 40, 1536, 48, 136, 384, 26),
        ("efficientnet-b6", 56, 2304, 72, 200, 576, 45),
        ("efficientnet-b7", 64, 2560, 80, 224, 640, 55),
    ],
)
def test_compound_scaling_rounds_like_the_reference(name, stem, head, c3, c4, c5, blocks):
    cfg = get_config(name)
    assert cfg.round_filters(cfg.stem_filters) == stem
    assert cfg.round_filters(cfg.head_filters) == head
    assert [cfg.round_filters(f) for f in (40, 112, 320)] == [c3, c4, c5]
    assert len(cfg.blocks()) == blocks


def test_block_list_strides_names_and_filters():
    blocks = get_config("efficientnet-b0").blocks()
    assert [b["name"] for b in blocks[:4]] == ["block1a", "block2a", "block2b", "block3a"]
    assert [b["strides"] for b in blocks] == [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1]
    assert blocks[2]["filters_in"] == blocks[2]["filters_out"] == 24  # repeats keep width


def test_detector_table_matches_the_paper():
    expect = {  # input, backbone, width, cells, head repeats, fusion
        "efficientdet-d0": (512, "efficientnet-b0", 64, 3, 3, "fastattn"),
        "efficientdet-d3": (896, "efficientnet-b3", 160, 6, 4, "fastattn"),
        "efficientdet-d5": (1280, "efficientnet-b5", 288, 7, 4, "fastattn"),
        "efficientdet-d6": (1280, "efficientnet-b6", 384, 8, 5, "sum"),
        "efficientdet-d7": (1536, "efficientnet-b6", 384, 8, 5, "sum"),
        "efficientdet-d7x": (1536, "efficientnet-b7", 384, 8, 5, "sum"),
    }
    for name, row in expect.items():
        c = get_config(name)
        assert (c.image_size, c.backbone, c.fpn_num_filters, c.fpn_cell_repeats,
                c.box_class_repeats, c.fpn_weight_method) == row
    assert get_config("efficientdet-d7").anchor_scale == 5.0
    assert get_config("efficientdet-d7x").levels == (3, 4, 5, 6, 7, 8)
    assert get_config("efficientdet-d0").num_anchors_per_location == 9


@pytest.mark.parametrize(
    "name, size, anchors",
    [
        ("efficientdet-d0", 512, 49104),
        ("efficientdet-d1", 640, 76725),
        ("efficientdet-d3", 896, 150381),
        ("efficientdet-d7", 1536, 441936),
    ],
)
def test_anchor_counts(name, size, anchors):
    assert num_anchors(get_config(name), size) == anchors


def test_bifpn_nodes_p3_p7_is_the_paper_graph():
    # ids 0..4 = P3..P7 inputs; 5.. the nodes in order (automl's bifpn config for 3-7)
    nodes = [(n["level"], n["inputs"]) for n in bifpn_nodes(3, 7)]
    assert nodes == [
        (6, [3, 4]), (5, [2, 5]), (4, [1, 6]), (3, [0, 7]),
        (4, [1, 7, 8]), (5, [2, 6, 9]), (6, [3, 5, 10]), (7, [4, 11]),
    ]


def test_bifpn_nodes_generalise_to_other_level_ranges():
    # automl's dynamic config for levels 2-7 (efficientdet_arch_test.py)
    nodes = [(n["level"], n["inputs"]) for n in bifpn_nodes(2, 7)]
    assert nodes == [
        (6, [4, 5]), (5, [3, 6]), (4, [2, 7]), (3, [1, 8]), (2, [0, 9]),
        (3, [1, 9, 10]), (4, [2, 8, 11]), (5, [3, 7, 12]), (6, [4, 6, 13]), (7, [5, 14]),
    ]
    assert len(bifpn_nodes(3, 8)) == 10  # D7x: P3-P8


def test_fast_normalized_fusion_and_sum():
    from efficientdet.models.layers import WeightedFusion

    a = np.array([[1.0, 3.0]], "float32")
    fast = WeightedFusion("fastattn")
    np.testing.assert_allclose(np.asarray(fast([a, a])), [[0.99995, 2.99985]], rtol=1e-6)
    fast.fusion_weights.assign([3.0, -1.0])  # relu drops the negative edge
    np.testing.assert_allclose(np.asarray(fast([a, 2 * a])), 3 * a / (3 + 1e-4), rtol=1e-6)
    assert fast.count_params() == 2
    summed = WeightedFusion("sum")
    np.testing.assert_allclose(np.asarray(summed([a, a, a])), 3 * a)
    assert summed.count_params() == 0
    with pytest.raises(ValueError, match="fusion method"):
        WeightedFusion("max")


def test_stochastic_depth_drops_whole_samples_and_rescales():
    from efficientdet.models.layers import StochasticDepth

    x = np.ones((2000, 2, 2, 3), "float32")
    layer = StochasticDepth(0.25, seed=1)
    np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)
    y = np.asarray(layer(x, training=True))
    per_sample = y.reshape(2000, -1)
    np.testing.assert_allclose(np.unique(per_sample), [0.0, 1.0 / 0.75], rtol=1e-6)
    assert np.all(per_sample.min(axis=1) == per_sample.max(axis=1))  # whole sample kept/dropped
    assert abs((per_sample[:, 0] == 0).mean() - 0.25) < 0.05
    with pytest.raises(ValueError, match="stochastic depth rate"):
        StochasticDepth(1.0)


def test_image_normalization_uses_imagenet_statistics():
    from efficientdet.models.layers import ImageNormalization

    x = np.array([[[[0.485 * 255, 0.456 * 255, 0.406 * 255], [255.0, 255.0, 255.0]]]], "float32")
    y = np.asarray(ImageNormalization()(x))
    np.testing.assert_allclose(y[0, 0, 0], 0.0, atol=1e-5)
    np.testing.assert_allclose(y[0, 0, 1], [(1 - 0.485) / 0.229, (1 - 0.456) / 0.224,
                                            (1 - 0.406) / 0.225], rtol=1e-5)


def test_initializers_follow_the_paper():
    from efficientdet.models.layers import conv_kernel_initializer, dense_kernel_initializer

    w = np.asarray(conv_kernel_initializer()((3, 3, 64, 128)))
    # fan_out = 3*3*128, variance 2/fan_out (truncated normal at 2 sigma shrinks std ~12%)
    assert 0.8 < w.std() / math.sqrt(2.0 / (9 * 128)) < 1.05
    d = np.asarray(dense_kernel_initializer()((1280, 1000)))
    assert np.abs(d).max() <= 1.0 / math.sqrt(1000) + 1e-7
    assert np.abs(d).max() > 0.95 / math.sqrt(1000)


def test_batch_norm_defaults_and_plain_fallback_without_horovod():
    from efficientdet.models.layers import batch_norm

    bn = batch_norm("bn", sync_bn=True)
    assert (bn.momentum, bn.epsilon, bn.cross_replica) == (0.99, 1e-3, True)
    x = np.random.default_rng(0).normal(3.0, 2.0, (8, 4, 4, 5)).astype("float32")
    y = np.asarray(bn(x, training=True))  # horovod not initialised: plain batch statistics
    np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(np.asarray(bn.moving_mean), 0.01 * x.mean(axis=(0, 1, 2)),
                               rtol=1e-4)
    assert type(bn).__name__ == "BatchNormalization"  # same on-disk name as Keras' BN


def test_cli_rejects_unknown_model_and_bad_sizes(capsys):
    from efficientdet.cli import main

    assert main(["models", "describe", "efficientdet-d9"]) == 2
    assert "unknown model 'efficientdet-d9'" in capsys.readouterr().err
    assert main(["models", "describe", "efficientdet-d0", "--image-size", "300"]) == 2
    assert "multiple of 128" in capsys.readouterr().err
    assert main(["models", "describe", "efficientnet-b0", "--num-classes", "0"]) == 2


def test_configs_module_constants():
    assert configs.BN_MOMENTUM == 0.99 and configs.BN_EPSILON == 1e-3
    assert configs.CLASS_PRIOR == 0.01
