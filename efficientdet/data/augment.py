"""Geometric pre-processing for detection and classification (TF ops, one image, tf.data-safe).

Randomness is stateless: every random function takes a `seed` tensor of shape [2] (int32/int64),
so a pipeline that hands each element its own seed is reproducible in deterministic mode and
free of shared random state when it runs in parallel.

Detection boxes are [ymin, xmin, ymax, xmax]; "normalized" means divided by the image height /
width, "pixels" means in the pixel grid of the image at hand.
"""

from __future__ import annotations

import tensorflow as tf

from efficientdet.models.configs import IMAGENET_MEAN_RGB

#: Resize method for detection (bilinear, as the reference implementations).
DETECTION_RESIZE = "bilinear"
#: Resize method for classification (bicubic, as the official EfficientNet input pipeline).
CLASSIFICATION_RESIZE = "bicubic"


def output_hw(image_size) -> tuple[int, int]:
    """`image_size` as (height, width): an int means a square input."""
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        hw = (image_size, image_size)
    elif isinstance(image_size, (tuple, list)) and all(isinstance(v, int) for v in image_size):
        hw = tuple(image_size)
    else:
        hw = ()
    if len(hw) != 2 or min(hw) <= 0:
        raise ValueError(
            f"image_size must be a positive int or (height, width), got {image_size!r}"
        )
    return hw


def split_seed(seed, num: int):
    """`num` independent [2] seeds derived from one."""
    return tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=num))


def _image_hw(image):
    shape = tf.shape(image)
    return shape[0], shape[1]


def pad_with_mean(images, out_h, out_w):
    """Pad float RGB images ([H, W, 3] or [N, H, W, 3]) at the bottom/right to (out_h, out_w)
    with the ImageNet mean colour, which the model's normalisation maps to 0.

    Black padding is about -2 sigma after normalisation: with scale jitter down to 0.1 half of
    the training pixels are padding, and it skews BN statistics. One pad of the centred image
    (a constant pad, so ONNX/TensorRT take it as it is) serves training, evaluation and export.
    """
    mean = tf.constant(IMAGENET_MEAN_RGB, tf.float32)
    shape = tf.shape(images)
    rank = images.shape.rank
    paddings = [[0, out_h - shape[rank - 3]], [0, out_w - shape[rank - 2]], [0, 0]]
    if rank == 4:
        paddings = [[0, 0]] + paddings
    return tf.pad(images - mean, paddings) + mean


# ---------------------------------------------------------------------------------- detection


def random_horizontal_flip(image, boxes, seed, probability: float = 0.5):
    """Flip the image and its normalized boxes left-right with `probability`."""
    do_flip = tf.random.stateless_uniform([], seed=seed) < probability

    def flipped():
        ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
        return tf.image.flip_left_right(image), tf.stack([ymin, 1.0 - xmax, ymax, 1.0 - xmin], -1)

    return tf.cond(do_flip, flipped, lambda: (image, boxes))


def random_scale_crop_pad(image, boxes, output_size, seed, scale_range=(0.1, 2.0)):
    """Aspect-preserving random scale jitter, random crop and mean-colour pad to `output_size`.

    The image is resized so that it fits a square of `s * output` pixels (s uniform in
    `scale_range`), a window of at most the output size is cut at a random offset, and the rest is
    padded at the bottom/right with the mean colour (`pad_with_mean`). Returns
    `(image float32 [H, W, 3], boxes in output pixels
    (clipped to the visible content, not yet filtered), scale)` where `scale` is output pixels per
    source pixel.
    """
    out_h, out_w = output_hw(output_size)
    seed_scale, seed_y, seed_x = split_seed(seed, 3)
    height, width = _image_hw(image)
    h_f, w_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    jitter = tf.random.stateless_uniform(
        [], seed=seed_scale, minval=scale_range[0], maxval=scale_range[1]
    )
    scale = tf.minimum(jitter * out_h / h_f, jitter * out_w / w_f)
    scaled_h = tf.maximum(1, tf.cast(tf.round(h_f * scale), tf.int32))
    scaled_w = tf.maximum(1, tf.cast(tf.round(w_f * scale), tf.int32))

    def offset(seed_, room):
        u = tf.random.stateless_uniform([], seed=seed_)
        return tf.minimum(tf.cast(u * tf.cast(room + 1, tf.float32), tf.int32), room)

    off_y = offset(seed_y, tf.maximum(scaled_h - out_h, 0))
    off_x = offset(seed_x, tf.maximum(scaled_w - out_w, 0))
    crop_h = tf.minimum(out_h, scaled_h - off_y)
    crop_w = tf.minimum(out_w, scaled_w - off_x)

    resized = tf.image.resize(
        tf.cast(image, tf.float32), [scaled_h, scaled_w], method=DETECTION_RESIZE
    )
    cropped = resized[off_y : off_y + crop_h, off_x : off_x + crop_w, :]
    padded = pad_with_mean(cropped, out_h, out_w)
    padded.set_shape([out_h, out_w, 3])

    size = tf.cast(tf.stack([scaled_h, scaled_w, scaled_h, scaled_w]), tf.float32)
    shift = tf.cast(tf.stack([off_y, off_x, off_y, off_x]), tf.float32)
    limit = tf.cast(tf.stack([crop_h, crop_w, crop_h, crop_w]), tf.float32)
    boxes_px = tf.clip_by_value(boxes * size - shift, 0.0, limit)
    return padded, boxes_px, scale


