"""COCO instances JSON + image folder -> sharded detection TFRecords, label map and report.

Two phases: the main process validates the JSON and pairs annotations with images (problems
found here never touch an image), then worker processes decode each image robustly, place its
boxes in the displayed frame, clip and normalize them. The main process builds the Examples
and writes image ``k`` (in image-id order) to shard ``k % num_shards``, so shard contents do not
depend on the number of workers. The policy for every bad case is in docs/data.md.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from efficientdet import storage
from efficientdet.data import images as image_io
from efficientdet.data.report import ConversionError, ConversionReport
from efficientdet.data.shards import write_dataset

log = logging.getLogger(__name__)

CLIP_TOLERANCE = 0.01  # pixels a box may stick out before it counts as clipped


@dataclass
class ImageTask:
    """One image to convert (what a worker process receives)."""

    image_id: int
    file_name: str
    path: str
    json_width: int | None
    json_height: int | None
    annotations: list[dict] = field(default_factory=list)  # id, category_id, bbox, area, iscrowd


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int_id(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def load_annotations(uri: str) -> dict:
    """Read and structurally check a COCO instances file; raises `ConversionError` naming it."""
    try:
        raw = storage.read_bytes(uri)
    except FileNotFoundError as exc:
        raise ConversionError(f"{uri}: annotations file not found") from exc
    try:
        coco = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise ConversionError(f"{uri}: not UTF-8 text ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise ConversionError(f"{uri}: not valid JSON: {exc.msg} at line {exc.lineno} "
                              f"column {exc.colno}") from exc
    if not isinstance(coco, dict):
        raise ConversionError(f"{uri}: expected a JSON object with 'images', 'annotations' and "
                              f"'categories', got {type(coco).__name__}")
    for key in ("images", "categories"):
        if not isinstance(coco.get(key), list):
            raise ConversionError(f"{uri}: '{key}' is missing or not a list (is this a COCO "
                                  "instances file?)")
    if not isinstance(coco.get("annotations", []), list):
        raise ConversionError(f"{uri}: 'annotations' is not a list")
    if not coco["categories"]:
        raise ConversionError(f"{uri}: 'categories' is empty")
    seen = set()
    for i, cat in enumerate(coco["categories"]):
        if not isinstance(cat, dict) or not _int_id(cat.get("id")) or cat["id"] < 1:
            raise ConversionError(f"{uri}: categories[{i}] needs an integer 'id' >= 1")
        if not isinstance(cat.get("name"), str):
            raise ConversionError(f"{uri}: categories[{i}] (id {cat['id']}) needs a 'name'")
        if cat["id"] in seen:
            raise ConversionError(f"{uri}: category id {cat['id']} appears twice")
        seen.add(cat["id"])
    return coco


def plan(coco: dict, images_dir: Path, report: ConversionReport) -> list[ImageTask]:
    """Pair annotations with images; count every entry the JSON holds."""
    report.images_input = len(coco["images"])
    anns = coco.get("annotations", [])
    report.anns_input = len(anns)
    categories = {c["id"] for c in coco["categories"]}
    tasks: dict[int, ImageTask] = {}
    for i, entry in enumerate(coco["images"]):
        name = entry.get("file_name") if isinstance(entry, dict) else None
        if not isinstance(entry, dict) or not _int_id(entry.get("id")) or not isinstance(
                name, str) or not name:
            report.image_skipped(name if isinstance(name, str) and name else f"images[{i}]",
                                 "malformed_image_entry", "needs an integer 'id' and a "
                                 "'file_name'")
            continue
        try:
            path = storage.resolve_inside(images_dir, name, "file_name")
        except storage.UnsafePath as exc:
            report.image_skipped(name, "path_outside_images", str(exc))
            continue
        if entry["id"] in tasks:
            report.image_skipped(name, "duplicate_image_id",
                                 f"id {entry['id']} already used by "
                                 f"{tasks[entry['id']].file_name}")
            continue
        w, h = entry.get("width"), entry.get("height")
        if any(v is not None and not (_int_id(v) and v > 0) for v in (w, h)):
            report.image_skipped(name, "malformed_image_entry", f"'width' {w!r} and 'height' "
                                 f"{h!r} must be positive integers")
            continue
        tasks[entry["id"]] = ImageTask(image_id=entry["id"], file_name=name, path=str(path),
                                       json_width=w, json_height=h)
    for j, ann in enumerate(anns):
        label = f"annotation {ann.get('id', f'[{j}]')}" if isinstance(ann, dict) else \
            f"annotations[{j}]"
        if not isinstance(ann, dict) or not _int_id(ann.get("image_id")):
            report.annotation_dropped(label, "malformed_annotation", "needs an integer "
                                      "'image_id'")
            continue
        task = tasks.get(ann["image_id"])
        if task is None:
            report.annotation_dropped(label, "unknown_image_id",
                                      f"image id {ann['image_id']} is not in 'images'")
            continue
        label = f"{label} of {task.file_name}"
        crowd = ann.get("iscrowd", 0)
        if not _int_id(ann.get("category_id")) or not _int_id(crowd) or crowd not in (0, 1):
            report.annotation_dropped(label, "malformed_annotation", "needs an integer "
                                      f"'category_id' (got {ann.get('category_id')!r}) and "
                                      f"'iscrowd' 0 or 1 (got {crowd!r})")
            continue
        if ann["category_id"] not in categories:
            report.annotation_dropped(label, "unknown_category_id",
                                      f"category id {ann['category_id']!r}")
            continue
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_number(v) for v in bbox):
            report.annotation_dropped(label, "malformed_bbox", f"bbox {bbox!r}")
            continue
        if bbox[2] <= 0 or bbox[3] <= 0:
            report.annotation_dropped(label, "non_positive_size", f"bbox {bbox!r}")
            continue
        area = ann.get("area")
        task.annotations.append({
            "label": label, "category_id": ann["category_id"], "bbox": [float(v) for v in bbox],
            "area": float(area) if _number(area) and area > 0 else float(bbox[2] * bbox[3]),
            "iscrowd": crowd == 1})
    return sorted(tasks.values(), key=lambda t: t.image_id)


def process_image(task: ImageTask) -> dict:
    """Worker: decode the image and place its boxes; never raises for bad input."""
    def skipped(reason, detail=""):
        return {"status": "skipped", "reason": reason, "detail": detail}

    path = Path(task.path)
    if not path.is_file():
        return skipped("missing_file", f"{path} does not exist")
    try:
        img = image_io.prepare_image(path.read_bytes())
    except image_io.BadImage as exc:
        return skipped(exc.reason, exc.detail)
    except OSError as exc:
        return skipped("unreadable_file", str(exc))
    json_size = (task.json_width, task.json_height)
    raw_frame = False
    if None in json_size or json_size == (img.width, img.height):
        pass  # boxes are in the displayed frame (COCO's convention)
    elif img.orientation != 1 and json_size == (img.raw_width, img.raw_height):
        raw_frame = True  # annotated on the stored pixels: move boxes to the displayed frame
    else:
        return skipped("size_mismatch", f"annotations say {task.json_width}x{task.json_height}, "
                                        f"image is {img.width}x{img.height}")
    outcomes, kept = [], []
    if task.annotations:
        xywh = np.asarray([a["bbox"] for a in task.annotations], dtype=np.float64)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        if raw_frame:
            boxes = image_io.raw_to_displayed_boxes(boxes, img.orientation, img.raw_width,
                                                    img.raw_height)
        limits = np.asarray([img.width, img.height, img.width, img.height], dtype=np.float64)
        clipped = np.clip(boxes, 0, limits)
        for a, box, cbox in zip(task.annotations, boxes, clipped):
            if cbox[2] - cbox[0] <= 0 or cbox[3] - cbox[1] <= 0:
                outcomes.append(("dropped", "outside_image", a["label"],
                                 f"box {box.round(2).tolist()} in a {img.width}x{img.height} image"))
                continue
            was_clipped = bool(np.abs(cbox - box).max() > CLIP_TOLERANCE)
            outcomes.append(("clipped" if was_clipped else "written", "", a["label"], ""))
            kept.append((cbox, a))
    norm = [[b[1] / img.height, b[0] / img.width, b[3] / img.height, b[2] / img.width]
            for b, _ in kept]
    return {
        "status": "written", "encoded": img.encoded, "height": img.height, "width": img.width,
        "conversions": img.conversions + (["boxes_from_stored_frame"] if raw_frame else []),
        "boxes": norm, "category_ids": [a["category_id"] for _, a in kept],
        "is_crowd": [a["iscrowd"] for _, a in kept], "areas": [a["area"] for _, a in kept],
        "outcomes": outcomes,
    }


def convert_coco(annotations: str, images: str, output: str, *, num_shards: int | None = None,
                 workers: int | None = None, strict: bool = False, cache_dir: str | None = None,
                 progress: bool = True) -> dict:
    """Convert a COCO detection set; returns the report (also written as ``report.json``)."""
    from efficientdet.data import schema

    start = time.monotonic()
    report = ConversionReport("detection", inputs={"annotations": str(annotations),
                                                   "images": str(images)}, output=str(output))
    coco = load_annotations(str(annotations))
    images_dir = storage.sync_to_local(images, cache_dir) if storage.is_remote(images) \
        else Path(images)
    if not images_dir.is_dir():
        raise ConversionError(f"{images}: images directory not found")
    tasks = plan(coco, images_dir, report)
    if strict and report.problems:
        p = report.problems[0]
        raise ConversionError(f"--strict: {p['input']}: {p['action']} ({p['reason']}"
                              f"{': ' + p['detail'] if p.get('detail') else ''})")
    names = {c["id"]: c["name"] for c in coco["categories"]}
    label_map = {"task": "detection",
                 "classes": [{"id": i, "name": names[i]} for i in sorted(names)]}

    def build(task: ImageTask, res: dict) -> bytes | None:
        if res["status"] == "skipped":
            report.worker_skipped(task.file_name, res, strict)
            for a in task.annotations:
                report.annotation_dropped(a["label"], "image_skipped", res["reason"])
            return None
        for status, reason, label, detail in res["outcomes"]:
            if status == "dropped":
                if strict:
                    raise ConversionError(f"--strict: {label}: dropped ({reason}: {detail})")
                report.annotation_dropped(label, reason, detail)
        kept = [o for o in res["outcomes"] if o[0] != "dropped"]
        for (status, _, label, _), cid, crowd in zip(kept, res["category_ids"], res["is_crowd"]):
            report.annotation_written(cid, clipped=status == "clipped", crowd=crowd, name=label)
        report.image_written(res["conversions"], negative=not res["boxes"])
        return schema.detection_example(
            encoded=res["encoded"], height=res["height"], width=res["width"],
            image_id=task.image_id, filename=task.file_name, boxes=res["boxes"],
            category_ids=res["category_ids"],
            category_names=[names[c] for c in res["category_ids"]],
            is_crowd=res["is_crowd"], areas=res["areas"]).SerializeToString()

    result = write_dataset(output, tasks, process_image, build, report=report, label_map=label_map,
                           num_classes=max(names), start=start, num_shards=num_shards,
                           workers=workers, desc="convert coco", progress=progress)
    log.info("converted %s -> %s\n%s", annotations, output, report.summary())
    return result
