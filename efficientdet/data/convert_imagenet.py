"""Class-per-folder image tree -> sharded classification TFRecords, label map and report.

``ROOT/<class>/**/<image>``: the class index is the position of the folder in sorted order
(docs/architecture.md). Files are taken in sorted (class, relative path) order and file ``k``
goes to shard ``k % num_shards``, so every shard holds every class and the output does not
depend on the number of workers. Same guarantees as the COCO converter (docs/data.md).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from efficientdet import storage
from efficientdet.data import images as image_io
from efficientdet.data.report import ConversionError, ConversionReport
from efficientdet.data.shards import write_dataset

log = logging.getLogger(__name__)


@dataclass
class FileTask:
    rel_path: str  # relative to the root, "/"-separated (the record's filename)
    path: str
    label: int


def list_classes(root: Path) -> list[str]:
    """Class folder names in sorted order (hidden folders are not classes)."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def plan(root: Path, report: ConversionReport) -> tuple[list[str], list[FileTask]]:
    classes = list_classes(root)
    if not classes:
        raise ConversionError(f"{root}: no class folders (expected ROOT/<class>/<image> files)")
    stray = sorted(p for p in root.iterdir() if p.is_file())
    tasks = []
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).rglob("*") if p.is_file())
        if not files:
            report.notes.append(f"class folder {name!r} is empty (index {label} kept)")
        for p in files:
            tasks.append(FileTask(rel_path=p.relative_to(root).as_posix(), path=str(p),
                                  label=label))
    report.images_input = len(tasks) + len(stray)
    for p in stray:
        report.image_skipped(p.name, "not_in_class_folder",
                             "files directly under the root have no class")
    return classes, tasks


def process_file(task: FileTask) -> dict:
    """Worker: decode one file robustly; never raises for bad input."""
    try:
        img = image_io.prepare_image(Path(task.path).read_bytes())
    except image_io.BadImage as exc:
        return {"status": "skipped", "reason": exc.reason, "detail": exc.detail}
    except OSError as exc:
        return {"status": "skipped", "reason": "unreadable_file", "detail": str(exc)}
    return {"status": "written", "encoded": img.encoded, "height": img.height,
            "width": img.width, "conversions": img.conversions}


def convert_imagenet(root: str, output: str, *, num_shards: int | None = None,
                     workers: int | None = None, strict: bool = False,
                     cache_dir: str | None = None, progress: bool = True) -> dict:
    """Convert a class-per-folder tree; returns the report (also written as ``report.json``)."""
    from efficientdet.data import schema

    start = time.monotonic()
    report = ConversionReport("classification", inputs={"root": str(root)}, output=str(output))
    local_root = storage.sync_to_local(root, cache_dir) if storage.is_remote(root) else Path(root)
    if not local_root.is_dir():
        raise ConversionError(f"{root}: not a directory")
    classes, tasks = plan(local_root, report)
    if strict and report.problems:
        p = report.problems[0]
        raise ConversionError(f"--strict: {p['input']}: skipped ({p['reason']})")
    label_map = {"task": "classification",
                 "classes": [{"id": i, "name": n} for i, n in enumerate(classes)]}

    def build(task: FileTask, res: dict) -> bytes | None:
        if res["status"] == "skipped":
            report.worker_skipped(task.rel_path, res, strict)
            return None
        report.image_written(res["conversions"])
        report.per_class[str(task.label)] += 1
        return schema.classification_example(
            encoded=res["encoded"], height=res["height"], width=res["width"],
            filename=task.rel_path, label=task.label, text=classes[task.label]).SerializeToString()

    result = write_dataset(output, tasks, process_file, build, report=report, label_map=label_map,
                           num_classes=len(classes), start=start, num_shards=num_shards,
                           workers=workers, desc="convert imagenet", progress=progress)
    log.info("converted %s -> %s\n%s", root, output, report.summary())
    return result
