"""`effdet evaluate`: COCO mAP or top-1/top-5 of a model, or score a COCO detections file."""


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="COCO mAP or top-1/top-5 of a model, or score a COCO detections file", description="COCO mAP or top-1/top-5 of a model, or score a COCO detections file.")
    p.set_defaults(handler=run)


def run(args) -> int:
    raise SystemExit("effdet evaluate: not built yet")
