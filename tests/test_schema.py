"""data.schema (Example build/parse contract) and data.images (robust decoding)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from efficientdet.data import images as image_io
from efficientdet.data import schema


def _png(array: np.ndarray, mode: str | None = None, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG", **save)
    return buf.getvalue()


def _jpeg(img: Image.Image, **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, **save)
    return buf.getvalue()


def test_detection_example_roundtrip_in_tf_data():
    rgb = np.zeros((6, 10, 3), np.uint8)
    rgb[..., 0] = 200
    gray_png = _png(np.full((6, 10), 77, np.uint8))  # 1-channel source still parses as 3
    ex = schema.detection_example(
        encoded=gray_png, height=6, width=10, image_id=42, filename="a b/ü.png",
        boxes=[[0.1, 0.2, 0.5, 0.9], [0.0, 0.0, 1.0, 1.0]], category_ids=[3, 90],
        category_names=["cat", "toothbrush"], is_crowd=[False, True], areas=[12.5, 60.0],
        image_format="png")
    ds = tf.data.Dataset.from_tensor_slices([ex.SerializeToString()]).map(
        schema.parse_detection_example)
    out = next(iter(ds))
    assert out["image"].dtype == tf.uint8 and out["image"].shape == (6, 10, 3)
    assert int(out["image"][0, 0, 1]) == 77
    assert out["image_id"].dtype == tf.int64 and int(out["image_id"]) == 42
    assert out["filename"].numpy().decode() == "a b/ü.png"
    assert out["height"].dtype == tf.int32 and int(out["height"]) == 6 and int(out["width"]) == 10
    np.testing.assert_allclose(out["boxes"].numpy(), [[0.1, 0.2, 0.5, 0.9], [0, 0, 1, 1]],
                               atol=1e-6)
    assert out["boxes"].dtype == tf.float32
    assert out["category_ids"].dtype == tf.int64 and out["category_ids"].numpy().tolist() == [3, 90]
    assert out["is_crowd"].dtype == tf.bool and out["is_crowd"].numpy().tolist() == [False, True]
    assert out["area"].dtype == tf.float32 and out["area"].numpy().tolist() == [12.5, 60.0]
    feats = ex.features.feature
    assert feats["image/object/class/text"].bytes_list.value == [b"cat", b"toothbrush"]
    assert feats["image/source_id"].bytes_list.value == [b"42"]


def test_detection_example_without_objects_and_mismatch():
    ex = schema.detection_example(
        encoded=_jpeg(Image.new("RGB", (4, 3), (1, 2, 3))), height=3, width=4, image_id=1,
        filename="n.jpg", boxes=np.zeros((0, 4)), category_ids=[], category_names=[],
        is_crowd=[], areas=[])
    out = schema.parse_detection_example(ex.SerializeToString())
    assert out["boxes"].shape == (0, 4) and out["category_ids"].shape == (0,)
    with pytest.raises(ValueError, match="x.jpg: category_ids has 1 entries for 2 boxes"):
        schema.detection_example(encoded=b"", height=1, width=1, image_id=1, filename="x.jpg",
                                 boxes=[[0, 0, 1, 1]] * 2, category_ids=[1],
                                 category_names=["a", "b"], is_crowd=[0, 0], areas=[1, 1])


def test_classification_example_roundtrip():
    rgba = np.zeros((5, 7, 4), np.uint8)
    ex = schema.classification_example(encoded=_png(rgba, "RGBA"), height=5, width=7,
                                       filename="dog/1.png", label=3, text="dog",
                                       image_format="png")
    out = schema.parse_classification_example(tf.constant(ex.SerializeToString()))
    assert out["image"].shape == (5, 7, 3) and out["image"].dtype == tf.uint8
    assert out["label"].dtype == tf.int32 and int(out["label"]) == 3
    assert out["filename"].numpy() == b"dog/1.png"


# --- images.prepare_image ------------------------------------------------------------------

def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_baseline_rgb_jpeg_keeps_its_bytes():
    data = _jpeg(Image.new("RGB", (20, 10), (10, 200, 30)))
    out = image_io.prepare_image(data)
    assert out.encoded == data and not out.reencoded and (out.width, out.height) == (20, 10)


@pytest.mark.parametrize("make, conversion", [
    (lambda: _png(np.full((8, 12), 90, np.uint8)), "grayscale"),
    (lambda: _png(np.full((8, 12), 40000, np.uint16)), "16bit"),
    (lambda: _png(np.full((8, 12, 4), 128, np.uint8), "RGBA"), "alpha"),
    (lambda: _jpeg(Image.new("CMYK", (12, 8), (0, 255, 255, 0))), "cmyk"),
    (lambda: _png(np.full((8, 12, 3), 9, np.uint8)), "from_png"),
    (lambda: _jpeg(Image.new("RGB", (12, 8), (5, 5, 5)), progressive=True), "reencoded"),
])
def test_conversions_give_8bit_rgb_jpeg(make, conversion):
    out = image_io.prepare_image(make())
    assert conversion in out.conversions and out.reencoded
    arr = _decode(out.encoded)
    assert arr.dtype == np.uint8 and arr.shape == (8, 12, 3)
    assert Image.open(io.BytesIO(out.encoded)).format == "JPEG"


def test_16bit_is_scaled_not_clipped():
    arr = _decode(image_io.prepare_image(_png(np.full((4, 4), 32896, np.uint16))).encoded)
    assert abs(int(arr[0, 0, 0]) - 128) <= 2  # 32896 / 257 = 128


def test_cmyk_red_stays_red():
    arr = _decode(image_io.prepare_image(_jpeg(Image.new("CMYK", (8, 8), (0, 255, 255, 0)))).encoded)
    r, g, b = arr[4, 4].astype(int)
    assert r > 200 and g < 60 and b < 60


def _flip_idat_byte() -> bytes:
    noise = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    data = bytearray(_png(noise))
    data[data.find(b"IDAT") + 40] ^= 0xFF
    return bytes(data)


@pytest.mark.parametrize("data, reason", [
    (b"", "empty_file"),
    (b"hello, not an image", "unsupported_format"),
    (b"\xff\xd8\xff\xe0" + bytes(300), "corrupt"),
    (_jpeg(Image.new("RGB", (64, 64), (1, 2, 3)))[:-200], "truncated"),
    (lambda: _flip_idat_byte(), "corrupt"),
])
def test_bad_images_have_reasons(data, reason):
    data = data() if callable(data) else data
    with pytest.raises(image_io.BadImage) as info:
        image_io.prepare_image(data)
    assert info.value.reason == reason


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_and_box_mapping_agree(orientation):
    """A bright block drawn in the stored frame lands where raw_to_displayed_boxes says."""
    raw = np.zeros((40, 60, 3), np.uint8)
    box = (8, 5, 25, 18)  # xmin, ymin, xmax, ymax in the stored frame
    raw[box[1]:box[3], box[0]:box[2]] = 255
    exif = Image.Exif()
    exif[image_io.ORIENTATION_TAG] = orientation
    out = image_io.prepare_image(_jpeg(Image.fromarray(raw), exif=exif.tobytes()))
    assert out.orientation == orientation
    assert ("exif_rotated" in out.conversions) == (orientation != 1)
    shown = _decode(out.encoded)[..., 0] > 128
    ys, xs = np.nonzero(shown)
    found = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    expected = image_io.raw_to_displayed_boxes(np.array([box]), orientation, 60, 40)[0]
    np.testing.assert_allclose(found, expected, atol=1)
    swapped = orientation in image_io.TRANSPOSING_ORIENTATIONS
    assert (out.width, out.height) == ((40, 60) if swapped else (60, 40))
