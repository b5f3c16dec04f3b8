"""`effdet train`: train a detector or classifier, on one process or under horovodrun/mpirun."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a detector or classifier, on one process or under horovodrun/mpirun",
        description="Train a detector or classifier from a YAML recipe, on one process or as "
        "Horovod ranks (horovodrun/mpirun/MPIJob). Resumes from the latest checkpoint in the "
        "checkpoint directory. Bundled recipes: efficientdet-d0-coco, efficientnet-b0-imagenet, "
        "synth-detection, synth-classification.")
    p.add_argument("--config", required=True, metavar="FILE_OR_NAME",
                   help="a YAML recipe or config document (local file or s3:// URI), or the "
                   "name of a bundled recipe")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (dotted, YAML value), e.g. --set train.steps=100")
    p.add_argument("--output", help="shortcut for --set output=URI (local path or s3://)")
    p.add_argument("--init-model", metavar="URI",
                   help="shortcut for --set init.model=URI: start from a whole model artifact "
                   "(e.g. `effdet models import` output, models:/NAME@ALIAS)")
    p.add_argument("--init-backbone", metavar="URI",
                   help="shortcut for --set init.backbone=URI: ImageNet backbone (automl "
                   "EfficientNet checkpoint, keras.applications .h5, classifier artifact)")
    p.add_argument("--amp", action="store_true", default=None,
                   help="mixed precision (float16 + loss scaling on GPU, bfloat16 on CPU)")
    p.add_argument("--xla", action="store_true", default=None, help="XLA-compile the step")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config as YAML and exit")
    p.set_defaults(handler=run)


def run(args) -> int:
    import json

    from efficientdet.cli import UsageError
    from efficientdet.training.config import ConfigError, TrainOverrides, load_config

    flags = TrainOverrides(output=args.output, init_model=args.init_model,
                           init_backbone=args.init_backbone, amp=args.amp, xla=args.xla)
    try:
        config = load_config(args.config, args.overrides, flags)
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc
    if args.print_config:
        print(config.to_yaml(), end="")
        return 0

    import logging

    from efficientdet.training.checkpoints import CheckpointError
    from efficientdet.training.loop import TrainingDiverged, TrainingInterrupted, train

    logging.getLogger("absl").setLevel(logging.WARNING)  # TF's per-checkpoint INFO lines

    try:
        summary = train(config)
    except TrainingInterrupted as exc:
        print(f"effdet train: {exc}", flush=True)
        return exc.exit_code
    except TrainingDiverged as exc:
        print(f"effdet train: error: {exc}", flush=True)
        return 1
    except (FileNotFoundError, ConfigError, CheckpointError) as exc:
        raise UsageError(str(exc).splitlines()[0]) from exc
    if summary.get("rank", 0) == 0:
        print("summary: " + json.dumps({k: summary.get(k) for k in (
            "final_step", "losses", "images_per_second", "model_uri", "mlflow_run_id")},
            default=str), flush=True)
    return 0
