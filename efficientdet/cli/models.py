"""`effdet models`: list model variants, describe one, import pretrained weights."""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser(
        "models",
        help="list model variants and describe one (parameters, GMACs, anchors)",
        description="List model variants and describe one (parameters, GMACs, anchors).",
    )
    verbs = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    ls = verbs.add_parser("list", help="table of variants: name, input size, parameters")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.set_defaults(handler=run_list)
    d = verbs.add_parser("describe", help="parameters, GMACs, anchors and levels of one variant")
    d.add_argument("name", help="variant name, e.g. efficientdet-d0 (see `effdet models list`)")
    d.add_argument("--json", action="store_true", help="print JSON")
    d.add_argument("--num-classes", type=int, default=None, help="classes (default 90 / 1000)")
    d.add_argument("--image-size", type=int, default=None, help="square input size (default native)")
    d.set_defaults(handler=run_describe)
    i = verbs.add_parser(
        "import", help="turn google/automl pretrained weights into a model artifact",
        description="Import google/automl weights (TF1 checkpoint folder or prefix, the "
        "published .tar.gz, or automl's Keras .h5; local or s3://) into a model artifact that "
        "evaluate/export/predict/benchmark and `train --init-model` take. Every variable is "
        "mapped by rule and shape-checked; anything missing or left over is an error.")
    i.add_argument("--from", dest="source_format", required=True, choices=("automl",),
                   help="where the weights come from")
    i.add_argument("--model", required=True, metavar="NAME",
                   help="efficientdet-d0..d7x, or efficientnet-b0..b7 (ImageNet classifier)")
    i.add_argument("--weights", required=True, metavar="PATH",
                   help="checkpoint folder/prefix, .tar.gz or .h5 (local or s3://)")
    i.add_argument("--output", required=True, metavar="DIR", help="artifact directory or s3://")
    i.add_argument("--no-ema", dest="use_ema", action="store_false",
                   help="take the raw variables, not their ExponentialMovingAverage shadows")
    i.add_argument("--allow-missing", metavar="REGEX", default=None,
                   help="automl variable names (regex search) that may be missing or unused")
    i.add_argument("--image-size", type=int, default=None, help="input size (default native)")
    i.set_defaults(handler=run_import)
    p.set_defaults(handler=run_list, json=False)


def run_list(args) -> int:
    from efficientdet.models import get_config, list_models
    from efficientdet.models.summary import analytic_params

    rows = []
    for name in list_models():
        cfg = get_config(name)
        trainable, total = analytic_params(name)  # from the config: no model build needed
        rows.append({"name": name, "task": cfg.task, "input_size": cfg.image_size,
                     "trainable_params": trainable, "total_params": total})
    if getattr(args, "json", False):
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':<18} {'task':<15} {'input':>5} {'trainable params':>17} {'total params':>13}")
    for r in rows:
        print(f"{r['name']:<18} {r['task']:<15} {r['input_size']:>5} "
              f"{r['trainable_params']:>17,} {r['total_params']:>13,}")
    return 0


def run_describe(args) -> int:
    from efficientdet.cli import UsageError
    from efficientdet.models import get_config
    from efficientdet.models.summary import describe

    try:
        get_config(args.name)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.num_classes is not None and args.num_classes < 1:
        raise UsageError(f"--num-classes must be >= 1, got {args.num_classes}")
    if args.image_size is not None and args.image_size < 32:
        raise UsageError(f"--image-size must be >= 32, got {args.image_size}")
    try:
        info = describe(args.name, num_classes=args.num_classes, image_size=args.image_size)
    except ValueError as exc:  # e.g. an image size that does not fit the pyramid
        raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['name']} ({info['task']})")
    print(f"  input size        {info['input_size']} x {info['input_size']} x 3 (RGB, 0-255)")
    print(f"  classes           {info['num_classes']}")
    print(f"  trainable params  {info['trainable_params']:,}")
    print(f"  total params      {info['total_params']:,} (incl. BN moving statistics)")
    print(f"  GMACs             {info['gmacs']:.3f} per image")
    if info["num_anchors"] is not None:
        print(f"  anchors           {info['num_anchors']:,} per image ({info['backbone']} backbone)")
        for lvl in info["levels"]:
            print(f"    P{lvl['level']}  stride {lvl['stride']:>3}  {lvl['size']:>3} x {lvl['size']:<3}"
                  f"  {lvl['anchors']:>7,} anchors")
    else:
        taps = ", ".join(f"C{lvl['level']} {lvl['size']}x{lvl['size']}" for lvl in info["levels"])
        print(f"  feature taps      {taps}")
    return 0


def run_import(args) -> int:
    from efficientdet.cli import UsageError
    from efficientdet.models.automl_import import import_automl

    try:
        result = import_automl(args.model, args.weights, args.output, use_ema=args.use_ema,
                               allow_missing=args.allow_missing, image_size=args.image_size)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc).splitlines()[0]) from None
    print(f"imported {result['summary']}")
    print(f"wrote {args.output} ({result['model']}, {result['num_classes']} classes, "
          f"{result['image_size']} px)")
    return 0
