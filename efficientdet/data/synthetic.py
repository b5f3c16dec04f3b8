"""Deterministic synthetic datasets a small model can learn in minutes on a CPU.

Coloured shapes (one shape and one colour family per class, so classes are separable by either
cue) of varying size and aspect ratio on muted, textured, noisy backgrounds, written as real
JPEG files with a real COCO instances JSON (or class folders). Same arguments -> same bytes:
every image draws from its own generator seeded with ``(seed, index)``.

`write_bad_coco` writes the bad-input corpus the converter tests and docs/data.md refer to.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# (class name, colour family as RGB), in class order: category id = position + 1.
SHAPES = (
    ("circle", (220, 45, 45)),
    ("square", (35, 215, 60)),
    ("triangle", (45, 85, 225)),
    ("cross", (235, 205, 35)),
    ("diamond", (205, 55, 205)),
    ("star", (35, 205, 215)),
    ("hexagon", (245, 135, 25)),
    ("lshape", (240, 240, 240)),
)
MAX_CLASSES = len(SHAPES)
JPEG_QUALITY = 92


def _polygon(shape: str, x0: float, y0: float, w: float, h: float) -> list[tuple[float, float]]:
    """Outline of ``shape`` filling the box (x0, y0, w, h)."""
    cx, cy = x0 + w / 2, y0 + h / 2
    if shape == "circle":
        return [(cx + w / 2 * math.cos(t), cy + h / 2 * math.sin(t))
                for t in np.linspace(0, 2 * math.pi, 48, endpoint=False)]
    if shape == "square":
        return [(x0, y0), (x0 + w, y0), (x0 + w, y0 + h), (x0, y0 + h)]
    if shape == "triangle":
        return [(cx, y0), (x0 + w, y0 + h), (x0, y0 + h)]
    if shape == "cross":
        a, b = w / 3, h / 3
        return [(x0 + a, y0), (x0 + 2 * a, y0), (x0 + 2 * a, y0 + b), (x0 + w, y0 + b),
                (x0 + w, y0 + 2 * b), (x0 + 2 * a, y0 + 2 * b), (x0 + 2 * a, y0 + h),
                (x0 + a, y0 + h), (x0 + a, y0 + 2 * b), (x0, y0 + 2 * b), (x0, y0 + b),
                (x0 + a, y0 + b)]
    if shape == "diamond":
        return [(cx, y0), (x0 + w, cy), (cx, y0 + h), (x0, cy)]
    if shape == "star":
        pts = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else 0.42
            t = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + r * w / 2 * math.cos(t), cy + r * h / 2 * math.sin(t)))
        return pts
    if shape == "hexagon":
        return [(cx + w / 2 * math.cos(t), cy + h / 2 * math.sin(t))
                for t in np.arange(6) * math.pi / 3]
    if shape == "lshape":
        a, b = w * 0.4, h * 0.4
        return [(x0, y0), (x0 + a, y0), (x0 + a, y0 + h - b), (x0 + w, y0 + h - b),
                (x0 + w, y0 + h), (x0, y0 + h)]
    raise ValueError(f"unknown shape {shape!r}")


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Muted low-frequency texture plus pixel noise (float32 [H, W, 3])."""
    base = rng.uniform(70, 150) + rng.uniform(-10, 10, size=3)
    gh, gw = max(2, height // 24), max(2, width // 24)
    grid = rng.normal(0, 20, size=(gh, gw, 1)) + rng.normal(0, 5, size=(gh, gw, 3))
    low = np.asarray(Image.fromarray(np.clip(grid + 128, 0, 255).astype(np.uint8)).resize(
        (width, height), Image.BICUBIC), dtype=np.float32) - 128
    fine = rng.normal(0, 9, size=(height, width, 3))
    return np.clip(base + low + fine, 0, 255).astype(np.float32)


def _draw_object(canvas: np.ndarray, rng: np.random.Generator, class_index: int,
                 box: tuple[float, float, float, float]):
    """Paint one shape; returns (bbox [x, y, w, h] ints, area, flat polygon)."""
    name, colour = SHAPES[class_index]
    h_img, w_img = canvas.shape[:2]
    poly = _polygon(name, *box)
    mask_img = Image.new("L", (w_img, h_img), 0)
    ImageDraw.Draw(mask_img).polygon(poly, fill=255)
    mask = np.asarray(mask_img) > 0
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    tint = np.clip(np.asarray(colour, np.float32) + rng.uniform(-20, 20, size=3), 0, 255)
    shade = rng.uniform(0.85, 1.1)
    canvas[mask] = np.clip(tint * shade + rng.normal(0, 6, size=(mask.sum(), 3)), 0, 255)
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    flat = [round(float(v), 2) for p in poly for v in p]
    return [x0, y0, x1 - x0, y1 - y0], int(mask.sum()), flat


def _encode_jpeg(array: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array.astype(np.uint8), "RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _check_classes(classes: int) -> None:
    if not 1 <= classes <= MAX_CLASSES:
        raise ValueError(f"classes must be 1..{MAX_CLASSES} (one per shape), got {classes}")


def make_detection_image(seed: int, index: int, classes: int, image_size: int):
    """One synthetic detection image: (jpeg bytes, width, height, objects).

    objects: list of dicts with ``category_id``, ``bbox`` [x, y, w, h], ``area``, ``polygon``.
    """
    rng = np.random.default_rng([seed, index])
    long_side = image_size
    short_side = round(image_size * rng.uniform(0.75, 1.0))
    width, height = (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)
    canvas = _background(rng, height, width)
    placed: list[tuple[float, float, float, float]] = []
    objects = []
    for _ in range(int(rng.integers(1, 5))):
        for _attempt in range(40):
            size = rng.uniform(0.12, 0.6) * min(width, height)
            aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
            w, h = size * math.sqrt(aspect), size / math.sqrt(aspect)
            if w > width - 2 or h > height - 2:
                continue
            x0, y0 = rng.uniform(1, width - w - 1), rng.uniform(1, height - h - 1)
            margin = 3
            if all(x0 + w + margin < px or px + pw + margin < x0 or y0 + h + margin < py
                   or py + ph + margin < y0 for px, py, pw, ph in placed):
                break
        else:
            continue
        class_index = int(rng.integers(0, classes))
        drawn = _draw_object(canvas, rng, class_index, (x0, y0, w, h))
        if drawn is None:
            continue
        placed.append((x0, y0, w, h))
        bbox, area, poly = drawn
        objects.append({"category_id": class_index + 1, "bbox": bbox, "area": area,
                        "polygon": poly})
    return _encode_jpeg(canvas), width, height, objects


def categories(classes: int) -> list[dict]:
    _check_classes(classes)
    return [{"id": i + 1, "name": SHAPES[i][0], "supercategory": "shape"}
            for i in range(classes)]


def write_synthetic_coco(output: str | Path, *, images: int = 64, classes: int = 4,
                         seed: int = 0, image_size: int = 256) -> Path:
    """Write ``output/images/*.jpg`` and ``output/annotations.json``; returns the JSON path."""
    _check_classes(classes)
    if images < 1:
        raise ValueError(f"images must be >= 1, got {images}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32, got {image_size}")
    out = Path(output)
    (out / "images").mkdir(parents=True, exist_ok=True)
    coco = {"info": {"description": f"effdet synthetic shapes (seed {seed})", "version": "1"},
            "licenses": [], "images": [], "annotations": [], "categories": categories(classes)}
    ann_id = 1
    for i in range(images):
        data, width, height, objects = make_detection_image(seed, i, classes, image_size)
        name = f"{i:06d}.jpg"
        (out / "images" / name).write_bytes(data)
        coco["images"].append({"id": i + 1, "file_name": name, "width": width,
                               "height": height})
        for obj in objects:
            coco["annotations"].append({
                "id": ann_id, "image_id": i + 1, "category_id": obj["category_id"],
                "bbox": obj["bbox"], "area": obj["area"], "iscrowd": 0,
                "segmentation": [obj["polygon"]]})
            ann_id += 1
    path = out / "annotations.json"
    path.write_text(json.dumps(coco, indent=1))
    return path


def write_synthetic_imagenet(output: str | Path, *, images_per_class: int = 20,
                             classes: int = 4, seed: int = 0, image_size: int = 128) -> Path:
    """Write ``output/<class name>/<class name>_NNNN.jpg``: one centred-ish shape per image."""
    _check_classes(classes)
    if images_per_class < 1:
        raise ValueError(f"images_per_class must be >= 1, got {images_per_class}")
    out = Path(output)
    for c in range(classes):
        name = SHAPES[c][0]
        (out / name).mkdir(parents=True, exist_ok=True)
        for i in range(images_per_class):
            rng = np.random.default_rng([seed, c, i])
            canvas = _background(rng, image_size, image_size)
            size = rng.uniform(0.4, 0.8) * image_size
            aspect = math.exp(rng.uniform(math.log(0.7), math.log(1.4)))
            w = min(size * math.sqrt(aspect), image_size - 4)
            h = min(size / math.sqrt(aspect), image_size - 4)
            x0 = rng.uniform(2, image_size - w - 2)
            y0 = rng.uniform(2, image_size - h - 2)
            _draw_object(canvas, rng, c, (x0, y0, w, h))
            (out / name / f"{name}_{i:04d}.jpg").write_bytes(_encode_jpeg(canvas))
    return out


# --- the bad-input corpus ------------------------------------------------------------------

def _picture(seed: int, width: int, height: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 7])
    canvas = _background(rng, height, width)
    _draw_object(canvas, rng, 0, (width * 0.2, height * 0.2, width * 0.4, height * 0.5))
    return canvas.astype(np.uint8)


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _exif_rotated_jpeg(array: np.ndarray, orientation: int) -> bytes:
    img = Image.fromarray(array, "RGB")
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(img, "JPEG", quality=95, exif=exif.tobytes())


def write_bad_coco(output: str | Path) -> Path:
    """Write a COCO set holding every bad case of docs/data.md; returns the annotations path.

    Images are 96x64 (w x h). tests/test_convert_coco.py states the outcome of each case.
    """
    out = Path(output)
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    w, h = 96, 64
    rgb = _picture(1, w, h)
    good = Image.fromarray(rgb, "RGB")
    files = {
        "good.jpg": _save(good, "JPEG", quality=95),
        "gray.png": _save(good.convert("L"), "PNG"),
        "cmyk.jpg": _save(good.convert("CMYK"), "JPEG", quality=95),
        "rgba.png": _save(good.convert("RGBA"), "PNG"),
        "palette.gif": _save(good.convert("P"), "GIF"),
        "deep16.png": _save(Image.fromarray(
            (np.asarray(good.convert("L"), np.uint16) * 257).astype(np.uint16)), "PNG"),
        # Stored 64x96 (w x h) with orientation 6: displayed 96x64 like the others.
        "rotated display.jpg": _exif_rotated_jpeg(np.ascontiguousarray(np.rot90(rgb, 1)), 6),
        "rotated_raw.jpg": _exif_rotated_jpeg(np.ascontiguousarray(np.rot90(rgb, 1)), 6),
        "negative.jpg": _save(good, "JPEG", quality=95),
        "ünï cödé file.jpg": _save(good, "JPEG", quality=95),
        "wrong_size.jpg": _save(good, "JPEG", quality=95),
        "corrupt.jpg": _save(good, "JPEG", quality=95)[:20] + bytes(range(256)) * 8,
        "truncated.jpg": _save(good, "JPEG", quality=95)[:-400],
        "notes.txt": b"this is not an image\n",
        "dup.jpg": _save(good, "JPEG", quality=95),
    }
    for name, data in files.items():
        (img_dir / name).write_bytes(data)
    # rotated_raw's boxes are given in the stored frame (64 wide, 96 high).
    images = [
        {"id": 1, "file_name": "good.jpg", "width": w, "height": h},
        {"id": 2, "file_name": "gray.png", "width": w, "height": h},
        {"id": 3, "file_name": "cmyk.jpg", "width": w, "height": h},
        {"id": 4, "file_name": "rgba.png", "width": w, "height": h},
        {"id": 5, "file_name": "palette.gif", "width": w, "height": h},
        {"id": 6, "file_name": "deep16.png", "width": w, "height": h},
        {"id": 7, "file_name": "rotated display.jpg", "width": w, "height": h},
        {"id": 8, "file_name": "rotated_raw.jpg", "width": h, "height": w},
        {"id": 9, "file_name": "corrupt.jpg", "width": w, "height": h},
        {"id": 10, "file_name": "truncated.jpg", "width": w, "height": h},
        {"id": 11, "file_name": "notes.txt", "width": w, "height": h},
        {"id": 12, "file_name": "missing.jpg", "width": w, "height": h},
        {"id": 13, "file_name": "negative.jpg", "width": w, "height": h},
        {"id": 14, "file_name": "ünï cödé file.jpg", "width": w, "height": h},
        {"id": 1, "file_name": "dup.jpg", "width": w, "height": h},
        {"id": 16, "file_name": "wrong_size.jpg", "width": 500, "height": 500},
        {"id": 17, "width": w, "height": h},
    ]
    anns = [
        # image 1: one plain box, one partly outside (clipped), one of zero width (dropped)
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20]},
        {"image_id": 1, "category_id": 2, "bbox": [80, 50, 30, 30]},
        {"image_id": 1, "category_id": 1, "bbox": [5, 5, 0, 10]},
        # image 2: one good, one negative height (dropped)
        {"image_id": 2, "category_id": 1, "bbox": [10, 10, 20, 20]},
        {"image_id": 2, "category_id": 1, "bbox": [10, 10, 20, -5]},
        # image 3: one good, one entirely outside (dropped after clipping)
        {"image_id": 3, "category_id": 2, "bbox": [10, 10, 20, 20]},
        {"image_id": 3, "category_id": 2, "bbox": [200, 200, 10, 10]},
        # image 4: one good, one unknown category (dropped)
        {"image_id": 4, "category_id": 1, "bbox": [10, 10, 20, 20]},
        {"image_id": 4, "category_id": 99, "bbox": [10, 10, 20, 20]},
        # image 5: one good, one malformed bbox (dropped)
        {"image_id": 5, "category_id": 1, "bbox": [10, 10, 20, 20]},
        {"image_id": 5, "category_id": 1, "bbox": [1, 2, 3]},
        {"image_id": 6, "category_id": 1, "bbox": [10, 10, 20, 20]},
        {"image_id": 7, "category_id": 1, "bbox": [10, 10, 20, 20]},
        # image 8: in the stored frame (64 wide, 96 high); orientation 6 maps (x, y) to
        # (96 - y, x), so the displayed box is x 46..66, y 10..30
        {"image_id": 8, "category_id": 1, "bbox": [10, 30, 20, 20]},
        # annotations of images that will be skipped
        {"image_id": 9, "category_id": 1, "bbox": [10, 10, 20, 20]},
        {"image_id": 10, "category_id": 1, "bbox": [10, 10, 20, 20]},
        {"image_id": 11, "category_id": 1, "bbox": [10, 10, 20, 20]},
        {"image_id": 12, "category_id": 1, "bbox": [10, 10, 20, 20]},
        {"image_id": 16, "category_id": 1, "bbox": [10, 10, 20, 20]},
        # image 14 (odd name): a crowd box, kept and flagged
        {"image_id": 14, "category_id": 2, "bbox": [30, 20, 40, 30], "iscrowd": 1},
        # an annotation for an image id that does not exist
        {"image_id": 999, "category_id": 1, "bbox": [10, 10, 20, 20]},
    ]
    for i, ann in enumerate(anns, start=1):
        ann["id"] = i
        ann.setdefault("iscrowd", 0)
        if len(ann["bbox"]) == 4:
            ann["area"] = float(max(ann["bbox"][2], 0) * max(ann["bbox"][3], 0))
    coco = {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}]}
    path = out / "annotations.json"
    path.write_text(json.dumps(coco, indent=1, ensure_ascii=False), encoding="utf-8")
    return path
