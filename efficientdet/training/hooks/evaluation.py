"""Evaluation during training: the model scored on ``data.val`` every N steps and at the end,
the metrics logged with their step, and the best weights kept beside the last ones."""

from __future__ import annotations

import logging
import time

from efficientdet import storage, tracking
from efficientdet.training.hooks.base import Hook

log = logging.getLogger(__name__)
BEST_DIR = "best"  # <output>/best: the artifact of the best evaluation


def format_evaluation(step: int, total: int, metrics: dict, seconds: float) -> str:
    """``eval step 200/600  val_loss 0.8123  val_AP 0.3120  ...  (64 images, 12.3 s)``."""
    parts = [f"eval step {step}/{total}"]
    parts += [f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith("val_")]
    return "  ".join(parts) + f"  ({metrics.get('num_images', 0)} images, {seconds:.1f} s)"


def previous_best(uri: str) -> dict | None:
    """The ``best`` record an earlier part of this run saved at URI (None when there is none
    or it cannot be read: the resumed run then starts a new best)."""
    from efficientdet.models.artifact import read_meta

    try:
        best = read_meta(uri).training.get("best")
    except (FileNotFoundError, ValueError, OSError):
        return None
    return dict(best) if isinstance(best, dict) else None


class PeriodicEvaluation(Hook):
    """Every EVERY_STEPS steps (not while stopping on a signal) and once at the end: scores the
    in-memory model on ``data.val`` (`training.evaluator.ValidationEvaluator`; MAX_IMAGES caps
    each evaluation), logs ``val_*`` metrics to the MLflow run at that step, prints one line, and
    saves the weights to ``<output>/best`` when the task's metric (``val_AP`` / ``val_top1``)
    improves. The summary gets ``evaluation`` (the last one) and ``best`` (step, metric, value,
    model_uri).

    Rank 0 only (list it on rank 0): it runs inference and no collective op, so the other
    ranks simply wait for rank 0 in the next step's allreduce. At the end it runs after the
    batch-norm statistics are averaged and before the artifact and summary.json are written.
    """

    def __init__(self, every_steps: int, max_images: int | None = None, evaluator=None):
        if every_steps < 1:
            raise ValueError(f"evaluation every_steps={every_steps}: must be at least 1")
        self.every_steps = every_steps
        self.max_images = max_images
        self.evaluator = evaluator  # None: made from the trainer at the start
        self.best_uri: str | None = None
        self.last: dict | None = None
        self.best: dict | None = None

    def on_train_begin(self, trainer) -> None:
        if self.evaluator is None:
            from efficientdet.training.evaluator import ValidationEvaluator

            self.evaluator = ValidationEvaluator.for_trainer(trainer, self.max_images)
        self.best_uri = storage.join(trainer.config.output, BEST_DIR)
        self.best = previous_best(self.best_uri) if trainer.restored else None

    def on_step_end(self, trainer, step, logs) -> None:
        stopping = trainer.stop_agreed or trainer.stop_signal
        if step % self.every_steps == 0 and step < trainer.total_steps and not stopping:
            self.evaluate(trainer, step)

    def on_train_end(self, trainer) -> None:
        self.evaluate(trainer, trainer.step)  # the final weights (BN statistics averaged)
        trainer.summary["evaluation"] = self.last
        trainer.summary["best"] = self.best
        if self.best is not None:
            tracking.log_metrics({f"best_{self.best['metric']}": self.best["value"]},
                                 step=self.best["step"])

    def on_exit(self, trainer, error) -> None:
        if self.evaluator is not None:
            self.evaluator.close()

    def evaluate(self, trainer, step: int) -> dict:
        """Score, log and print at STEP; save the best weights when they improved."""
        started = time.monotonic()
        metrics = self.evaluator.evaluate()
        seconds = time.monotonic() - started
        self.last = {"step": step, **metrics, "seconds": round(seconds, 3)}
        tracking.log_metrics({k: v for k, v in metrics.items() if k.startswith("val_")},
                             step=step)
        line = format_evaluation(step, trainer.total_steps, metrics, seconds)
        name = self.evaluator.best_metric
        value = metrics.get(name)
        if value is not None and (self.best is None or value > self.best["value"]):
            self.best = {"step": step, "metric": name, "value": value,
                         "model_uri": self.best_uri}
            self.evaluator.save_model(self.best_uri, {"best": self.best})
            line += f"  new best {name} -> {self.best_uri}"
        elif self.best is not None:
            line += f"  best {name} {self.best['value']:.4f} at step {self.best['step']}"
        print(line, flush=True)
        trainer.meter.exclude(time.monotonic() - started)  # images/s: training steps only
        return self.last
