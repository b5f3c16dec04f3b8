"""ONNX export of the serving graph via tf2onnx, checked with onnxruntime on CPU.

The converted graph is `serving_default` of the exported SavedModel: uint8 images [N, H, W, 3]
in, resize + pad, the model, per-class hard NMS (one NonMaxSuppression per image over
class-shifted boxes, which maps to ONNX NonMaxSuppression) and boxes in original pixels out. On GPU clusters a TensorRT engine is
built from this file with trtexec (docs/export.md). Soft-NMS does not convert; export with
--nms hard for ONNX.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

OPSET = 17
# onnxruntime vs TensorFlow on CPU, same inputs: float32 conv kernels differ in summation order.
SCORE_ATOL = 1e-4
BOX_ATOL = 0.05  # pixels (boxes are in original-image pixels)


class OnnxExportError(RuntimeError):
    """tf2onnx could not convert the graph or onnxruntime could not run it."""


def convert_saved_model(saved_model_dir: str | Path, output_path: str | Path,
                        opset: int = OPSET) -> Path:
    """tf2onnx of `serve_images` from an exported SavedModel -> output_path (.onnx)."""
    import tensorflow as tf
    import tf2onnx

    loaded = tf.saved_model.load(str(saved_model_dir))
    if not hasattr(loaded, "serve_images"):
        raise OnnxExportError(f"{saved_model_dir}: not an effdet SavedModel export "
                              f"(no serve_images function)")
    spec = tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    from efficientdet.console import native_stderr_quiet

    try:
        with native_stderr_quiet():
            tf2onnx.convert.from_function(loaded.serve_images, input_signature=[spec],
                                          opset=opset, output_path=str(output_path))
    except Exception as exc:
        raise OnnxExportError(f"tf2onnx could not convert {saved_model_dir}: {exc}") from exc
    return output_path


def match_detections(ref: dict, cand: dict, *, score_atol: float = SCORE_ATOL,
                     box_atol: float = BOX_ATOL, max_detections: int = 100) -> dict:
    """Pair one image's detections (boxes, scores, category_ids; already cut at their count)
    one to one: same class, score and box within tolerance. Order is not compared, since
    detections whose scores tie within float noise may come out in either order; for the
    same reason a detection that finds no partner is excused ("tied_at_cut") when both sides
    are full (max_detections reached) and its score ties the lowest kept score: which of
    several exactly tied boxes survive the cut is arbitrary (e.g. identical anchors over
    uniform padding)."""
    n_ref, n_cand = len(ref["scores"]), len(cand["scores"])
    used = np.zeros(n_cand, bool)
    unmatched, tied, max_score, max_box = 0, 0, 0.0, 0.0
    full = n_ref == n_cand == max_detections
    cut = min(np.min(ref["scores"], initial=np.inf), np.min(cand["scores"], initial=np.inf))
    for i in range(n_ref):
        ok = (~used & (np.asarray(cand["category_ids"]) == ref["category_ids"][i])
              & (np.abs(cand["scores"] - ref["scores"][i]) <= score_atol))
        box_diff = np.max(np.abs(cand["boxes"] - ref["boxes"][i]), axis=-1) if n_cand else []
        ok &= np.asarray(box_diff) <= box_atol
        if not ok.any():
            if full and ref["scores"][i] - cut <= score_atol:
                tied += 1
            else:
                unmatched += 1
            continue
        j = int(np.argmin(np.where(ok, box_diff, np.inf)))
        used[j] = True
        max_score = max(max_score, float(abs(cand["scores"][j] - ref["scores"][i])))
        max_box = max(max_box, float(box_diff[j]))
    return {"unmatched": unmatched + abs(n_cand - n_ref), "tied_at_cut": tied,
            "max_score_diff": max_score, "max_box_diff": max_box}


def compare_outputs(reference: dict, candidate: dict, *, score_atol: float = SCORE_ATOL,
                    box_atol: float = BOX_ATOL) -> dict:
    """Differences between two batched outputs of the same images; raises when detections do
    not pair up within the tolerances (see match_detections)."""
    from efficientdet.inference.runners import split_outputs

    ref = {k: np.asarray(v) for k, v in reference.items()}
    cand = {k: np.asarray(v) for k, v in candidate.items()}
    if "num_detections" not in ref:  # classifier
        diff = float(np.max(np.abs(ref["probabilities"] - cand["probabilities"])))
        if diff > score_atol:
            raise OnnxExportError(f"ONNX probabilities differ by {diff:.2e} > {score_atol}")
        return {"max_probability_diff": diff}
    report = {"unmatched": 0, "tied_at_cut": 0, "max_score_diff": 0.0, "max_box_diff": 0.0,
              "detections": int(ref["num_detections"].sum())}
    for r, c in zip(split_outputs("detection", ref), split_outputs("detection", cand)):
        m = match_detections(r, c, score_atol=score_atol, box_atol=box_atol,
                             max_detections=ref["boxes"].shape[1])
        report["unmatched"] += m["unmatched"]
        report["tied_at_cut"] += m["tied_at_cut"]
        report["max_score_diff"] = max(report["max_score_diff"], m["max_score_diff"])
        report["max_box_diff"] = max(report["max_box_diff"], m["max_box_diff"])
    if report["unmatched"]:
        raise OnnxExportError(f"ONNX outputs differ from TensorFlow beyond tolerance "
                              f"(scores {score_atol}, boxes {box_atol} px): {report}")
    return report


def check_with_onnxruntime(onnx_path: str | Path, saved_model_dir: str | Path,
                           images: np.ndarray) -> dict:
    """Run the ONNX file with onnxruntime (CPU) and the SavedModel on the same uint8 batch and
    compare (see compare_outputs)."""
    import tensorflow as tf

    from efficientdet.inference.runners import OnnxRunner

    tf_out = tf.saved_model.load(str(saved_model_dir)).signatures["serving_default"](
        images=tf.constant(images, tf.uint8))
    onnx_out = OnnxRunner(onnx_path).run_batch(images)
    return compare_outputs({k: v.numpy() for k, v in tf_out.items()}, onnx_out)


def export_onnx(saved_model_dir: str | Path, output_dir: str | Path, *, opset: int = OPSET,
                check_images: np.ndarray | None = None) -> dict:
    """Convert an exported SavedModel to output_dir/model.onnx (+ model.json, label_map.json)
    and verify it with onnxruntime. Returns {"path", "check"}."""
    saved_model_dir, output_dir = Path(saved_model_dir), Path(output_dir)
    from efficientdet.export.saved_model import write_sidecars
    from efficientdet.models.artifact import read_meta

    meta = read_meta(str(saved_model_dir))
    export = dict(meta.export or {})
    if (export.get("postprocess") or {}).get("nms") == "soft":
        raise OnnxExportError("soft-NMS does not convert to ONNX; export with --nms hard")
    path = convert_saved_model(saved_model_dir, output_dir / "model.onnx", opset)
    export.update(format="onnx", signatures=["images"],
                  onnx={"opset": opset, "file": "model.onnx",
                        "tolerance": {"scores": SCORE_ATOL, "boxes_px": BOX_ATOL}})
    write_sidecars(output_dir, meta.replace(export=export))
    if check_images is None:
        h, w = meta.input_hw
        check_images = np.random.RandomState(0).randint(0, 256, (2, h, w, 3)).astype(np.uint8)
    return {"path": str(path), "check": check_with_onnxruntime(path, saved_model_dir,
                                                                check_images)}
