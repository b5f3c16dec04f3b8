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
    p.add_argument("--dllogger-stdout", action="store_true",
                   help="also print the DLLL JSON lines (NVIDIA dllogger format) on stdout; "
                   "they are always written to logging.dllogger_file (<output>/dllogger.json)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config as YAML and exit")
    p.set_defaults(handler=run)


def summary_lines(summary: dict, seconds: float, config) -> list[str]:
    """The closing lines of a run: what was trained, how fast, and where everything is."""
    from efficientdet import console
    from efficientdet.storage import join
    from efficientdet.training.hooks.progress import format_values

    values = format_values(summary.get("losses") or {})
    rate = summary.get("images_per_second")
    dlll = config.logging.dllogger_file or join(config.output, "dllogger.json")
    lines = [f"trained {summary.get('model')} for {summary.get('final_step')} steps in "
             f"{console.format_duration(seconds)} on {summary.get('world_size')} rank(s)"
             + (f", {rate:.1f} img/s" if rate else "") + (f": {values}" if values else ""),
             (f"model: {summary.get('model_uri')}  (summary "
              f"{join(config.output, 'summary.json')}, DLLL log {dlll})")]
    if summary.get("checkpoint"):
        lines.append(f"last checkpoint: {summary['checkpoint']}")
    if summary.get("mlflow_run_id"):
        lines.append(f"MLflow run: {summary['mlflow_run_id']}")
    return lines


def run(args) -> int:
    import time

    from efficientdet.cli import UsageError
    from efficientdet.training.config import ConfigError, TrainOverrides, load_config

    flags = TrainOverrides(output=args.output, init_model=args.init_model,
                           init_backbone=args.init_backbone, amp=args.amp, xla=args.xla)
    if args.dllogger_stdout:
        args.overrides = [*args.overrides, "logging.dllogger_stdout=true"]
    try:
        config = load_config(args.config, args.overrides, flags)
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc
    if args.print_config:
        print(config.to_yaml(), end="")
        return 0

    from efficientdet.training.checkpoints import CheckpointError
    from efficientdet.training.loop import TrainingDiverged, TrainingInterrupted, train

    start = time.monotonic()
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
        print("\n".join(summary_lines(summary, time.monotonic() - start, config)),
              flush=True)
    return 0
