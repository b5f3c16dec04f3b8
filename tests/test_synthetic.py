"""Synthetic datasets: deterministic bytes, valid COCO, boxes that sit on the drawn shapes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from efficientdet.cli import main
from efficientdet.data import synthetic


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_synth_coco_is_deterministic_per_seed(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        synthetic.write_synthetic_coco(tmp_path / name, images=6, classes=3, seed=seed,
                                       image_size=96)
    a, b, c = (_tree_bytes(tmp_path / n) for n in "abc")
    assert a == b
    assert a.keys() == c.keys() and a != c
    assert len([k for k in a if k.startswith("images/")]) == 6


def test_synth_coco_is_valid_coco_with_tight_boxes(tmp_path):
    from pycocotools.coco import COCO

    path = synthetic.write_synthetic_coco(tmp_path, images=24, classes=5, seed=1,
                                          image_size=128)
    coco = COCO(str(path))
    assert sorted(coco.getCatIds()) == [1, 2, 3, 4, 5]
    assert [c["name"] for c in coco.loadCats([1, 2, 3])] == ["circle", "square", "triangle"]
    seen_classes, sides = set(), []
    for img_id in coco.getImgIds():
        info = coco.loadImgs(img_id)[0]
        pixels = np.asarray(Image.open(tmp_path / "images" / info["file_name"]), np.float32)
        assert pixels.shape == (info["height"], info["width"], 3)
        assert max(info["width"], info["height"]) == 128
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
        assert 1 <= len(anns) <= 4
        inside = np.zeros(pixels.shape[:2], bool)
        for ann in anns:
            x, y, w, h = ann["bbox"]
            assert ann["iscrowd"] == 0 and 0 < ann["area"] <= w * h
            assert x >= 0 and y >= 0 and x + w <= info["width"] and y + h <= info["height"]
            sides.append(max(w, h) / min(info["width"], info["height"]))
            seen_classes.add(ann["category_id"])
            colour = np.asarray(synthetic.SHAPES[ann["category_id"] - 1][1], np.float32)
            crop = pixels[y:y + h, x:x + w]
            dist = np.linalg.norm(crop - colour, axis=-1)
            assert (dist < 90).mean() > 0.2, (info["file_name"], ann)
            # the shape touches all four sides of its box (tight box; JPEG blurs thin tips)
            edge = dist < 120
            assert edge[:2].any() and edge[-2:].any() and edge[:, :2].any() and edge[:, -2:].any()
            inside[y:y + h, x:x + w] = True
        palette = np.asarray([c for _, c in synthetic.SHAPES[:5]], np.float32)
        dist = np.linalg.norm(pixels[~inside][:, None, :] - palette[None], axis=-1).min(-1)
        assert (dist < 60).mean() < 0.02  # background does not look like any class
    assert seen_classes == {1, 2, 3, 4, 5}
    assert min(sides) < 0.3 and max(sides) > 0.45  # varied sizes


def test_synth_imagenet_layout_and_determinism(tmp_path):
    synthetic.write_synthetic_imagenet(tmp_path / "a", images_per_class=3, classes=3, seed=2,
                                       image_size=48)
    synthetic.write_synthetic_imagenet(tmp_path / "b", images_per_class=3, classes=3, seed=2,
                                       image_size=48)
    a = _tree_bytes(tmp_path / "a")
    assert a == _tree_bytes(tmp_path / "b")
    assert sorted(a) == [f"{c}/{c}_{i:04d}.jpg" for c in ("circle", "square", "triangle")
                         for i in range(3)]
    img = Image.open(tmp_path / "a" / "circle" / "circle_0000.jpg")
    assert img.format == "JPEG" and img.size == (48, 48) and img.mode == "RGB"


def test_bad_arguments_are_clear(tmp_path):
    with pytest.raises(ValueError, match="classes must be 1..8"):
        synthetic.write_synthetic_coco(tmp_path, classes=9)
    assert main(["data", "synth-coco", "--output", str(tmp_path), "--classes", "0"]) == 2


def test_cli_writes_the_documented_layout(tmp_path, capsys):
    assert main(["data", "synth-coco", "--output", str(tmp_path / "c"), "--images", "3",
                 "--classes", "2", "--image-size", "64", "--seed", "5"]) == 0
    coco = json.loads((tmp_path / "c" / "annotations.json").read_text())
    assert len(coco["images"]) == 3 and {c["id"] for c in coco["categories"]} == {1, 2}
    assert all((tmp_path / "c" / "images" / i["file_name"]).is_file() for i in coco["images"])
    assert main(["data", "synth-imagenet", "--output", str(tmp_path / "i"),
                 "--images-per-class", "2", "--classes", "2"]) == 0
    assert sorted(p.name for p in (tmp_path / "i").iterdir()) == ["circle", "square"]
    assert main(["data", "synth-coco", "--output", str(tmp_path / "bad"), "--bad-cases"]) == 0
    assert (tmp_path / "bad" / "images" / "ünï cödé file.jpg").is_file()
