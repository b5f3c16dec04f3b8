"""RandAugment (Cubuk et al. 2019) with plain TensorFlow image ops, stateless randomness.

`randaugment(image, num_layers, magnitude, seed)` applies `num_layers` operations, each picked
uniformly from `OPS`, at the fixed `magnitude` (0-10; e.g. (2, 10)). Images are float32 RGB in
[0, 255], shape [H, W, 3]; outputs stay in that range.

Magnitudes follow the official EfficientNet `autoaugment.py` level-to-argument mapping with two
deliberate changes so that a larger magnitude always means a stronger distortion: Posterize keeps
`8 - 4 * m/10` bits and Solarize uses the threshold `256 - 256 * m/10` (the official mappings
weaken with the magnitude; timm's "increasing" variants do the same). Pixel offsets of Translate and the Cutout
size scale with the image (the official constants 100 and 40 px are meant for 224 px inputs).
"""

from __future__ import annotations

import math

import tensorflow as tf

MAX_LEVEL = 10.0
FILL_VALUE = 128.0  # grey for the pixels geometric ops uncover (official replace value)


def _blend(image, degenerate, factor):
    """PIL ImageEnhance convention: factor 0 gives `degenerate`, 1 gives `image`, > 1
    extrapolates away from the degenerate image."""
    return tf.clip_by_value(degenerate + factor * (image - degenerate), 0.0, 255.0)


def _grayscale(image):
    return tf.image.rgb_to_grayscale(image)  # [H, W, 1]


def _signed(value, seed):
    """`value` with a random sign (geometric ops and enhancements go both ways)."""
    flip = tf.random.stateless_uniform([], seed=seed) < 0.5
    return tf.where(flip, -value, value)


def _enhance_factor(level):
    return level / MAX_LEVEL * 1.8 + 0.1


# ----------------------------------------------------------------------------------- colour ops


def identity(image, level, seed):
    del level, seed
    return image


def auto_contrast(image, level, seed):
    """Stretch each channel to the full [0, 255] range (constant channels are left alone)."""
    del level, seed
    lo = tf.reduce_min(image, axis=[0, 1], keepdims=True)
    hi = tf.reduce_max(image, axis=[0, 1], keepdims=True)
    span = hi - lo
    stretched = (image - lo) * (255.0 / tf.maximum(span, 1e-3))
    return tf.where(span > 0, tf.clip_by_value(stretched, 0.0, 255.0), image)


