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
from efficientdet.evaluation.report_page import ReportHeader
from efficientdet.inference.runners import batched

log = logging.getLogger(__name__)
NUM_SAMPLES = 8  # images kept for the report's sample grid
# Detector settings of every COCO evaluation (`effdet evaluate` and evaluation during
# training): top-5000 candidates, per-class hard NMS, 100 detections, scores from 0.001.
COCO_EVAL_POSTPROCESS = {"nms": "hard", "max_detections": 100, "pre_nms_topk": 5000,
                         "score_threshold": 0.001}


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
    from efficientdet.evaluation.classification import ConfusionCounts, TopKAccumulator

    files, label_map = dataset.local_shards(), dataset.label_map
    if runner.task == "classification":
        acc, confusion = TopKAccumulator((1, 5)), None
        for batch in batched(_records(files, "classification", max_images), batch_size):
            outs = runner.predict([ex["image"] for ex in batch], batch_size=batch_size)
            probabilities = np.stack([o["probabilities"] for o in outs])
            labels = np.array([ex["label"] for ex in batch])
            acc.update(probabilities, labels)
            confusion = confusion or ConfusionCounts(probabilities.shape[1])
            confusion.update(np.argmax(probabilities, axis=1), labels)
        names = (label_map.names if label_map else {}) or runner.label_map
        return {"result": {"task": "classification", "metrics": acc.result(),
                           "num_images": acc.count,
                           "per_class_accuracy": {
                               names.get(k, str(k)): a
                               for k, a in enumerate(confusion.per_class_accuracy())}},
                "confusion": confusion, "class_names": names}

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
                                "filename": ex["filename"].decode(errors="replace"),
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


def report_header(model_uri: str, data_uri: str, meta=None,
                  run_id: str | None = None) -> ReportHeader:
    """The report's header: ``run_id`` (else the active MLflow run) and, from the model's
    ``meta`` (ModelMeta) when known, its variant, input size, classes and training run."""
    from efficientdet import tracking

    config, training_run = "", None
    if meta is not None:
        config = f"{meta.model}, {meta.image_size}x{meta.image_size}, " \
                 f"{meta.num_classes} classes"
        if meta.overrides:
            config += ", overrides " + ", ".join(f"{k}={v}" for k, v in
                                                 sorted(meta.overrides.items()))
        training_run = meta.training.get("mlflow_run_id") or None
    return ReportHeader(model=str(model_uri), data=str(data_uri), config=config,
                        run_id=run_id or tracking.active_run_id() or training_run,
                        training_run_id=training_run)


def _write_outputs(output_dir: str | None, evaluation: dict, report: bool,
                   header: ReportHeader) -> None:
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
        write_report(output_dir, evaluation["coco"], evaluation.get("samples", []), names,
                     header)
    if report and evaluation.get("confusion") is not None:
        from efficientdet.evaluation.classification_report import write_classification_report

        write_classification_report(output_dir, evaluation["confusion"],
                                    evaluation["result"]["metrics"],
                                    evaluation["class_names"], header)


def evaluate_model(model_uri: str, data_uri: str, *, batch_size: int = 8,
                   output_dir: str | None = None, max_images: int | None = None,
                   report: bool = True, run_id: str | None = None) -> dict[str, Any]:
    """Metrics of a model on a converted dataset (COCO eval settings: top-5000 candidates,
    per-class hard NMS, 100 detections; artifacts carry EMA weights). Writes metrics.json,
    detections.json and the report to output_dir when given; returns the metrics dict.
    ``run_id``: the MLflow run the report's header names (default: the active run, else the
    run that trained the model)."""
    from efficientdet.inference.runners import load_runner

    with ConvertedDataset.open(data_uri) as dataset:
        dataset.shards  # noqa: B018 - a bad --data fails before a model is loaded
        runner = load_runner(model_uri, **COCO_EVAL_POSTPROCESS)
        evaluation = evaluate_runner(runner, data_uri, batch_size=batch_size,
                                     max_images=max_images, dataset=dataset)
    evaluation["result"]["model"] = str(model_uri)
    evaluation["result"]["data"] = str(data_uri)
    _write_outputs(output_dir, evaluation, report,
                   report_header(model_uri, data_uri, runner.meta, run_id))
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
                       report, report_header(detections, annotations))
    return result
