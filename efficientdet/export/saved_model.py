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

from efficientdet.models.model_meta import ModelMeta

SIGNATURES = ("serving_default", "serving_bytes")


def export_meta(meta: ModelMeta, *, fmt: str, nms_options: dict | None = None) -> ModelMeta:
    """The artifact's `ModelMeta` plus how to call the export (written beside it as model.json).
    """
    from efficientdet.inference.detector import DETECTION_OUTPUTS

    return meta.replace(export={
        "format": fmt,
        "signatures": list(SIGNATURES),
        "inputs": {"serving_default": "images: uint8 [N, H, W, 3]",
                   "serving_bytes": "image_bytes: string [N] (encoded JPEG/PNG)"},
        "outputs": list(DETECTION_OUTPUTS) if meta.is_detector
        else ["probabilities", "top_classes", "top_scores"],
        "boxes": "ymin, xmin, ymax, xmax in original-image pixels",
        "postprocess": dict(nms_options or {}),
    })


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


def write_sidecars(directory: str | Path, meta: ModelMeta) -> None:
    """model.json (the `ModelMeta`) and label_map.json beside an export."""
    directory = Path(directory)
    (directory / "model.json").write_text(json.dumps(meta.to_dict(), indent=2, default=str))
    (directory / "label_map.json").write_text(json.dumps(meta.export_label_map, indent=2))


def export_saved_model(model, meta: ModelMeta, output_uri: str, *, nms: str = "hard",
                       max_detections: int = 100, score_threshold: float = 0.001,
                       iou_threshold: float = 0.5, pre_nms_topk: int = 5000) -> str:
    """Export an in-memory model (from an artifact) as a serving SavedModel at output_uri
    (local dir or s3:// prefix). Returns a local directory holding the export."""
    from efficientdet import storage
    from efficientdet.inference.runners import served_module

    options = {"nms": nms, "max_detections": max_detections, "score_threshold": score_threshold,
               "iou_threshold": iou_threshold, "pre_nms_topk": pre_nms_topk}
    module = served_module(model, meta, frozen=True, **options)
    local = Path(output_uri) if not storage.is_remote(output_uri) else \
        Path(tempfile.mkdtemp(prefix="effdet-export-")) / "saved_model"
    save_module(module, local)
    write_sidecars(local, export_meta(meta, fmt="saved_model",
                                      nms_options=options if meta.is_detector else None))
    if storage.is_remote(output_uri):
        storage.upload_dir(local, output_uri)
    return str(local)
