"""Anchors: counts, exact boxes, order, non-square sizes, config input, output flattening."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf

from efficientdet.detection.anchors import Anchors, feature_sizes, flatten_outputs

RATIOS = [1.0, 2.0, 0.5]


def d0_anchors(image_size=512, max_level=7):
    return Anchors(3, max_level, 3, RATIOS, 4.0, image_size)


def test_d0_at_512_has_49104_anchors():
    anchors = d0_anchors()
    assert anchors.num_anchors == 49_104
    assert anchors.boxes.shape == (49_104, 4)
    assert anchors.boxes.dtype == tf.float32
    assert anchors.level_counts() == {3: 36864, 4: 9216, 5: 2304, 6: 576, 7: 144}


def test_d7x_levels_3_to_8():
    # (192^2 + 96^2 + 48^2 + 24^2 + 12^2 + 6^2) * 9 locations' anchors at 1536 px
    assert d0_anchors(1536, max_level=8).num_anchors == 49_140 * 9


def test_first_location_boxes_are_octave_major():
    boxes = d0_anchors().boxes_numpy
    # Level 3: stride 8, centre (4, 4). Octave o: base = 4 * 8 * 2^(o/3).
    expected = []
    for octave in range(3):
        base = 4.0 * 8 * 2 ** (octave / 3)
        for ratio in RATIOS:
            h, w = base / math.sqrt(ratio), base * math.sqrt(ratio)
            expected.append([4 - h / 2, 4 - w / 2, 4 + h / 2, 4 + w / 2])
    np.testing.assert_allclose(boxes[:9], expected, rtol=1e-6)
    np.testing.assert_allclose(boxes[0], [-12, -12, 20, 20])  # base 32, ratio 1
    # ratio 2 is wide: w = 32*sqrt(2) = 45.25, h = 32/sqrt(2) = 22.63
    np.testing.assert_allclose(boxes[1], [4 - 11.3137, 4 - 22.6274, 4 + 11.3137, 4 + 22.6274],
                               atol=1e-3)


def test_flatten_order_level_then_y_then_x():
    boxes = d0_anchors().boxes_numpy
    # next x on level 3 (centre x = 12), then the first location of the second row (y = 12)
    np.testing.assert_allclose(boxes[9], [-12, -4, 20, 28])
    np.testing.assert_allclose(boxes[64 * 9], [-4, -12, 28, 20])
    # level 4 starts after 64*64*9 anchors: stride 16, centre (8, 8), base 64
    np.testing.assert_allclose(boxes[64 * 64 * 9], [8 - 32, 8 - 32, 8 + 32, 8 + 32])
    # the last anchor: level 7 (stride 128, 4x4), centre (448, 448), octave 2, ratio 0.5
    base = 4 * 128 * 2 ** (2 / 3)
    h, w = base / math.sqrt(0.5), base * math.sqrt(0.5)
    np.testing.assert_allclose(boxes[-1], [448 - h / 2, 448 - w / 2, 448 + h / 2, 448 + w / 2],
                               rtol=1e-6)


def test_non_square_sizes_match_same_padded_pooling():
    height, width = 300, 500
    sizes = feature_sizes((height, width), 3, 7)
    x = tf.zeros([1, height, width, 1])
    for level in range(1, 8):
        x = tf.nn.max_pool2d(x, 3, 2, "SAME")
        if level >= 3:
            assert sizes[level] == tuple(x.shape[1:3]), level
    anchors = Anchors(3, 7, 3, RATIOS, 4.0, (height, width))
    assert anchors.num_anchors == 9 * sum(h * w for h, w in sizes.values())
    assert sizes[3] == (38, 63)


def test_from_config_accepts_attributes_and_dicts():
    fields = {"min_level": 3, "max_level": 7, "num_scales": 3, "aspect_ratios": RATIOS,
              "anchor_scale": 4.0}
    a = Anchors.from_config(SimpleNamespace(**fields), 512)
    b = Anchors.from_config(fields, 512)
    c = Anchors.from_config({**fields, "image_size": 512})
    np.testing.assert_array_equal(a.boxes_numpy, b.boxes_numpy)
    np.testing.assert_array_equal(a.boxes_numpy, c.boxes_numpy)
    d7 = Anchors.from_config({**fields, "anchor_scale": 5.0}, 512)
    np.testing.assert_allclose(d7.boxes_numpy[0], [4 - 20, 4 - 20, 4 + 20, 4 + 20])


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="anchor_scale"):
        Anchors.from_config({"min_level": 3, "max_level": 7, "num_scales": 3,
                             "aspect_ratios": RATIOS}, 512)
    with pytest.raises(ValueError, match="image_size"):
        Anchors(3, 7, 3, RATIOS, 4.0, "512")
    with pytest.raises(ValueError, match="min_level"):
        Anchors(7, 3, 3, RATIOS, 4.0, 512)
    with pytest.raises(ValueError, match="aspect ratio"):
        Anchors(3, 7, 3, [1.0, -2.0], 4.0, 512)


def test_flatten_outputs_follows_anchor_order():
    anchors = Anchors(3, 5, 3, RATIOS, 4.0, (64, 96))
    num_anchors, num_classes = anchors.anchors_per_location, 4
    box_levels, class_levels = [], []
    start = 0
    for level, (h, w) in anchors.feat_sizes.items():
        count = h * w * num_anchors
        # a box head that "predicts" the anchors themselves, laid out [1, H, W, A*4]
        box_levels.append(tf.reshape(anchors.boxes_numpy[start:start + count], [1, h, w, -1]))
        start += count
        # class channel a*K + k holds 10*a + k + 100*level (exact in float16)
        channels = np.arange(num_anchors)[:, None] * 10 + np.arange(num_classes)[None, :]
        class_levels.append(
            tf.cast(tf.broadcast_to(channels.reshape(-1) + 100 * level,
                                    [2, h, w, num_anchors * num_classes]), tf.float16)
        )
    box_levels = [tf.concat([b, b], 0) for b in box_levels]
    cls_flat, box_flat = flatten_outputs(
        {"class_outputs": class_levels, "box_outputs": box_levels}, num_classes)
    assert cls_flat.dtype == tf.float32 and box_flat.dtype == tf.float32
    assert cls_flat.shape == (2, anchors.num_anchors, num_classes)
    np.testing.assert_array_equal(box_flat[1].numpy(), anchors.boxes_numpy)
    n = np.arange(anchors.num_anchors)
    level_of = np.repeat(list(anchors.level_counts()), list(anchors.level_counts().values()))
    expected = (n % num_anchors)[:, None] * 10 + np.arange(num_classes) + 100 * level_of[:, None]
    np.testing.assert_array_equal(cls_flat[0].numpy(), expected)


def test_flatten_outputs_rejects_wrong_channels():
    with pytest.raises(ValueError, match="multiple of 5"):
        flatten_outputs({"class_outputs": [tf.zeros([1, 2, 2, 18])],
                         "box_outputs": [tf.zeros([1, 2, 2, 36])]}, 5)
