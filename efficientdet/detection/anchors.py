"""Anchor boxes of an EfficientDet model and flattening of its per-level outputs.

Order (binding for targets, losses and post-processing): level -> y -> x -> anchor, where the
anchors at one location are octave-major: (octave 0: ratios...), (octave 1: ratios...), ...
Level l has stride 2**l and ceil(H / 2**l) x ceil(W / 2**l) locations, which is what the
model's stride-2 "same" convolutions and max-pools produce for any input size (square or not).
Anchor centres are at stride/2 + k*stride; base size = anchor_scale * stride * 2**(octave /
num_scales); width = base * sqrt(ratio), height = base / sqrt(ratio). Boxes are
[ymin, xmin, ymax, xmax] in input pixels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf

CONFIG_KEYS = ("min_level", "max_level", "num_scales", "aspect_ratios", "anchor_scale")


def _image_hw(image_size) -> tuple[int, int]:
    """(height, width) from an int or an (height, width) pair; clear error otherwise."""
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        hw = (int(image_size), int(image_size))
    elif (
        isinstance(image_size, Sequence)
        and not isinstance(image_size, str)
        and len(image_size) == 2
        and all(isinstance(v, (int, np.integer)) for v in image_size)
    ):
        hw = (int(image_size[0]), int(image_size[1]))
    else:
        raise ValueError(
            f"image_size must be an int or a (height, width) pair of ints, got {image_size!r}"
        )
    if min(hw) <= 0:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    return hw


def _ratio_multipliers(aspect_ratio) -> tuple[float, float]:
    """(width, height) multipliers of the base size for one aspect ratio.

    A number a means width/height = a (w = base*sqrt(a), h = base/sqrt(a)); an (x, y) pair is
    taken literally as the width and height multipliers (older automl configs).
    """
    if isinstance(aspect_ratio, (int, float, np.number)) and not isinstance(aspect_ratio, bool):
        a = float(aspect_ratio)
        if a <= 0:
            raise ValueError(f"aspect ratio must be positive, got {aspect_ratio!r}")
        return math.sqrt(a), 1.0 / math.sqrt(a)
    if isinstance(aspect_ratio, Sequence) and len(aspect_ratio) == 2:
        wx, hy = float(aspect_ratio[0]), float(aspect_ratio[1])
        if wx <= 0 or hy <= 0:
            raise ValueError(f"aspect ratio multipliers must be positive, got {aspect_ratio!r}")
        return wx, hy
    raise ValueError(f"aspect ratio must be a number or an (x, y) pair, got {aspect_ratio!r}")


def feature_sizes(image_size, min_level: int, max_level: int) -> dict[int, tuple[int, int]]:
    """{level: (height, width)} of the feature maps, ceil(size / 2**level)."""
    height, width = _image_hw(image_size)
    return {
        level: (-(-height // 2**level), -(-width // 2**level))
        for level in range(min_level, max_level + 1)
    }


class Anchors:
    """Anchor boxes for one input size; ``.boxes`` is a float32 [N, 4] tensor."""

    def __init__(
        self,
        min_level: int,
        max_level: int,
        num_scales: int,
        aspect_ratios,
        anchor_scale: float,
        image_size,
    ):
        if int(min_level) < 1 or int(max_level) < int(min_level):
            raise ValueError(
                f"need 1 <= min_level <= max_level, got min_level={min_level}, "
                f"max_level={max_level}"
            )
        if int(num_scales) < 1:
            raise ValueError(f"num_scales must be >= 1, got {num_scales}")
        if float(anchor_scale) <= 0:
            raise ValueError(f"anchor_scale must be positive, got {anchor_scale}")
        if isinstance(aspect_ratios, str) or len(aspect_ratios) == 0:
            raise ValueError(f"aspect_ratios must be a non-empty list, got {aspect_ratios!r}")
        self.min_level = int(min_level)
        self.max_level = int(max_level)
        self.num_scales = int(num_scales)
        self.aspect_ratios = tuple(aspect_ratios)
        self._multipliers = [_ratio_multipliers(a) for a in self.aspect_ratios]
        self.anchor_scale = float(anchor_scale)
        self.image_size = _image_hw(image_size)
        self.feat_sizes = feature_sizes(self.image_size, self.min_level, self.max_level)
        self.anchors_per_location = self.num_scales * len(self.aspect_ratios)
        self._boxes_np = self._generate()
        self._boxes_eager = None

    @classmethod
    def from_config(cls, cfg, image_size=None) -> Anchors:
        """Anchors for a model config (attributes or a mapping with ``CONFIG_KEYS``).

        ``image_size`` defaults to the config's own ``image_size`` when it has one.
        """
        def get(key):
            if isinstance(cfg, Mapping):
                return cfg.get(key)
            return getattr(cfg, key, None)

        missing = [key for key in CONFIG_KEYS if get(key) is None]
        if missing:
            raise ValueError(f"model config lacks anchor settings: {', '.join(missing)}")
        if image_size is None:
            image_size = get("image_size")
            if image_size is None:
                raise ValueError("image_size not given and the model config has none")
        return cls(*(get(key) for key in CONFIG_KEYS), image_size=image_size)

    def _generate(self) -> np.ndarray:
        per_level = []
        for level in range(self.min_level, self.max_level + 1):
            stride = 2.0**level
            fh, fw = self.feat_sizes[level]
            sizes = []  # (half height, half width) per anchor, octave-major
            for octave in range(self.num_scales):
                base = self.anchor_scale * stride * 2.0 ** (octave / self.num_scales)
                for wx, hy in self._multipliers:
                    sizes.append((base * hy / 2.0, base * wx / 2.0))
            half = np.asarray(sizes, np.float64)  # [A, 2]
            cy = stride / 2.0 + np.arange(fh, dtype=np.float64) * stride
            cx = stride / 2.0 + np.arange(fw, dtype=np.float64) * stride
            cy = np.broadcast_to(cy[:, None, None], (fh, fw, len(sizes)))
            cx = np.broadcast_to(cx[None, :, None], (fh, fw, len(sizes)))
            hh = np.broadcast_to(half[None, None, :, 0], (fh, fw, len(sizes)))
            hw = np.broadcast_to(half[None, None, :, 1], (fh, fw, len(sizes)))
            boxes = np.stack([cy - hh, cx - hw, cy + hh, cx + hw], axis=-1)
            per_level.append(boxes.reshape(-1, 4))
        return np.concatenate(per_level, axis=0).astype(np.float32)

    @property
    def num_anchors(self) -> int:
        """N, the number of anchors per image."""
        return int(self._boxes_np.shape[0])

    @property
    def boxes_numpy(self) -> np.ndarray:
        """The anchors as a float32 numpy array [N, 4]."""
        return self._boxes_np

    @property
    def boxes(self) -> tf.Tensor:
        """float32 [N, 4] tensor (a constant in whatever graph is being built)."""
        if tf.executing_eagerly():
            if self._boxes_eager is None:
                self._boxes_eager = tf.constant(self._boxes_np)
            return self._boxes_eager
        return tf.constant(self._boxes_np)

    def level_counts(self) -> dict[int, int]:
        """{level: anchors on that level}, in flattening order."""
        return {
            level: h * w * self.anchors_per_location for level, (h, w) in self.feat_sizes.items()
        }

    def __repr__(self) -> str:
        return (
            f"Anchors(levels={self.min_level}-{self.max_level}, num_scales={self.num_scales}, "
            f"aspect_ratios={list(self.aspect_ratios)}, anchor_scale={self.anchor_scale}, "
            f"image_size={self.image_size}, num_anchors={self.num_anchors})"
        )


def as_anchor_boxes(anchors) -> tf.Tensor:
    """float32 [N, 4] boxes from an ``Anchors`` or anything tensor-like."""
    if isinstance(anchors, Anchors):
        return anchors.boxes
    return tf.convert_to_tensor(anchors, tf.float32)


def flatten_outputs(outputs, num_classes: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Per-level detector outputs -> (class logits [B, N, K], box codes [B, N, 4]), float32.

    ``outputs`` is the model's dict ``{"class_outputs": [B, H, W, A*K] per level,
    "box_outputs": [B, H, W, A*4] per level}`` (lowest level first); the channel layout is
    anchor-major (channel = a*K + k), so a reshape yields the anchor order level -> y -> x ->
    anchor.
    """
    if not isinstance(outputs, Mapping) or not {"class_outputs", "box_outputs"} <= set(outputs):
        raise ValueError("outputs must be a dict with 'class_outputs' and 'box_outputs'")
    class_levels, box_levels = list(outputs["class_outputs"]), list(outputs["box_outputs"])
    if len(class_levels) != len(box_levels) or not class_levels:
        raise ValueError(
            f"class_outputs and box_outputs must be equally long non-empty lists of levels, got "
            f"{len(class_levels)} and {len(box_levels)}"
        )
    num_classes = int(num_classes)

    def flat(levels, depth, what):
        pieces = []
        for i, x in enumerate(levels):
            channels = x.shape[-1]
            if channels is not None and channels % depth:
                raise ValueError(
                    f"{what}[{i}] has {channels} channels, not a multiple of {depth}"
                )
            x = tf.cast(x, tf.float32)
            pieces.append(tf.reshape(x, [tf.shape(x)[0], -1, depth]))
        return tf.concat(pieces, axis=1)

    return flat(class_levels, num_classes, "class_outputs"), flat(box_levels, 4, "box_outputs")
