"""COCO box metrics with pycocotools, and the conversions into its formats.

Everything here is plain numpy + pycocotools so a detections file from any model can be scored
exactly as pycocotools scores it: the 12 standard numbers, per-class AP and the precision array
the reports draw their PR curves from.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from efficientdet import validation

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
              "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def yxyx_to_xywh(boxes) -> np.ndarray:
    """[ymin, xmin, ymax, xmax] -> COCO [x, y, width, height] (same pixel units)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack([b[:, 1], b[:, 0], b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]], axis=1)


def to_coco_detections(image_id: int, boxes, scores, category_ids,
                       num_detections: int | None = None) -> list[dict]:
    """One image's detections (boxes [ymin, xmin, ymax, xmax] in original pixels, dataset
    category ids) as COCO results-format entries."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    category_ids = np.asarray(category_ids).reshape(-1)
    n = len(scores) if num_detections is None else int(num_detections)
    xywh = yxyx_to_xywh(boxes[:n])
    return [
        {"image_id": int(image_id), "category_id": int(category_ids[i]),
         "bbox": [round(float(v), 3) for v in xywh[i]], "score": round(float(scores[i]), 5)}
        for i in range(n)
    ]


class GroundTruthBuilder:
    """Builds a COCO instances dict image by image (e.g. from TFRecords), so evaluation needs
    no annotations file. Boxes come normalized [ymin, xmin, ymax, xmax] as stored in records."""

    def __init__(self, categories: Iterable[dict] | None = None):
        self.images: list[dict] = []
        self.annotations: list[dict] = []
        self._categories = {int(c["id"]): str(c.get("name", c["id"])) for c in categories or ()}
        self._seen_ids: set[int] = set()

    def add_image(self, image_id: int, height: int, width: int, boxes, category_ids,
                  is_crowd=None, area=None, filename: str = "") -> None:
        image_id = int(image_id)
        if image_id in self._seen_ids:
            raise ValueError(f"ground truth: image id {image_id} appears twice "
                             f"(image/source_id must be unique per record)")
        self._seen_ids.add(image_id)
        self.images.append({"id": image_id, "height": int(height), "width": int(width),
                            "file_name": filename})
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scale = np.array([height, width, height, width], dtype=np.float64)
        xywh = yxyx_to_xywh(boxes * scale)
        category_ids = np.asarray(category_ids).reshape(-1)
        crowd = np.zeros(len(boxes), bool) if is_crowd is None else np.asarray(is_crowd).reshape(-1)
        areas = None if area is None else np.asarray(area, dtype=np.float64).reshape(-1)
        for i in range(len(boxes)):
            cat = int(category_ids[i])
            self._categories.setdefault(cat, str(cat))
            a = float(areas[i]) if areas is not None and len(areas) > i and areas[i] > 0 \
                else float(xywh[i, 2] * xywh[i, 3])
            self.annotations.append({
                "id": len(self.annotations) + 1, "image_id": image_id, "category_id": cat,
                "bbox": [float(v) for v in xywh[i]], "area": a, "iscrowd": int(bool(crowd[i])),
            })

    def build(self) -> dict:
        return {
            "images": list(self.images),
            "annotations": list(self.annotations),
            "categories": [{"id": k, "name": v} for k, v in sorted(self._categories.items())],
        }


@dataclass
class CocoResult:
    """Metrics of one COCO evaluation plus the arrays the reports need."""

    stats: dict[str, float]
    per_class_ap: dict[str, float | None]
    category_ids: list[int]
    category_names: list[str]
    precision: np.ndarray = field(repr=False)  # [T, R, K, A, M] from COCOeval.eval
    iou_thresholds: np.ndarray = field(repr=False)
    recall_thresholds: np.ndarray = field(repr=False)
    num_images: int = 0
    num_detections: int = 0
    summary: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"task": "detection", "metrics": dict(self.stats),
                "per_class_ap": dict(self.per_class_ap),
                "num_images": self.num_images, "num_detections": self.num_detections}


def _load_json(obj, what: str):
    if isinstance(obj, (str, Path)):
        path = Path(obj)
        if not path.is_file():
            raise FileNotFoundError(f"{what} file not found: {path}")
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{what} file {path} is not JSON: {exc}") from None
    return copy.deepcopy(obj)


class _Item(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class _Detection(_Item):
    image_id: int
    category_id: int
    bbox: validation.Box
    score: validation.Number


class _GtImage(_Item):
    id: int


class _GtCategory(_Item):
    id: int
    name: str


class _GtAnnotation(_Item):
    id: int
    image_id: int
    category_id: int
    bbox: validation.Box
    area: validation.NonNegativeNumber
    iscrowd: Literal[0, 1]


class _GroundTruth(_Item):
    images: list[_GtImage]
    annotations: list[_GtAnnotation]
    categories: list[_GtCategory] = []


def _check_ground_truth(gt: Any) -> dict:
    validation.check(gt, _GroundTruth, "annotations")
    gt.setdefault("categories", [])
    return gt


def _check_detections(dets: Any, gt_image_ids: set[int], gt_cat_ids: set[int]) -> list[dict]:
    if isinstance(dets, dict) and "annotations" in dets:
        dets = dets["annotations"]
    if not isinstance(dets, list):
        raise ValueError(  # noqa: TRY004 - bad file content, reported as a usage error
            "detections must be a list of {image_id, category_id, bbox, score} "
            "(the COCO results format)")
    validation.check(dets, list[_Detection], "detections")
    for i, d in enumerate(dets):
        if d["image_id"] not in gt_image_ids:
            raise ValueError(f"detections[{i}]: image_id {d['image_id']} is not in the "
                             f"ground truth")
        if d["category_id"] not in gt_cat_ids:
            raise ValueError(f"detections[{i}]: category_id {d['category_id']} is not a "
                             f"ground-truth category")
    return dets


def evaluate_coco(ground_truth, detections, *, max_detections: int = 100) -> CocoResult:
    """Score COCO results-format `detections` (list or path) against `ground_truth` (COCO
    instances dict or path) exactly as pycocotools does (bbox, maxDets 1/10/100)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_dict = _check_ground_truth(_load_json(ground_truth, "annotations"))
    dets = _check_detections(_load_json(detections, "detections"),
                             {im["id"] for im in gt_dict["images"]},
                             {c["id"] for c in gt_dict["categories"]})
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        gt = COCO()
        gt.dataset = gt_dict
        gt.createIndex()
        if dets:
            dt = gt.loadRes(dets)
        else:  # loadRes refuses an empty list; an empty result set is still a valid result
            dt = COCO()
            dt.dataset = {"images": gt_dict["images"], "categories": gt_dict["categories"],
                          "annotations": []}
            dt.createIndex()
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.params.maxDets = [1, 10, max_detections]
        ev.evaluate()
        ev.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        ev.summarize()
    stats = {name: float(v) for name, v in zip(STAT_NAMES, ev.stats)}
    cat_ids = list(ev.params.catIds)
    names = [str(gt.cats[c].get("name", c)) for c in cat_ids]
    precision = ev.eval["precision"]
    per_class: dict[str, float | None] = {}
    for k, name in enumerate(names):
        p = precision[:, :, k, 0, -1]  # all IoUs, all recalls, area "all", maxDets max
        p = p[p > -1]
        per_class[name if name not in per_class else f"{name}#{cat_ids[k]}"] = (
            float(np.mean(p)) if p.size else None)
    return CocoResult(stats=stats, per_class_ap=per_class, category_ids=cat_ids,
                      category_names=names, precision=precision,
                      iou_thresholds=np.asarray(ev.params.iouThrs),
                      recall_thresholds=np.asarray(ev.params.recThrs),
                      num_images=len(gt_dict["images"]), num_detections=len(dets),
                      summary=summary.getvalue())


def format_metrics(stats: dict[str, float]) -> str:
    """The 12 numbers on one line each, as a human would read them."""
    return "\n".join(f"{name:<6} {stats[name]:.4f}" if not math.isnan(stats[name])
                     else f"{name:<6} nan" for name in STAT_NAMES if name in stats)
