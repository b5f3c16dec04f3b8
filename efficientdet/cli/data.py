"""`effdet data`: make deterministic synthetic datasets (COCO detection, ImageNet-style folders)."""

from __future__ import annotations

from efficientdet import validation as v


def add_parser(sub) -> None:
    p = sub.add_parser(
        "data", help="make deterministic synthetic datasets (COCO detection, ImageNet-style folders)",
        description="Make deterministic synthetic datasets: coloured shapes on textured "
        "backgrounds, one shape and colour family per class. Same seed, same bytes.")
    verbs = p.add_subparsers(dest="data_command", metavar="KIND", required=True)

    coco = verbs.add_parser("synth-coco", help="COCO detection set: DIR/images/*.jpg + "
                            "DIR/annotations.json")
    coco.add_argument("--output", required=True, help="directory to write")
    coco.add_argument("--images", type=v.arg(v.PositiveInt), default=64,
                      help="number of images (default 64)")
    coco.add_argument("--classes", type=v.arg(v.PositiveInt), default=4,
                      help="number of classes, 1-8 (default 4)")
    coco.add_argument("--seed", type=int, default=0)
    coco.add_argument("--image-size", type=v.arg(v.PositiveInt), default=256,
                      help="longest image side in pixels (default 256)")
    coco.add_argument("--bad-cases", action="store_true",
                      help="write the bad-input corpus of docs/data.md instead")
    coco.set_defaults(handler=run)

    inet = verbs.add_parser("synth-imagenet", help="class-per-folder set: DIR/<class>/*.jpg")
    inet.add_argument("--output", required=True, help="directory to write")
    inet.add_argument("--images-per-class", type=v.arg(v.PositiveInt), default=20)
    inet.add_argument("--classes", type=v.arg(v.PositiveInt), default=4,
                      help="number of classes, 1-8 (default 4)")
    inet.add_argument("--seed", type=int, default=0)
    inet.add_argument("--image-size", type=v.arg(v.PositiveInt), default=128,
                      help="image side in pixels (default 128)")
    inet.set_defaults(handler=run)


def run(args) -> int:
    from efficientdet.cli import UsageError
    from efficientdet.data import synthetic

    try:
        if args.data_command == "synth-coco":
            if args.bad_cases:
                path = synthetic.write_bad_coco(args.output)
            else:
                path = synthetic.write_synthetic_coco(
                    args.output, images=args.images, classes=args.classes, seed=args.seed,
                    image_size=args.image_size)
            print(f"wrote {path} and {path.parent / 'images'}")
        else:
            out = synthetic.write_synthetic_imagenet(
                args.output, images_per_class=args.images_per_class, classes=args.classes,
                seed=args.seed, image_size=args.image_size)
            print(f"wrote {args.classes} class folders under {out}")
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    return 0
