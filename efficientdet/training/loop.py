"""``train(config)``: one training run, for detection and classification, on one process or
many Horovod ranks: the `Trainer` with the standard hooks for this rank.

Rank 0 prints progress, writes the dllogger file, the MLflow run, checkpoints, the model
artifact and ``summary.json``, and evaluates on ``data.val`` when ``evaluation.every_steps``
is set; every rank handles SIGTERM/SIGINT (the run ends after the current step with a
checkpoint) and takes part in averaging BN statistics.
"""

from __future__ import annotations

import logging

from efficientdet.training.config import TrainConfig
from efficientdet.training.hooks.base import Hook
from efficientdet.training.hooks.stop_signal import TrainingInterrupted
from efficientdet.training.trainer import Trainer, TrainingDiverged, use_deterministic_mode

__all__ = ["TrainingDiverged", "TrainingInterrupted", "standard_hooks", "train"]


def standard_hooks(config: TrainConfig, is_chief: bool) -> list[Hook]:
    """The hooks of a run, in calling order (`on_train_end`/`on_exit` run in reverse: BN
    statistics are averaged before the final checkpoint and the final evaluation, whose
    results are in the summary before the artifact and summary are written, before the logs
    close and MLflow records them)."""
    from efficientdet.training.hooks.batchnorm import BatchNormAveraging
    from efficientdet.training.hooks.checkpointing import Checkpointing
    from efficientdet.training.hooks.dllogging import DLLLogging
    from efficientdet.training.hooks.evaluation import PeriodicEvaluation
    from efficientdet.training.hooks.final_artifact import FinalArtifact
    from efficientdet.training.hooks.mlflow_tracking import MLflowTracking
    from efficientdet.training.hooks.progress import ConsoleProgress
    from efficientdet.training.hooks.stop_signal import StopOnSignal

    hooks: list[Hook] = []
    if is_chief:
        hooks.append(ConsoleProgress())
        if config.logging.mlflow:
            hooks.append(MLflowTracking(system_metrics=config.logging.system_metrics,
                                        checkpoints=config.logging.mlflow_checkpoints))
        hooks.append(DLLLogging.for_output(config.output, config.logging.dllogger_file,
                                           stdout=config.logging.dllogger_stdout))
    hooks.append(FinalArtifact())
    if is_chief and config.evaluation.every_steps:
        hooks.append(PeriodicEvaluation(config.evaluation.every_steps,
                                        config.evaluation.max_images))
    hooks += [StopOnSignal(),
              Checkpointing(config.checkpoint.every_steps, resume=config.checkpoint.resume),
              BatchNormAveraging()]
    return hooks


def train(config: TrainConfig, hooks: list[Hook] | None = None) -> dict:
    """Train from a validated `TrainConfig` (``training.config.load_config``); returns a summary
    dict: ``final_step``, ``losses``, ``images_per_second`` (total) and ``_per_rank``,
    ``model_uri``, ``checkpoint``, ``mlflow_run_id``, ``world_size``, ``weights_sha256``,
    ``resumed_from_step``. HOOKS replace `standard_hooks`.

    Raises ``TrainingInterrupted`` after SIGTERM/SIGINT (checkpoint written) and
    ``TrainingDiverged`` on a NaN loss.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"train(config): expected a TrainConfig (training.config.load_config or "
                        f"build_config), got {type(config).__name__}")
    from efficientdet.training import distributed

    if config.data.deterministic:
        use_deterministic_mode()  # before the training step is built
    ctx = distributed.init()
    if not ctx.is_chief:
        logging.getLogger().setLevel(logging.WARNING)
    _pin_gpu(ctx.local_rank)

    import keras

    previous_policy = keras.mixed_precision.global_policy().name
    try:
        trainer = Trainer(config, ctx, standard_hooks(config, ctx.is_chief)
                          if hooks is None else hooks)
        return trainer.fit()
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _pin_gpu(local_rank: int) -> None:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    if gpus:
        tf.config.set_visible_devices(gpus[local_rank % len(gpus)], "GPU")
