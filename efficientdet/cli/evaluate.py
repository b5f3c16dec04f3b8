"""`effdet evaluate`: COCO mAP or top-1/top-5 of a model, or score a COCO detections file."""

from __future__ import annotations

import json

from efficientdet import validation as v


def add_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="COCO mAP or top-1/top-5 of a model, or score a COCO detections file",
        description="Evaluate a model (artifact, SavedModel or ONNX) on converted TFRecords "
        "(--model + --data), or score a COCO results-format detections file against COCO "
        "annotations (--annotations + --detections).",
    )
    p.add_argument("--model", metavar="URI", help="model artifact dir, SavedModel dir or .onnx")
    p.add_argument("--data", metavar="URI", help="converted dataset dir (TFRecord shards)")
    p.add_argument("--annotations", metavar="FILE", help="COCO instances JSON (ground truth)")
    p.add_argument("--detections", metavar="FILE", help="COCO results-format detections JSON")
    p.add_argument("--output", metavar="DIR", help="write metrics.json, detections.json, reports")
    p.add_argument("--batch-size", type=v.arg(v.PositiveInt), default=8)
    p.add_argument("--max-images", type=v.arg(v.PositiveInt), default=None,
                   help="evaluate only the first N")
    p.add_argument("--no-report", action="store_true", help="skip PR curves / charts / HTML")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(handler=run)


HEADLINE = {"classification": ("top1", "top5"), "detection": ("AP", "AP50")}


def headline(result: dict, output: str | None, report: bool) -> str:
    """``AP 0.2310  AP50 0.4512 on 32 images; report runs/d0/eval/report.html``."""
    from efficientdet import storage

    metrics = result.get("metrics", {})
    keys = HEADLINE["classification" if result.get("task") == "classification" else "detection"]
    line = "  ".join(f"{k} {metrics[k]:.4f}" for k in keys if metrics.get(k) is not None)
    if result.get("num_images") is not None:
        line += f" on {result['num_images']} images"
    if output:
        line += (f"; report {storage.join(output, 'report.html')}" if report
                 else f"; metrics {storage.join(output, 'metrics.json')}")
    return line


def _print(result: dict, args) -> None:
    if args.json:
        print(json.dumps(result, indent=2))
        return
    from efficientdet.evaluation.coco import format_metrics

    if result.get("task") == "classification":
        for k, v in result["metrics"].items():
            print(f"{k:<6} {v:.4f}")
    else:
        print(format_metrics(result["metrics"]))
        for name, ap in result.get("per_class_ap", {}).items():
            print(f"  AP[{name}] = {'n/a' if ap is None else f'{ap:.4f}'}")
    print(headline(result, args.output, not args.no_report))


def run(args) -> int:
    from efficientdet.cli import UsageError

    file_mode = args.annotations or args.detections
    model_mode = args.model or args.data
    if file_mode and model_mode:
        raise UsageError("give either --model/--data or --annotations/--detections, not both")
    if file_mode:
        if not (args.annotations and args.detections):
            raise UsageError("--annotations and --detections go together")
        from efficientdet.evaluation.evaluate import evaluate_detections_file

        try:
            result = evaluate_detections_file(args.annotations, args.detections,
                                              output_dir=args.output,
                                              report=not args.no_report)
        except (FileNotFoundError, ValueError) as exc:
            raise UsageError(str(exc)) from None
        _print(result, args)
        return 0
    if not (args.model and args.data):
        raise UsageError("need --model and --data (or --annotations and --detections)")
    import tempfile

    from efficientdet import model_runs
    from efficientdet.evaluation.evaluate import evaluate_model

    # MLflow (when configured): the training run of the model, else a run of its own; with
    # no --output the report is written to a temp dir so the run still gets it
    with model_runs.model_run("evaluate", args.model) as run, \
            tempfile.TemporaryDirectory(prefix="effdet-evaluate-") as scratch:
        output = args.output or (scratch if run is not None else None)
        try:
            result = evaluate_model(args.model, args.data, batch_size=args.batch_size,
                                    output_dir=output, max_images=args.max_images,
                                    report=not args.no_report)
        except (FileNotFoundError, ValueError) as exc:
            raise UsageError(str(exc)) from None
        model_runs.log_evaluation(result, args.data, output)
    _print(result, args)
    return 0
