"""`effdet benchmark`: latency p50/p90/p99 and throughput of a SavedModel, ONNX or TF-TRT model."""

from __future__ import annotations

import json

from efficientdet import validation as v


def add_parser(sub) -> None:
    p = sub.add_parser(
        "benchmark", help="latency p50/p90/p99 and throughput of a SavedModel, ONNX or TF-TRT model",
        description="Time end-to-end inference (uint8 images in, detections out) per batch size "
        "after warm-up. --model: exported SavedModel/TF-TRT dir, .onnx file or artifact dir.")
    p.add_argument("--model", required=True, metavar="URI")
    p.add_argument("--batch-sizes", default="1,8", metavar="LIST", help="e.g. 1,8,32")
    p.add_argument("--warmup", type=v.arg(v.NonNegativeInt), default=5)
    p.add_argument("--iterations", type=v.arg(v.PositiveInt), default=20)
    p.add_argument("--image-size", type=v.arg(v.PositiveInt), default=None,
                   help="input image side (default: the model's input size)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=run)


def run(args) -> int:
    from efficientdet.cli import UsageError

    try:
        sizes = [int(s) for s in args.batch_sizes.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--batch-sizes must be comma-separated integers, got "
                         f"{args.batch_sizes!r}") from None
    if not sizes or min(sizes) < 1:
        raise UsageError(f"--batch-sizes must be positive integers, got {args.batch_sizes!r}")
    from efficientdet.inference.benchmark import benchmark, format_rows

    try:
        report = benchmark(args.model, sizes, warmup=args.warmup, iterations=args.iterations,
                           image_size=(args.image_size, args.image_size) if args.image_size
                           else None)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['model']} ({report['runtime']})")
        print(format_rows(report["results"]))
    return 0
