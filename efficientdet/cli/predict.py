"""`effdet predict`: detections (or top-k classes) for images, directories or TFRecords."""

from __future__ import annotations

import json
import sys

from efficientdet import validation as v


def add_parser(sub) -> None:
    p = sub.add_parser(
        "predict", help="detections or top-k classes for images, directories or TFRecords",
        description="Run a model (artifact, exported SavedModel, TF-TRT or ONNX) over image "
        "files, directories of images or TFRecord files; writes predictions.json and images "
        "with boxes drawn to --output.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image, directory or TFRecord")
    p.add_argument("--model", required=True, metavar="URI")
    p.add_argument("--output", metavar="DIR", help="write predictions.json and images/ here")
    p.add_argument("--batch-size", type=v.arg(v.PositiveInt), default=8)
    p.add_argument("--score-threshold", type=v.arg(v.Probability, float), default=0.3)
    p.add_argument("--top-k", type=v.arg(v.PositiveInt), default=5,
                   help="classes per image (classifiers)")
    p.add_argument("--nms", default="soft", choices=("hard", "soft"),
                   help="for artifacts (exports carry their own)")
    p.add_argument("--json", action="store_true", help="print predictions as JSON")
    p.add_argument("--strict", action="store_true",
                   help="exit 2 when any input cannot be read (default: report it, go on)")
    p.set_defaults(handler=run)


def run(args) -> int:
    from efficientdet.cli import UsageError
    from efficientdet.inference.predict import predict

    try:
        results = predict(args.model, args.paths, output_dir=args.output,
                          batch_size=args.batch_size, score_threshold=args.score_threshold,
                          top_k=args.top_k, nms=args.nms)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    errors = [r for r in results if "error" in r]
    for r in errors:
        print(f"effdet predict: skipped {r['image']}: {r['error']}", file=sys.stderr)
    if len(errors) == len(results):
        raise UsageError(f"none of the {len(results)} inputs could be read")
    if errors and args.strict:
        raise UsageError(f"--strict: {len(errors)} of {len(results)} inputs could not be read, "
                         f"first {errors[0]['image']}")
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        if "error" in r:
            print(f"{r['image']}: error: {r['error']}")
        elif "detections" in r:
            print(f"{r['image']}: {len(r['detections'])} detections"
                  + "".join(f"\n  {d['label']} {d['score']:.3f} {d['box']}"
                            for d in r["detections"][:10]))
        else:
            print(f"{r['image']}: " + ", ".join(f"{t['label']} {t['score']:.3f}"
                                                for t in r["top_k"]))
    if args.output:
        print(f"wrote {args.output}/predictions.json")
    return 0
