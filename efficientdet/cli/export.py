"""`effdet export`: export a model as SavedModel, TF-TRT or ONNX, with a parity check."""

from __future__ import annotations

import json
import sys

from efficientdet import validation as v


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export", help="export a model as SavedModel, TF-TRT or ONNX, with a parity check",
        description="Export a model artifact as a serving SavedModel (uint8 images or encoded "
        "bytes in, boxes in original pixels out), TF-TRT (NGC image with a GPU) or ONNX. With "
        "--data, the export is evaluated against the source model and an AP drop larger than "
        "--max-ap-drop fails the command (exit 1).")
    p.add_argument("--model", required=True, metavar="URI", help="model artifact dir")
    p.add_argument("--output", required=True, metavar="URI", help="output dir (local or s3://)")
    p.add_argument("--format", default="saved_model", choices=("saved_model", "tf-trt", "onnx"))
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "int8"),
                   help="TF-TRT precision")
    p.add_argument("--calibration-data", metavar="URI", help="TFRecords for INT8 calibration")
    p.add_argument("--nms", default="hard", choices=("hard", "soft"))
    p.add_argument("--max-detections", type=v.arg(v.PositiveInt), default=100)
    p.add_argument("--score-threshold", type=v.arg(v.Probability, float), default=0.001)
    p.add_argument("--data", metavar="URI", help="eval TFRecords for the parity check")
    p.add_argument("--max-ap-drop", type=v.arg(v.Probability, float), default=0.01,
                   help="largest allowed AP (or top-1) drop, absolute (default 0.01)")
    p.add_argument("--max-images", type=v.arg(v.PositiveInt), default=None,
                   help="parity on the first N images")
    p.add_argument("--json", action="store_true", help="print the export report as JSON")
    p.set_defaults(handler=run)


def onnx_check_line(check: dict) -> str:
    """``passed: 200 detections, max score diff 3.1e-06, max box diff 0.0012 px``."""
    if "max_probability_diff" in check:
        return f"passed: max probability diff {check['max_probability_diff']:.2g}"
    return (f"passed: {check['detections']} detections, max score diff "
            f"{check['max_score_diff']:.2g}, max box diff {check['max_box_diff']:.2g} px"
            + (f", {check['tied_at_cut']} tied at the cut" if check.get("tied_at_cut") else ""))


def run(args) -> int:
    import time

    from efficientdet import model_runs, tracking
    from efficientdet.cli import UsageError
    from efficientdet.export import export_model
    from efficientdet.export.onnx import OnnxExportError
    from efficientdet.export.tftrt import TensorRTUnavailable

    # MLflow (when configured): the training run of the model (its status kept), else a run of
    # its own, which a failed conversion ends FAILED with the reason as a tag
    try:
        with model_runs.model_run("export", args.model):
            started = time.monotonic()
            try:
                report = export_model(args.model, args.output, fmt=args.format,
                                      precision=args.precision,
                                      calibration_data=args.calibration_data, nms=args.nms,
                                      data_uri=args.data, max_ap_drop=args.max_ap_drop,
                                      max_images=args.max_images,
                                      max_detections=args.max_detections,
                                      score_threshold=args.score_threshold)
            except (TensorRTUnavailable, OnnxExportError) as exc:
                tracking.set_tags({f"effdet.export.{args.format}.error": str(exc)[:500]})
                raise
            except (FileNotFoundError, ValueError) as exc:
                raise UsageError(str(exc)) from None
            model_runs.log_export(report, args.output, time.monotonic() - started)
    except (TensorRTUnavailable, OnnxExportError) as exc:
        print(f"effdet export: {exc}", file=sys.stderr)
        return 1
    parity = report.get("parity")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"exported {args.format} to {args.output}")
        if "onnx_check" in report:
            print(f"onnxruntime check: {onnx_check_line(report['onnx_check'])}")
        if parity is None:
            print("parity check: not run (no --data given)")
    if parity is not None:
        line = (f"parity {parity['metric']}: source {parity['source']:.4f}, exported "
                f"{parity['exported']:.4f}, drop {parity['drop']:+.4f} "
                f"(max {parity['max_drop']})")
        if not args.json:
            print(line)
        if not parity["passed"]:
            print(f"effdet export: parity check failed: {line}", file=sys.stderr)
            return 1
    return 0
