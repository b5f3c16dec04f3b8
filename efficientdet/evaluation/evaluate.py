"""Evaluate a model (artifact, SavedModel, TF-TRT or ONNX) on converted TFRecords, or score a
detections file. Ground truth is rebuilt from the records themselves (boxes in original pixels,
category ids, areas, crowd flags), so no annotations file is needed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from efficientdet.data.dataset import ConvertedDataset
from efficientdet.evaluation.coco import GroundTruthBuilder, evaluate_coco, to_coco_detections
from efficientdet.inference.runners import batched

log = logging.getLogger(__name__)
NUM_SAMPLES = 8  # images kept for the report's sample grid


def _records(files: list[str], task: str, max_images: int | None):
    import tensorflow as tf

    from efficientdet.data import schema

    parse = (schema.parse_detection_example if task == "detection"
             else schema.parse_classification_example)
    ds = tf.data.TFRecordDataset(files).map(parse, num_parallel_calls=2)
    if max_images:
        ds = ds.take(int(max_images))
    yield from ds.as_numpy_iterator()


def evaluate_runner(runner, data_uri: str, *, batch_size: int = 8,
                    max_images: int | None = None,
                    dataset: ConvertedDataset | None = None) -> dict[str, Any]:
    """Run `runner` (inference.runners) over a dataset and score it. Returns a dict with
    "result" (metrics as JSON-able dict), and for detection "coco" (CocoResult),
    "detections" (COCO results list), "ground_truth" (COCO dict) and "samples".
    ``dataset``: ``data_uri`` opened already (the caller closes it); else it is opened and
    its downloads removed here."""
    if dataset is None:
        with ConvertedDataset.open(data_uri) as opened:
            return evaluate_runner(runner, data_uri, batch_size=batch_size,
                                   max_images=max_images, dataset=opened)
    from efficientdet.evaluation.classification import TopKAccumulator

    files, label_map = dataset.local_shards(), dataset.label_map
    if runner.task == "classification":
        acc = TopKAccumulator((1, 5))
        for batch in batched(_records(files, "classification", max_images), batch_size):
            outs = runner.predict([ex["image"] for ex in batch], batch_size=batch_size)
            acc.update(np.stack([o["probabilities"] for o in outs]),
                       np.array([ex["label"] for ex in batch]))
        return {"result": {"task": "classification", "metrics": acc.result(),
                           "num_images": acc.count}}

    gt = GroundTruthBuilder(label_map.to_dict()["classes"] if label_map else None)
    detections: list[dict] = []
    samples: list[dict] = []
    for batch in batched(_records(files, "detection", max_images), batch_size):
        outs = runner.predict([ex["image"] for ex in batch], batch_size=batch_size)
        for ex, out in zip(batch, outs):
            image_id = int(ex["image_id"])
            h, w = ex["image"].shape[:2]
            gt.add_image(image_id, h, w, ex["boxes"], ex["category_ids"], ex["is_crowd"],
                         ex["area"], ex["filename"].decode())
            detections.extend(to_coco_detections(image_id, out["boxes"], out["scores"],
                                                 out["category_ids"]))
            if len(samples) < NUM_SAMPLES:
                scale = np.array([h, w, h, w], np.float32)
                samples.append({"image": ex["image"], "image_id": image_id,
                                "pred_boxes": out["boxes"], "pred_scores": out["scores"],
                                "pred_category_ids": out["category_ids"],
                                "true_boxes": ex["boxes"].reshape(-1, 4) * scale,
                                "true_category_ids": ex["category_ids"]})
    ground_truth = gt.build()
    if not ground_truth["images"]:
        raise ValueError(f"--data {data_uri}: the records hold no images")
    coco = evaluate_coco(ground_truth, detections)
    return {"result": coco.as_dict(), "coco": coco, "detections": detections,
            "ground_truth": ground_truth, "samples": samples}


def _write_outputs(output_dir: str | None, evaluation: dict, report: bool) -> None:
    if not output_dir:
        return
    from efficientdet import storage

    storage.write_text(storage.join(output_dir, "metrics.json"),
                       json.dumps(evaluation["result"], indent=2))
    if "detections" in evaluation:
        storage.write_text(storage.join(output_dir, "detections.json"),
                           json.dumps(evaluation["detections"]))
    if report and "coco" in evaluation:
        from efficientdet.evaluation.reports import write_report

        names = {c["id"]: c["name"] for c in evaluation["ground_truth"]["categories"]}
        write_report(output_dir, evaluation["coco"], evaluation.get("samples", []), names)


def evaluate_model(model_uri: str, data_uri: str, *, batch_size: int = 8,
                   output_dir: str | None = None, max_images: int | None = None,
                   report: bool = True) -> dict[str, Any]:
    """Metrics of a model on a converted dataset (COCO eval settings: top-5000 candidates,
    per-class hard NMS, 100 detections; artifacts carry EMA weights). Writes metrics.json,
    detections.json and the report to output_dir when given; returns the metrics dict."""
    from efficientdet.inference.runners import load_runner

    with ConvertedDataset.open(data_uri) as dataset:
        dataset.shards  # noqa: B018 - a bad --data fails before a model is loaded
        runner = load_runner(model_uri, nms="hard", max_detections=100, pre_nms_topk=5000,
                             score_threshold=0.001)
        evaluation = evaluate_runner(runner, data_uri, batch_size=batch_size,
                                     max_images=max_images, dataset=dataset)
    evaluation["result"]["model"] = str(model_uri)
    evaluation["result"]["data"] = str(data_uri)
    _write_outputs(output_dir, evaluation, report)
    return evaluation["result"]


def evaluate_detections_file(annotations: str, detections: str, *,
                             output_dir: str | None = None,
                             report: bool = True) -> dict[str, Any]:
    """Score a COCO results-format file exactly as pycocotools does."""
    coco = evaluate_coco(annotations, detections)
    result = coco.as_dict()
    if output_dir:
        gt = json.loads(Path(annotations).read_text())
        _write_outputs(output_dir, {"result": result, "coco": coco, "ground_truth": gt},
                       report)
    return result
