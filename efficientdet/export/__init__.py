"""Export a model artifact as SavedModel, TF-TRT or ONNX, then check parity with the source."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

FORMATS = ("saved_model", "tf-trt", "onnx")


def export_model(model_uri: str, output_uri: str, *, fmt: str = "saved_model",
                 precision: str = "fp32", calibration_data: str | None = None,
                 nms: str = "hard", data_uri: str | None = None, max_ap_drop: float = 0.01,
                 max_images: int | None = None, max_detections: int = 100,
                 score_threshold: float = 0.001) -> dict[str, Any]:
    """Export the artifact at model_uri to output_uri (local dir or s3:// prefix).

    With data_uri, the exported model is evaluated against the in-memory source model on those
    records (parity); the report says whether the AP drop stays within max_ap_drop.
    Returns the report (also written as export_report.json beside the export).
    """
    from efficientdet import storage
    from efficientdet.console import timed_phase
    from efficientdet.export.saved_model import export_saved_model

    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt != "tf-trt" and precision != "fp32":
        raise ValueError(f"--precision {precision} applies to --format tf-trt only "
                         f"(ONNX: choose FP16/INT8 when building the TensorRT engine)")
    if fmt == "onnx" and nms != "hard":
        raise ValueError("--format onnx needs --nms hard (soft-NMS does not convert)")
    if fmt == "tf-trt":
        from efficientdet.export.tftrt import require_tensorrt

        require_tensorrt()  # fail before any work

    from efficientdet.models.artifact import load_artifact

    model, meta = load_artifact(model_uri)
    work = Path(tempfile.mkdtemp(prefix="effdet-export-"))
    remote = storage.is_remote(output_uri)
    out_dir = work / "out" if remote else Path(output_uri)
    options = {"nms": nms, "max_detections": max_detections, "score_threshold": score_threshold}
    # TF-TRT maps combined NMS onto TensorRT's NMS plugin; same detections as "hard".
    graph_options = {**options, "nms": "combined"} if fmt == "tf-trt" and nms == "hard" else options
    report: dict[str, Any] = {"format": fmt, "model": str(model_uri), "output": str(output_uri),
                              "precision": precision, "nms": nms}
    try:
        if fmt == "saved_model":
            with timed_phase(f"exporting the SavedModel of {meta.model}",
                             f"SavedModel written to {output_uri}"):
                export_saved_model(model, meta, str(out_dir), **options)
            runner_path = out_dir
        else:
            saved = work / "saved_model"
            with timed_phase(f"exporting the SavedModel of {meta.model} (for {fmt})",
                             "SavedModel written"):
                export_saved_model(model, meta, str(saved), **graph_options)
            if fmt == "tf-trt":
                from efficientdet.export.tftrt import convert_tftrt

                with timed_phase(f"converting to TF-TRT {precision}",
                                 f"TF-TRT model written to {output_uri}"):
                    convert_tftrt(str(saved), str(out_dir), precision=precision,
                                  calibration_data=calibration_data, image_size=meta.input_hw)
                runner_path = out_dir
            else:
                from efficientdet.export.onnx import export_onnx

                with timed_phase("converting to ONNX (tf2onnx) and checking it with "
                                 "onnxruntime", f"ONNX model written to {output_uri}"):
                    report["onnx_check"] = export_onnx(saved, out_dir)["check"]
                runner_path = out_dir / "model.onnx"
        if data_uri:
            from efficientdet.export.parity import parity_check
            from efficientdet.inference.runners import ModuleRunner, load_runner, served_module

            source = ModuleRunner(served_module(model, meta, **options), meta)
            with timed_phase(f"parity check of the {fmt} export on {data_uri}",
                             "parity check done"):
                report["parity"] = parity_check(source, load_runner(str(runner_path)),
                                                data_uri, max_ap_drop=max_ap_drop,
                                                max_images=max_images)
        else:
            report["parity"] = None
        (out_dir / "export_report.json").write_text(json.dumps(report, indent=2))
        if remote:
            storage.upload_dir(out_dir, output_uri)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report
