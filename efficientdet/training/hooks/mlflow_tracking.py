"""The run's MLflow record (`efficientdet.tracking`): params, metrics, the model, logs and,
when asked (``logging.mlflow_checkpoints``), the last checkpoint."""

from __future__ import annotations

import tempfile
from pathlib import Path

from efficientdet import storage, tracking
from efficientdet.run_identity import RunSubject
from efficientdet.training.hooks.base import Hook

# what the run's final metrics take from summary.json (beside the throughput)
FINAL_METRICS = ("train_time_s", "params", "gmacs")


class MLflowTracking(Hook):
    """Opens the ``train`` step run (named and tagged after the variant and the training data)
    with the flat config as params, logs the resolved config, every logged step's metrics, the
    final throughput, training time and model size, the model artifact and the trainer's log
    files; the last checkpoint (optimizer state: often larger than the model) only with
    CHECKPOINTS. Tracking off or unreachable: the run has no id and every call is a no-op (see
    `tracking`). Rank 0 only."""

    def __init__(self, system_metrics: bool = True, checkpoints: bool = False):
        self.system_metrics = system_metrics
        self.checkpoints = checkpoints
        self._context = None
        self.run = None

    def on_train_begin(self, trainer) -> None:
        config = trainer.config
        subject = RunSubject(task=config.task, variant=config.model, dataset=config.data.train)
        self._context = tracking.step_run("train", params=trainer.run_params, subject=subject,
                                          log_system_metrics=self.system_metrics)
        self.run = self._context.__enter__()
        if self.run is not None:
            trainer.summary["mlflow_run_id"] = self.run.info.run_id
            tracking.log_dict(trainer.config.to_dict(), "config.json")

    def on_step_end(self, trainer, step, logs) -> None:
        if logs is not None:
            tracking.log_metrics(logs, step=step)

    def on_train_end(self, trainer) -> None:
        final = {**trainer.summary["throughput"],
                 **{k: trainer.summary.get(k) for k in FINAL_METRICS}}
        tracking.log_metrics({k: v for k, v in final.items()
                              if isinstance(v, (int, float)) and not isinstance(v, bool)},
                             step=trainer.step)
        if self.run is None:
            return
        with tempfile.TemporaryDirectory(prefix="effdet-mlflow-") as downloads:
            local_model = storage.sync_to_local(trainer.summary["model_uri"], downloads)
            tracking.log_artifacts(str(local_model), "model")
        checkpoint = trainer.summary.get("checkpoint")
        if checkpoint and self.checkpoints:
            local_dir = Path(trainer.store.local_dir)
            for p in sorted(local_dir.glob(Path(checkpoint).name + ".*")):
                tracking.log_artifact(str(p), "checkpoint")
            tracking.log_artifact(str(local_dir / "checkpoint"), "checkpoint")
        for path in trainer.log_files:
            if Path(path).is_file():
                tracking.log_artifact(path, "logs")

    def on_exit(self, trainer, error) -> None:
        if self._context is not None:
            context, self._context = self._context, None
            context.__exit__(type(error) if error else None, error,
                             error.__traceback__ if error else None)
