"""Predict on images, directories or TFRecords -> predictions.json and pictures with boxes.

Inputs are decoded to uint8 RGB and run through a runner (artifact, SavedModel, TF-TRT or
ONNX) in batches; detections come back in original pixels with the dataset's category ids.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from efficientdet.data.shards import PARTIAL_SUFFIX

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
TFRECORD_MARKERS = (".tfrecord", ".record")


def _is_tfrecord(path: Path) -> bool:
    """A TFRecord file, not the ``*.partial`` of a conversion in progress."""
    return (any(m in path.name for m in TFRECORD_MARKERS)
            and not path.name.endswith(PARTIAL_SUFFIX))


def iter_inputs(paths: list[str]) -> Iterator[tuple[str, np.ndarray | str]]:
    """(name, uint8 [H, W, 3]) for every image file, image in a directory, or TFRecord entry;
    (name, reason) for an input that cannot be read, so one bad file stops nothing."""
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            yield raw, "no such file or directory"
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*")
                           if p.suffix.lower() in IMAGE_EXTENSIONS or _is_tfrecord(p))
            if not files:
                yield raw, (f"no images ({', '.join(IMAGE_EXTENSIONS)}) or TFRecords in this "
                            "directory")
            yield from iter_inputs([str(p) for p in files])
        elif _is_tfrecord(path):
            yield from _iter_tfrecord(path)
        elif path.suffix.lower() in IMAGE_EXTENSIONS:
            yield str(path), _read_image(path)
        else:
            yield raw, (f"not an image ({', '.join(IMAGE_EXTENSIONS)}), a directory or a "
                        "TFRecord file")


def _read_image(path: Path) -> np.ndarray | str:
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        return f"not a readable image ({exc})"


def _iter_tfrecord(path: Path) -> Iterator[tuple[str, np.ndarray | str]]:
    import tensorflow as tf

    features = {"image/encoded": tf.io.FixedLenFeature([], tf.string),
                "image/filename": tf.io.FixedLenFeature([], tf.string, default_value="")}
    records = iter(tf.data.TFRecordDataset(str(path)))
    for i in itertools.count():
        try:
            record = next(records)
        except StopIteration:
            return
        except tf.errors.OpError as exc:
            yield f"{path}#record-{i:06d}", f"unreadable from here on ({exc.message})"
            return
        try:
            ex = tf.io.parse_single_example(record, features)
            name = ex["image/filename"].numpy().decode("utf-8", "replace") or f"record-{i:06d}"
            image = tf.io.decode_image(ex["image/encoded"], channels=3, expand_animations=False)
        except tf.errors.OpError as exc:
            yield f"{path}#record-{i:06d}", f"not a readable image record ({exc.message})"
            continue
        yield f"{path}#{name}", image.numpy()


def _safe_name(name: str, index: int) -> str:
    stem = Path(name.split("#")[-1]).stem or "image"
    return f"{index:05d}_{''.join(c if c.isalnum() or c in '-_' else '_' for c in stem)}.jpg"


def predict(model_uri: str, paths: list[str], *, output_dir: str | None = None,
            batch_size: int = 8, score_threshold: float = 0.3, top_k: int = 5,
            draw: bool = True, nms: str = "soft") -> list[dict]:
    """Run a model over inputs; returns one entry per image and, with output_dir, writes
    predictions.json and (draw=True) images/*.jpg with boxes or top-k labels. An input that
    cannot be read gets an entry ``{"image": name, "error": reason}`` and the rest go on."""
    from efficientdet.inference.draw import draw_classification, draw_detections
    from efficientdet.inference.runners import load_runner

    runner = load_runner(model_uri, nms=nms)
    out_dir = Path(output_dir) if output_dir else None
    if out_dir and draw:
        (out_dir / "images").mkdir(parents=True, exist_ok=True)
    names = runner.label_map
    results: list[dict] = []

    def run(batch: list[tuple[int, str, np.ndarray]]) -> None:
        outs = runner.predict([img for _, _, img in batch], batch_size=batch_size)
        for (index, name, img), out in zip(batch, outs):
            entry = results[index]
            if runner.task == "detection":
                keep = out["scores"] >= score_threshold
                entry["detections"] = [
                    {"category_id": int(c), "label": names.get(int(c), str(int(c))),
                     "score": round(float(s), 5),
                     "box": [round(float(v), 2) for v in b]}  # ymin, xmin, ymax, xmax
                    for b, s, c in zip(out["boxes"][keep], out["scores"][keep],
                                       out["category_ids"][keep])]
                picture = draw_detections(img, out["boxes"], out["scores"],
                                          out["category_ids"], names, score_threshold)
            else:
                classes, scores = out["top_classes"][:top_k], out["top_scores"][:top_k]
                entry["top_k"] = [{"class": int(c), "label": names.get(int(c), str(int(c))),
                                   "score": round(float(s), 5)} for c, s in zip(classes, scores)]
                picture = draw_classification(img, classes, scores, names)
            if out_dir and draw:
                target = out_dir / "images" / _safe_name(name, index)
                picture.save(target, quality=90)
                entry["drawn"] = str(target)

    pending: list[tuple[int, str, np.ndarray]] = []
    for name, item in iter_inputs(paths):
        if isinstance(item, str):
            results.append({"image": name, "error": item})
            continue
        results.append({"image": name, "height": int(item.shape[0]),
                        "width": int(item.shape[1])})
        pending.append((len(results) - 1, name, item))
        if len(pending) == batch_size:
            run(pending)
            pending = []
    if pending:
        run(pending)
    if not results:
        raise ValueError(f"no images found in {', '.join(paths)}")
    if out_dir:
        from efficientdet import storage

        storage.write_text(out_dir / "predictions.json", json.dumps(
            {"model": str(model_uri), "task": runner.task, "box_format":
             "ymin, xmin, ymax, xmax in original pixels", "predictions": results}, indent=2))
    return results
