"""`effdet data`: make deterministic synthetic datasets (COCO detection, ImageNet-style folders)."""


def register(sub) -> None:
    p = sub.add_parser("data", help="make deterministic synthetic datasets (COCO detection, ImageNet-style folders)", description="Make deterministic synthetic datasets (COCO detection, ImageNet-style folders).")
    p.set_defaults(handler=run)


def run(args) -> int:
    raise SystemExit("effdet data: not built yet")
