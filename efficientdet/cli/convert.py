"""`effdet convert`: convert COCO or ImageNet-style datasets to sharded TFRecords."""


def register(sub) -> None:
    p = sub.add_parser("convert", help="convert COCO or ImageNet-style datasets to sharded TFRecords", description="Convert COCO or ImageNet-style datasets to sharded TFRecords.")
    p.set_defaults(handler=run)


def run(args) -> int:
    raise SystemExit("effdet convert: not built yet")
