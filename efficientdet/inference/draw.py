"""Boxes and labels drawn onto images (Pillow), for predict's output pictures."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212))


def draw_detections(image: np.ndarray, boxes, scores, category_ids,
                    names: dict[int, str] | None = None, score_threshold: float = 0.3) -> Image.Image:
    """uint8 [H, W, 3] + boxes [D, 4] (ymin, xmin, ymax, xmax, original pixels) -> PIL image."""
    names = names or {}
    out = Image.fromarray(np.asarray(image, np.uint8)).convert("RGB")
    draw = ImageDraw.Draw(out)
    for (y0, x0, y1, x1), score, cat in zip(np.asarray(boxes).reshape(-1, 4), scores,
                                            category_ids):
        if score < score_threshold:
            continue
        color = PALETTE[int(cat) % len(PALETTE)]
        draw.rectangle([float(x0), float(y0), float(x1), float(y1)], outline=color, width=2)
        label = f"{names.get(int(cat), int(cat))} {float(score):.2f}"
        tx, ty = float(x0), max(0.0, float(y0) - 11)
        draw.rectangle([tx, ty, tx + 6 * len(label) + 2, ty + 11], fill=color)
        draw.text((tx + 1, ty), label, fill=(0, 0, 0))
    return out


def draw_classification(image: np.ndarray, top_classes, top_scores,
                        names: dict[int, str] | None = None) -> Image.Image:
    """The top-k classes written in the image's corner."""
    names = names or {}
    out = Image.fromarray(np.asarray(image, np.uint8)).convert("RGB")
    draw = ImageDraw.Draw(out)
    for i, (c, s) in enumerate(zip(top_classes, top_scores)):
        text = f"{names.get(int(c), int(c))}: {float(s):.3f}"
        draw.rectangle([2, 2 + 12 * i, 4 + 6 * len(text), 13 + 12 * i], fill=(0, 0, 0))
        draw.text((3, 2 + 12 * i), text, fill=(255, 255, 255))
    return out
