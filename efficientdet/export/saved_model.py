"""SavedModel export: pre-processing, model, NMS and rescaling in one graph.

Signatures (loadable with plain TensorFlow, no project code needed):
- ``serving_default(images: uint8 [N, H, W, 3])``: any batch, any (shared) size.
- ``serving_bytes(image_bytes: string [N])``: encoded JPEG/PNG images, each of its own size.
Detection outputs: ``boxes`` float32 [N, D, 4] (ymin, xmin, ymax, xmax in ORIGINAL-image
pixels), ``scores`` [N, D], ``category_ids`` int32 [N, D] (the dataset's ids, 0 = padding),
``num_detections`` int32 [N]. Classification: ``probabilities`` [N, K], ``top_classes``,
``top_scores`` [N, 5].
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

SIGNATURES = ("serving_default", "serving_bytes")


def _label_map(meta: dict) -> dict:
    lm = meta.get("label_map")
    if isinstance(lm, dict) and "classes" in lm:
        return lm
    if isinstance(lm, list):
        return {"task": meta.get("task", "detection"), "classes": lm}
    if isinstance(lm, dict):
        return {"task": meta.get("task", "detection"),
                "classes": [{"id": int(k), "name": v} for k, v in sorted(lm.items(), key=lambda kv: int(kv[0]))]}
    return {"task": meta.get("task", "detection"), "classes": []}


def export_meta(meta: dict, module, *, fmt: str, nms_options: dict | None = None) -> dict:
    """model.json written beside an export: the artifact's meta plus how to call the export."""
    from efficientdet.inference.detector import DETECTION_OUTPUTS

    out = dict(meta)
    out["export"] = {
        "format": fmt,
        "signatures": list(SIGNATURES),
        "inputs": {"serving_default": "images: uint8 [N, H, W, 3]",
                   "serving_bytes": "image_bytes: string [N] (encoded JPEG/PNG)"},
        "outputs": list(DETECTION_OUTPUTS) if out.get("task", "detection") == "detection"
        else ["probabilities", "top_classes", "top_scores"],
        "boxes": "ymin, xmin, ymax, xmax in original-image pixels",
        "postprocess": dict(nms_options or {}),
    }
    out["input_size"] = list(module.image_size)
    return out


def save_module(module, directory: str | Path) -> None:
    """tf.saved_model.save with both signatures (traced once each)."""
    import tensorflow as tf

    images = module.serve_images.get_concrete_function()
    encoded = module.serve_bytes.get_concrete_function()
    # Gradients are never needed from a serving graph; skipping them halves save time.
    options = tf.saved_model.SaveOptions(experimental_custom_gradients=False)
    tf.saved_model.save(module, str(directory),
                        signatures={"serving_default": images, "serving_bytes": encoded},
                        options=options)


def write_sidecars(directory: str | Path, meta: dict) -> None:
    directory = Path(directory)
    (directory / "model.json").write_text(json.dumps(meta, indent=2, default=str))
    (directory / "label_map.json").write_text(json.dumps(_label_map(meta), indent=2))


def export_saved_model(model, meta: dict, output_uri: str, *, nms: str = "hard",
                       max_detections: int = 100, score_threshold: float = 0.001,
                       iou_threshold: float = 0.5, pre_nms_topk: int = 5000) -> str:
    """Export an in-memory model (from an artifact) as a serving SavedModel at output_uri
    (local dir or s3:// prefix). Returns a local directory holding the export."""
    from efficientdet import storage
    from efficientdet.inference.runners import served_module

    options = {"nms": nms, "max_detections": max_detections, "score_threshold": score_threshold,
               "iou_threshold": iou_threshold, "pre_nms_topk": pre_nms_topk}
    module = served_module(model, meta, **options)
    local = Path(output_uri) if not storage.is_remote(output_uri) else \
        Path(tempfile.mkdtemp(prefix="effdet-export-")) / "saved_model"
    save_module(module, local)
    write_sidecars(local, export_meta(meta, module, fmt="saved_model",
                                      nms_options=options if meta.get("task", "detection")
                                      == "detection" else None))
    if storage.is_remote(output_uri):
        storage.upload_dir(local, output_uri)
    return str(local)
