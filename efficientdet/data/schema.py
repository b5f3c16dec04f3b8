"""The TFRecord schema: build tf.train.Example protos and parse them back (docs/architecture.md).

Detection keys follow the TF Object Detection API so existing tools read our shards; the parse
functions are the only place that knows the keys, and return decoded uint8 RGB images.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

DETECTION_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/format": tf.io.FixedLenFeature([], tf.string, default_value="jpeg"),
    "image/height": tf.io.FixedLenFeature([], tf.int64),
    "image/width": tf.io.FixedLenFeature([], tf.int64),
    "image/source_id": tf.io.FixedLenFeature([], tf.string, default_value="-1"),
    "image/filename": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "image/object/bbox/ymin": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/xmin": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/ymax": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/xmax": tf.io.VarLenFeature(tf.float32),
    "image/object/class/label": tf.io.VarLenFeature(tf.int64),
    "image/object/class/text": tf.io.VarLenFeature(tf.string),
    "image/object/is_crowd": tf.io.VarLenFeature(tf.int64),
    "image/object/area": tf.io.VarLenFeature(tf.float32),
}

CLASSIFICATION_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/format": tf.io.FixedLenFeature([], tf.string, default_value="jpeg"),
    "image/height": tf.io.FixedLenFeature([], tf.int64),
    "image/width": tf.io.FixedLenFeature([], tf.int64),
    "image/filename": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64),
    "image/class/text": tf.io.FixedLenFeature([], tf.string, default_value=""),
}


def _bytes(values: Sequence[bytes | str]) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(
        value=[v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in values]))


def _ints(values) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def _floats(values) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))


def detection_example(*, encoded: bytes, height: int, width: int, image_id: int, filename: str,
                      boxes, category_ids, category_names, is_crowd, areas,
                      image_format: str = "jpeg") -> tf.train.Example:
    """One image with its objects; ``boxes`` is ``[M, 4]`` normalized ymin, xmin, ymax, xmax."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    m = len(boxes)
    for name, seq in (("category_ids", category_ids), ("category_names", category_names),
                      ("is_crowd", is_crowd), ("areas", areas)):
        if len(seq) != m:
            raise ValueError(f"{filename}: {name} has {len(seq)} entries for {m} boxes")
    feature = {
        "image/encoded": _bytes([encoded]),
        "image/format": _bytes([image_format]),
        "image/height": _ints([height]),
        "image/width": _ints([width]),
        "image/source_id": _bytes([str(int(image_id))]),
        "image/filename": _bytes([filename]),
        "image/object/bbox/ymin": _floats(boxes[:, 0]),
        "image/object/bbox/xmin": _floats(boxes[:, 1]),
        "image/object/bbox/ymax": _floats(boxes[:, 2]),
        "image/object/bbox/xmax": _floats(boxes[:, 3]),
        "image/object/class/label": _ints(category_ids),
        "image/object/class/text": _bytes(category_names),
        "image/object/is_crowd": _ints([1 if c else 0 for c in is_crowd]),
        "image/object/area": _floats(areas),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


def classification_example(*, encoded: bytes, height: int, width: int, filename: str,
                           label: int, text: str, image_format: str = "jpeg") -> tf.train.Example:
    feature = {
        "image/encoded": _bytes([encoded]),
        "image/format": _bytes([image_format]),
        "image/height": _ints([height]),
        "image/width": _ints([width]),
        "image/filename": _bytes([filename]),
        "image/class/label": _ints([label]),
        "image/class/text": _bytes([text]),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
    """Encoded bytes -> uint8 ``[H, W, 3]`` RGB (JPEG, PNG, BMP or GIF's first frame)."""
    image = tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def _dense(sparse: tf.SparseTensor) -> tf.Tensor:
    return tf.sparse.to_dense(sparse)


def parse_detection_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Serialized detection Example -> the dict in docs/architecture.md (usable in tf.data)."""
    f = tf.io.parse_single_example(serialized, DETECTION_FEATURES)
    boxes = tf.stack([_dense(f["image/object/bbox/ymin"]), _dense(f["image/object/bbox/xmin"]),
                      _dense(f["image/object/bbox/ymax"]), _dense(f["image/object/bbox/xmax"])],
                     axis=-1)
    boxes = tf.reshape(boxes, [-1, 4])
    return {
        "image": decode_image(f["image/encoded"]),
        "image_id": tf.strings.to_number(f["image/source_id"], out_type=tf.int64),
        "filename": f["image/filename"],
        "height": tf.cast(f["image/height"], tf.int32),
        "width": tf.cast(f["image/width"], tf.int32),
        "boxes": boxes,
        "category_ids": _dense(f["image/object/class/label"]),
        "is_crowd": tf.cast(_dense(f["image/object/is_crowd"]), tf.bool),
        "area": _dense(f["image/object/area"]),
    }


def parse_classification_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Serialized classification Example -> ``{"image", "label", "filename"}``."""
    f = tf.io.parse_single_example(serialized, CLASSIFICATION_FEATURES)
    return {
        "image": decode_image(f["image/encoded"]),
        "label": tf.cast(f["image/class/label"], tf.int32),
        "filename": f["image/filename"],
    }
