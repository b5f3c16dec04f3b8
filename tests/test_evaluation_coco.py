"""COCO evaluation equals pycocotools run directly, digit for digit; conversions; reports."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from efficientdet.cli import main
from efficientdet.evaluation.coco import (
    STAT_NAMES,
    GroundTruthBuilder,
    evaluate_coco,
    to_coco_detections,
    yxyx_to_xywh,
)

CATS = [{"id": 3, "name": "car"}, {"id": 17, "name": "cat"}, {"id": 88, "name": "teddy bear"}]


def _crafted(seed=0):
    """Ground truth (3 non-contiguous categories, crowd boxes, mixed sizes) and noisy
    detections given as [ymin, xmin, ymax, xmax] plus scores/categories."""
    rng = np.random.RandomState(seed)
    images, anns, dets_yxyx = [], [], []
    for image_id in (5, 42, 1000):
        h, w = int(rng.randint(200, 500)), int(rng.randint(200, 500))
        images.append({"id": image_id, "height": h, "width": w, "file_name": f"{image_id}.jpg"})
        for _ in range(rng.randint(3, 7)):
            bw, bh = rng.uniform(5, w / 2), rng.uniform(5, h / 2)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            cat = CATS[rng.randint(3)]["id"]
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat,
                         "bbox": [x, y, bw, bh], "area": bw * bh,
                         "iscrowd": int(rng.rand() < 0.1)})
            if rng.rand() < 0.8:  # a jittered true positive, sometimes the wrong class
                j = rng.normal(0, 0.1, 4) * [bw, bh, bw, bh]
                c = cat if rng.rand() < 0.8 else CATS[rng.randint(3)]["id"]
                dets_yxyx.append((image_id, [y + j[1], x + j[0], y + bh + j[3], x + bw + j[2]],
                                  float(rng.rand()), c))
        for _ in range(rng.randint(1, 4)):  # false positives
            x, y = rng.uniform(0, w - 20), rng.uniform(0, h - 20)
            dets_yxyx.append((image_id, [y, x, y + 20, x + 20], float(rng.rand() * 0.5),
                              CATS[rng.randint(3)]["id"]))
    return {"images": images, "annotations": anns, "categories": CATS}, dets_yxyx


def _pycocotools_direct(gt_path, dt_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        dt = gt.loadRes(str(dt_path))
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def test_yxyx_to_xywh():
    np.testing.assert_allclose(yxyx_to_xywh([[10, 20, 50, 80]]), [[20, 10, 60, 40]])


def test_cli_on_files_equals_pycocotools_to_the_last_digit(tmp_path, capsys):
    gt, dets_yxyx = _crafted()
    dets = []
    for image_id, box, score, cat in dets_yxyx:
        dets += to_coco_detections(image_id, [box], [score], [cat])
    gt_path, dt_path = tmp_path / "gt.json", tmp_path / "dt.json"
    gt_path.write_text(json.dumps(gt))
    dt_path.write_text(json.dumps(dets))

    ev = _pycocotools_direct(gt_path, dt_path)
    assert main(["evaluate", "--annotations", str(gt_path), "--detections", str(dt_path),
                 "--json", "--output", str(tmp_path / "out")]) == 0
    ours = json.loads(capsys.readouterr().out)
    assert [ours["metrics"][n] for n in STAT_NAMES] == [float(v) for v in ev.stats]
    assert 0.1 < ours["metrics"]["AP"] < 0.95  # a meaningful, non-degenerate score
    # per-class AP equals pycocotools' precision array averaged per category
    for k, cat in enumerate(ev.params.catIds):
        p = ev.eval["precision"][:, :, k, 0, -1]
        name = next(c["name"] for c in CATS if c["id"] == cat)
        assert ours["per_class_ap"][name] == float(np.mean(p[p > -1]))
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["metrics"] == ours["metrics"]
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "teddy bear" in html
    assert (tmp_path / "out" / "pr_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_box_conversion_matches_handwritten_xywh(tmp_path):
    """Detections converted from [ymin, xmin, ymax, xmax] score the same as hand-written COCO
    [x, y, w, h] (rounding to 3 decimals is below pycocotools' IoU resolution here)."""
    gt, dets_yxyx = _crafted(1)
    converted, handwritten = [], []
    for image_id, (y0, x0, y1, x1), score, cat in dets_yxyx:
        converted += to_coco_detections(image_id, [[y0, x0, y1, x1]], [score], [cat])
        handwritten.append({"image_id": image_id, "category_id": cat,
                            "bbox": [round(x0, 3), round(y0, 3), round(x1 - x0, 3),
                                     round(y1 - y0, 3)], "score": round(score, 5)})
    a = evaluate_coco(gt, converted).stats
    b = evaluate_coco(gt, handwritten).stats
    assert a == b


def test_wrong_category_ids_are_refused_with_a_clear_message(tmp_path, capsys):
    gt, _ = _crafted()
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    # contiguous 0-based ids instead of the dataset's category ids
    (tmp_path / "dt.json").write_text(json.dumps(
        [{"image_id": 5, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9}]))
    code = main(["evaluate", "--annotations", str(tmp_path / "gt.json"),
                 "--detections", str(tmp_path / "dt.json")])
    assert code == 2
    assert "category_id 1 is not a ground-truth category" in capsys.readouterr().err


def test_empty_detections_score_zero():
    gt, _ = _crafted()
    stats = evaluate_coco(gt, []).stats
    assert stats["AP"] == 0.0 and stats["AR100"] == 0.0


def test_ground_truth_builder_from_normalized_boxes():
    b = GroundTruthBuilder(CATS)
    b.add_image(7, 200, 400, [[0.1, 0.25, 0.5, 0.75]], [17], [False], [0.0])
    b.add_image(8, 100, 100, [[0.0, 0.0, 1.0, 1.0]], [88], [True], [1234.0])
    gt = b.build()
    a0, a1 = gt["annotations"]
    assert a0["bbox"] == pytest.approx([100, 20, 200, 80]) and a0["area"] == pytest.approx(16000)
    assert a1["iscrowd"] == 1 and a1["area"] == 1234.0
    with pytest.raises(ValueError, match="image id 7 appears twice"):
        b.add_image(7, 10, 10, [], [])


def test_perfect_detections_from_builder_score_one():
    b = GroundTruthBuilder(CATS)
    boxes = np.array([[0.1, 0.1, 0.6, 0.5], [0.3, 0.4, 0.9, 0.95]])
    b.add_image(1, 300, 500, boxes, [3, 88])
    gt = b.build()
    dets = to_coco_detections(1, boxes * [300, 500, 300, 500], [0.9, 0.8], [3, 88])
    assert evaluate_coco(gt, dets).stats["AP"] == pytest.approx(1.0)


def test_evaluate_ends_with_the_headline_and_the_report_path():
    from efficientdet.cli.evaluate import headline

    detection = {"metrics": {"AP": 0.231, "AP50": 0.45, "AP75": 0.2}, "num_images": 32}
    assert headline(detection, "runs/eval", report=True) == (
        "AP 0.2310  AP50 0.4500 on 32 images; report runs/eval/report.html")
    assert headline(detection, "runs/eval", report=False) == (
        "AP 0.2310  AP50 0.4500 on 32 images; metrics runs/eval/metrics.json")
    classifier = {"task": "classification", "metrics": {"top1": 0.5, "top5": 1.0},
                  "num_images": 8}
    assert headline(classifier, None, report=True) == "top1 0.5000  top5 1.0000 on 8 images"
