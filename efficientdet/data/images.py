"""Robust image decoding for the converters: anything Pillow reads becomes 8-bit RGB JPEG.

Everything downstream (TFRecords, tf.data, models) then sees one format: 3-channel uint8 RGB in
the orientation people see (EXIF applied). Files that cannot be used raise `BadImage` with a
short machine-readable reason, so converters can count and report them instead of crashing.
No TensorFlow here: this runs in converter worker processes.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not grey pixels
JPEG_QUALITY = 95
MAX_PIXELS = 20_000 * 20_000
ORIENTATION_TAG = 0x0112

# Leading bytes of formats we accept; a file that starts like one but fails to open is corrupt.
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM",
                b"II*\x00", b"MM\x00*")

# Orientations whose display swaps width and height.
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)


class BadImage(Exception):
    """An input image that cannot be used; ``reason`` is one of the documented codes."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class PreparedImage:
    """An image ready for a TFRecord: JPEG bytes of the displayed, 8-bit RGB picture."""

    encoded: bytes
    height: int
    width: int
    orientation: int  # EXIF orientation of the source (1 = none)
    raw_height: int  # size as stored in the file, before EXIF orientation
    raw_width: int
    conversions: list[str] = field(default_factory=list)  # e.g. ["grayscale", "exif_rotated"]

    @property
    def reencoded(self) -> bool:
        return "reencoded" in self.conversions


def _open(data: bytes) -> Image.Image:
    if not data:
        raise BadImage("empty_file", "file has no bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            img.load()
    except UnidentifiedImageError as exc:
        if data.startswith(_IMAGE_MAGIC):  # looks like a known format but does not parse
            raise BadImage("corrupt", "image header or data is damaged") from exc
        raise BadImage("unsupported_format", "not an image format Pillow can read") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage("too_large", str(exc)) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        text = str(exc)
        reason = "truncated" if "truncated" in text.lower() else "corrupt"
        raise BadImage(reason, text or type(exc).__name__) from exc
    if img.width < 1 or img.height < 1:
        raise BadImage("corrupt", f"image has size {img.width}x{img.height}")
    return img


def _orientation(img: Image.Image) -> int:
    try:
        value = int(img.getexif().get(ORIENTATION_TAG, 1) or 1)
    except Exception:  # noqa: BLE001 - broken EXIF blocks are ignored, not fatal
        return 1
    return value if 1 <= value <= 8 else 1


def _to_rgb(img: Image.Image, conversions: list[str]) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16") or (mode == "I" and arr.max(initial=0) > 255):
            arr = arr / 257.0  # 16-bit range -> 8-bit
            conversions.append("16bit")
        else:
            conversions.append("grayscale")
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(np.stack([gray] * 3, axis=-1), "RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        conversions.append("alpha")
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in ("L", "1"):
        conversions.append("grayscale")
    elif mode == "CMYK":
        conversions.append("cmyk")
    elif mode == "P":
        conversions.append("palette")
    else:
        conversions.append(f"mode_{mode}")
    return img.convert("RGB")


def prepare_image(data: bytes) -> PreparedImage:
    """Decode ``data`` into a `PreparedImage`; raises `BadImage` with a reason code.

    Bytes are kept as they are only for a baseline RGB JPEG without EXIF rotation; anything
    else (other formats, modes, progressive JPEGs, rotated pictures) is re-encoded as JPEG
    quality 95 so the TFRecord decodes to exactly what a viewer shows.
    """
    img = _open(data)
    fmt = img.format
    raw_width, raw_height = img.size
    orientation = _orientation(img)
    conversions: list[str] = []
    if getattr(img, "n_frames", 1) > 1:
        conversions.append("first_frame")
    try:
        if orientation != 1:
            img = ImageOps.exif_transpose(img)
            conversions.append("exif_rotated")
        img = _to_rgb(img, conversions)
    except (OSError, ValueError) as exc:
        raise BadImage("corrupt", str(exc)) from exc
    baseline = fmt == "JPEG" and not img.info.get("progressive") and not img.info.get(
        "progression")
    if fmt == "JPEG" and baseline and not conversions:
        encoded = data
    else:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=JPEG_QUALITY)
        encoded = buf.getvalue()
        if fmt != "JPEG":
            conversions.append(f"from_{str(fmt).lower()}")
        conversions.append("reencoded")
    return PreparedImage(encoded=encoded, height=img.height, width=img.width,
                         orientation=orientation, raw_height=raw_height, raw_width=raw_width,
                         conversions=conversions)


def raw_to_displayed_boxes(boxes: np.ndarray, orientation: int, raw_width: int,
                           raw_height: int) -> np.ndarray:
    """Map ``[M, 4]`` xmin/ymin/xmax/ymax pixel boxes from the stored frame to the displayed one.

    The mapping follows `PIL.ImageOps.exif_transpose` for EXIF orientations 1-8.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    w, h = float(raw_width), float(raw_height)
    x0, y0, x1, y1 = boxes.T

    def pts(fx, fy):
        return np.stack([fx(x0, y0), fy(x0, y0), fx(x1, y1), fy(x1, y1)], axis=-1)

    maps = {
        1: (lambda x, y: x, lambda x, y: y),
        2: (lambda x, y: w - x, lambda x, y: y),
        3: (lambda x, y: w - x, lambda x, y: h - y),
        4: (lambda x, y: x, lambda x, y: h - y),
        5: (lambda x, y: y, lambda x, y: x),
        6: (lambda x, y: h - y, lambda x, y: x),
        7: (lambda x, y: h - y, lambda x, y: w - x),
        8: (lambda x, y: y, lambda x, y: w - x),
    }
    fx, fy = maps.get(orientation, maps[1])
    p = pts(fx, fy)
    return np.stack([np.minimum(p[:, 0], p[:, 2]), np.minimum(p[:, 1], p[:, 3]),
                     np.maximum(p[:, 0], p[:, 2]), np.maximum(p[:, 1], p[:, 3])], axis=-1)