def resize_and_pad(image, output_size):
    """Aspect-preserving resize to fit `output_size`, mean-colour pad bottom/right (evaluation).

    Returns `(image float32 [H, W, 3], scale, scaled_hw int32 [2])`; a box in input pixels maps
    back to the original image as `box / scale`.
    """
    out_h, out_w = output_hw(output_size)
    height, width = _image_hw(image)
    h_f, w_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    scale = tf.minimum(out_h / h_f, out_w / w_f)
    scaled_h = tf.clip_by_value(tf.cast(tf.round(h_f * scale), tf.int32), 1, out_h)
    scaled_w = tf.clip_by_value(tf.cast(tf.round(w_f * scale), tf.int32), 1, out_w)
    resized = tf.image.resize(
        tf.cast(image, tf.float32), [scaled_h, scaled_w], method=DETECTION_RESIZE
    )
    padded = pad_with_mean(resized, out_h, out_w)
    padded.set_shape([out_h, out_w, 3])
    return padded, scale, tf.stack([scaled_h, scaled_w])


def keep_positive_area(boxes, *columns):
    """Drop boxes whose height or width is not positive, and the matching rows of `columns`."""
    keep = tf.logical_and(boxes[:, 2] > boxes[:, 0], boxes[:, 3] > boxes[:, 1])
    return (tf.boolean_mask(boxes, keep),) + tuple(tf.boolean_mask(c, keep) for c in columns)


def pad_instances(boxes, classes, max_instances: int, *extra, pad_values=()):
    """First `max_instances` rows, padded to exactly that many (classes pad with -1, boxes with 0).

    `extra` are further per-instance columns padded with the matching `pad_values` (default 0).
    """
    count = tf.minimum(tf.shape(boxes)[0], max_instances)
    missing = max_instances - count

    def fit(column, value):
        column = column[:count]
        rank_tail = [[0, 0]] * (len(column.shape) - 1)
        out = tf.pad(column, [[0, missing]] + rank_tail, constant_values=value)
        out.set_shape([max_instances] + column.shape[1:].as_list())
        return out

    pad_values = tuple(pad_values) + (0,) * (len(extra) - len(pad_values))
    return (fit(boxes, 0.0), fit(classes, -1)) + tuple(fit(c, v) for c, v in zip(extra, pad_values))


# ----------------------------------------------------------------------------- classification


def center_crop(image, image_size: int, crop_padding: int = 32):
    """Central square crop of `size / (size + crop_padding)` of the shorter side, resized.

    This is the evaluation crop of the official EfficientNet (224 px: 87.5 % of the shorter side).
    """
    height, width = _image_hw(image)
    fraction = image_size / (image_size + crop_padding)
    side = tf.cast(fraction * tf.cast(tf.minimum(height, width), tf.float32), tf.int32)
    side = tf.maximum(side, 1)
    off_y = (height - side + 1) // 2
    off_x = (width - side + 1) // 2
    crop = image[off_y : off_y + side, off_x : off_x + side, :]
    return _resize_square(crop, image_size)


def random_resized_crop(
    image,
    image_size: int,
    seed,
    area_range=(0.08, 1.0),
    ratio_range=(3 / 4, 4 / 3),
    max_attempts: int = 10,
):
    """Inception-style crop: random area fraction and aspect ratio, resized to a square.

    When no window satisfying the ranges is found in `max_attempts` the sampler returns the whole
    image; as in the official EfficientNet pipeline that case falls back to the center crop.
    """
    height, width = _image_hw(image)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed,
        min_object_covered=0.1,
        aspect_ratio_range=ratio_range,
        area_range=area_range,
        max_attempts=max_attempts,
        use_image_if_no_bounding_boxes=True,
    )
    failed = tf.logical_and(tf.equal(size[0], height), tf.equal(size[1], width))

    def sampled():
        crop = tf.slice(image, begin, size)
        return _resize_square(crop, image_size)

    return tf.cond(failed, lambda: center_crop(image, image_size), sampled)


def _resize_square(image, image_size: int):
    out = tf.image.resize(
        tf.cast(image, tf.float32), [image_size, image_size], method=CLASSIFICATION_RESIZE
    )
    out = tf.clip_by_value(out, 0.0, 255.0)  # bicubic overshoots
    out.set_shape([image_size, image_size, 3])
    return out
