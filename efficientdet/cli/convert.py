"""`effdet convert`: convert COCO or ImageNet-style datasets to sharded TFRecords."""

from __future__ import annotations

from efficientdet import validation as v


def _common(p) -> None:
    p.add_argument("--output", required=True, help="output directory (local path or s3://)")
    p.add_argument("--shards", type=v.arg(v.PositiveInt), default=None,
                   help="number of shards (default: up to 8 for small sets, ~1000 images each)")
    p.add_argument("--workers", type=v.arg(v.PositiveInt), default=None,
                   help="decoding processes (default: CPU count, at most 8)")
    p.add_argument("--strict", action="store_true",
                   help="fail (exit 2, naming the input) instead of skipping anything")
    p.add_argument("--cache-dir", default=None,
                   help="where s3:// inputs are downloaded (default: a temp directory)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "convert", help="convert COCO or ImageNet-style datasets to sharded TFRecords",
        description="Convert COCO or ImageNet-style datasets to sharded TFRecords, "
        "label_map.json and report.json (see docs/data.md for what happens to bad input).")
    kinds = p.add_subparsers(dest="convert_command", metavar="FORMAT", required=True)
    coco = kinds.add_parser("coco", help="COCO instances JSON + image folder")
    coco.add_argument("--annotations", required=True, help="instances JSON (local or s3://)")
    coco.add_argument("--images", required=True, help="image folder (local or s3://)")
    _common(coco)
    coco.set_defaults(handler=run)
    inet = kinds.add_parser("imagenet", help="class-per-folder tree (ROOT/<class>/<image>)")
    inet.add_argument("--root", required=True, help="root folder (local or s3://)")
    _common(inet)
    inet.set_defaults(handler=run)


def run(args) -> int:
    from efficientdet.cli import UsageError
    from efficientdet.data.report import ConversionError

    common = {"num_shards": args.shards, "workers": args.workers, "strict": args.strict,
              "cache_dir": args.cache_dir, "progress": not args.no_progress}
    try:
        if args.convert_command == "coco":
            from efficientdet.data.convert_coco import convert_coco

            report = convert_coco(args.annotations, args.images, args.output, **common)
        else:
            from efficientdet.data.convert_imagenet import convert_imagenet

            report = convert_imagenet(args.root, args.output, **common)
    except (ConversionError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from exc
    images = report["images"]
    line = (f"{images['written']} of {images['input']} images written to {args.output} "
            f"({report['num_shards']} shards, {images['skipped']} skipped")
    if "annotations" in report:
        a = report["annotations"]
        line += f"; {a['written']} of {a['input']} boxes written, {a['clipped']} clipped, " \
                f"{a['dropped']} dropped"
    print(line + "); details in report.json")
    return 0
