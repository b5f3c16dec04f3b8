"""The run's MLflow record (`efficientdet.tracking`): params, metrics, model and checkpoint."""

from __future__ import annotations

import tempfile
from pathlib import Path

from efficientdet import storage, tracking
from efficientdet.training.hooks.base import Hook


class MLflowTracking(Hook):
    """Opens the ``train`` step run with the flat config as params, logs the resolved config,
    every logged step's metrics and the final throughput, and the model artifact, the last
    checkpoint and the trainer's log files. Tracking off or unreachable: the run has no id and
    every call is a no-op (see `tracking`). Rank 0 only."""

    def __init__(self, system_metrics: bool = True):
        self.system_metrics = system_metrics
        self._context = None
        self.run = None

    def on_train_begin(self, trainer) -> None:
        self._context = tracking.step_run("train", params=trainer.run_params,
                                          log_system_metrics=self.system_metrics)
        self.run = self._context.__enter__()
        if self.run is not None:
            trainer.summary["mlflow_run_id"] = self.run.info.run_id
            tracking.log_dict(trainer.config.to_dict(), "config.json")

    def on_step_end(self, trainer, step, logs) -> None:
        if logs is not None:
            tracking.log_metrics(logs, step=step)

    def on_train_end(self, trainer) -> None:
        tracking.log_metrics({k: v for k, v in trainer.summary["throughput"].items()
                              if isinstance(v, (int, float))}, step=trainer.step)
        if self.run is None:
            return
        with tempfile.TemporaryDirectory(prefix="effdet-mlflow-") as downloads:
            local_model = storage.sync_to_local(trainer.summary["model_uri"], downloads)
            tracking.log_artifacts(str(local_model), "model")
        checkpoint = trainer.summary.get("checkpoint")
        if checkpoint:
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