def equalize(image, level, seed):
    """Per-channel histogram equalization (the PIL ImageOps.equalize algorithm)."""
    del level, seed
    pixels = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.int32)

    def channel(values):
        hist = tf.math.bincount(tf.reshape(values, [-1]), minlength=256, maxlength=256)
        nonzero = tf.boolean_mask(hist, hist > 0)
        step = (tf.reduce_sum(nonzero) - nonzero[-1]) // 255

        def mapped():
            lut = (tf.cumsum(hist) + step // 2) // step
            lut = tf.clip_by_value(tf.concat([[0], lut[:-1]], 0), 0, 255)
            return tf.gather(lut, values)

        return tf.cond(step > 0, mapped, lambda: values)

    channels = [channel(pixels[:, :, c]) for c in range(3)]
    return tf.cast(tf.stack(channels, axis=-1), tf.float32)


def invert(image, level, seed):
    del level, seed
    return 255.0 - image


def posterize(image, level, seed):
    """Keep the `8 - 4 * level/10` most significant bits."""
    del seed
    shift = tf.cast(level / MAX_LEVEL * 4.0, tf.int32)
    pixels = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
    shift8 = tf.cast(shift, tf.uint8)
    return tf.cast(
        tf.bitwise.left_shift(tf.bitwise.right_shift(pixels, shift8), shift8), tf.float32
    )


def solarize(image, level, seed):
    """Invert pixels at or above a threshold that falls with the level."""
    del seed
    threshold = 256.0 - level / MAX_LEVEL * 256.0
    return tf.where(image >= threshold, 255.0 - image, image)


def solarize_add(image, level, seed):
    """Add `110 * level/10` to pixels below 128."""
    del seed
    addition = level / MAX_LEVEL * 110.0
    return tf.where(image < 128.0, tf.clip_by_value(image + addition, 0.0, 255.0), image)


def color(image, level, seed):
    del seed
    return _blend(image, tf.image.grayscale_to_rgb(_grayscale(image)), _enhance_factor(level))


def contrast(image, level, seed):
    del seed
    mean = tf.reduce_mean(_grayscale(image))
    return _blend(image, tf.fill(tf.shape(image), mean), _enhance_factor(level))


def brightness(image, level, seed):
    del seed
    return _blend(image, tf.zeros_like(image), _enhance_factor(level))


def sharpness(image, level, seed):
    """Blend with the PIL SMOOTH-filtered image; the one-pixel border keeps its values."""
    del seed
    kernel = tf.constant([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    smooth = tf.nn.depthwise_conv2d(image[None], kernel, strides=[1, 1, 1, 1], padding="VALID")[0]
    smooth = tf.round(smooth)
    inner = tf.pad(tf.ones_like(smooth), [[1, 1], [1, 1], [0, 0]])
    degenerate = tf.where(inner > 0, tf.pad(smooth, [[1, 1], [1, 1], [0, 0]]), image)
    return _blend(image, degenerate, _enhance_factor(level))


def cutout(image, level, seed):
    """Grey out a square of side `level/10 * 40/224` of the shorter side at a random place."""
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    short = tf.cast(tf.minimum(height, width), tf.float32)
    half = tf.cast(level / MAX_LEVEL * (40.0 / 224.0) * short / 2.0, tf.int32)
    seed_y, seed_x = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    cy = tf.random.stateless_uniform([], seed=seed_y, maxval=height, dtype=tf.int32)
    cx = tf.random.stateless_uniform([], seed=seed_x, maxval=width, dtype=tf.int32)
    rows = tf.range(height)[:, None]
    cols = tf.range(width)[None, :]
    inside = (tf.abs(rows - cy) < half) & (tf.abs(cols - cx) < half)
    return tf.where(inside[:, :, None], FILL_VALUE, image)


# -------------------------------------------------------------------------------- geometric ops


def _transform(image, matrix):
    """Projective transform; `matrix` maps output (x, y) to input (x, y): 8 parameters."""
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None],
        transforms=tf.reshape(tf.cast(matrix, tf.float32), [1, 8]),
        output_shape=tf.shape(image)[:2],
        fill_value=FILL_VALUE,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )
    return out[0]


def rotate(image, level, seed):
    """Rotate about the centre by up to 30 degrees either way."""
    angle = _signed(level / MAX_LEVEL * 30.0, seed) * (math.pi / 180.0)
    shape = tf.cast(tf.shape(image), tf.float32)
    cy, cx = (shape[0] - 1.0) / 2.0, (shape[1] - 1.0) / 2.0
    cos, sin = tf.cos(angle), tf.sin(angle)
    # input = R(angle) (output - c) + c
    matrix = tf.stack(
        [cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0]
    )
    return _transform(image, matrix)


def shear_x(image, level, seed):
    s = _signed(level / MAX_LEVEL * 0.3, seed)
    return _transform(image, tf.stack([1.0, s, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]))


def shear_y(image, level, seed):
    s = _signed(level / MAX_LEVEL * 0.3, seed)
    return _transform(image, tf.stack([1.0, 0.0, 0.0, s, 1.0, 0.0, 0.0, 0.0]))


def _translate_pixels(level, seed, side):
    return _signed(level / MAX_LEVEL * (100.0 / 224.0) * tf.cast(side, tf.float32), seed)


def translate_x(image, level, seed):
    dx = _translate_pixels(level, seed, tf.shape(image)[1])
    return _transform(image, tf.stack([1.0, 0.0, -dx, 0.0, 1.0, 0.0, 0.0, 0.0]))


def translate_y(image, level, seed):
    dy = _translate_pixels(level, seed, tf.shape(image)[0])
    return _transform(image, tf.stack([1.0, 0.0, 0.0, 0.0, 1.0, -dy, 0.0, 0.0]))


#: The operations RandAugment draws from (name -> fn(image, level, seed)).
OPS = {
    "AutoContrast": auto_contrast,
    "Equalize": equalize,
    "Invert": invert,
    "Rotate": rotate,
    "Posterize": posterize,
    "Solarize": solarize,
    "Color": color,
    "Contrast": contrast,
    "Brightness": brightness,
    "Sharpness": sharpness,
    "ShearX": shear_x,
    "ShearY": shear_y,
    "TranslateX": translate_x,
    "TranslateY": translate_y,
    "Cutout": cutout,
    "SolarizeAdd": solarize_add,
}


def apply_op(name: str, image, magnitude: float, seed):
    """One named operation at `magnitude` (0-10); for tests and explicit policies."""
    if name not in OPS:
        raise ValueError(f"unknown RandAugment op {name!r}; known: {', '.join(OPS)}")
    image = tf.convert_to_tensor(image, tf.float32)
    out = OPS[name](image, tf.constant(float(magnitude)), tf.cast(seed, tf.int64))
    return tf.ensure_shape(out, image.shape)


def _branch(fn, image, level, seed, shape):
    return lambda: tf.ensure_shape(fn(image, level, seed), shape)


def randaugment(image, num_layers: int, magnitude: float, seed, ops=None):
    """Apply `num_layers` ops drawn uniformly (with replacement) from `ops` (default all of OPS)."""
    if num_layers < 0 or not 0 <= magnitude <= MAX_LEVEL:
        raise ValueError(
            f"randaugment needs num_layers >= 0 and 0 <= magnitude <= 10, got ({num_layers}, {magnitude})"
        )
    names = list(ops or OPS)
    for name in names:
        if name not in OPS:
            raise ValueError(f"unknown RandAugment op {name!r}; known: {', '.join(OPS)}")
    image = tf.convert_to_tensor(image, tf.float32)
    static_shape = image.shape
    level = tf.constant(float(magnitude))
    seeds = tf.random.experimental.stateless_split(
        tf.cast(seed, tf.int64), num=2 * max(num_layers, 1)
    )
    for layer in range(num_layers):
        choice = tf.random.stateless_uniform(
            [], seed=seeds[2 * layer], maxval=len(names), dtype=tf.int32
        )
        op_seed = seeds[2 * layer + 1]
        branches = [_branch(OPS[n], image, level, op_seed, static_shape) for n in names]
        image = tf.switch_case(choice, branches)
    return image
