"""The end of a run: digests, throughput, training time and the model's size (params, GMACs)
in the summary, the model artifact (with EMA weights when kept) and ``summary.json`` beside
it."""

from __future__ import annotations

import json
import logging
import time

from efficientdet import storage
from efficientdet.models.model_meta import ModelMeta
from efficientdet.training.hooks.base import Hook
from efficientdet.training.trainer import weights_digest

log = logging.getLogger(__name__)


def model_size(model) -> dict:
    """``params`` (trainable) and ``gmacs`` (per image, counted from the layers' shapes: no
    extra forward pass); a model the counter does not know gets None for GMACs."""
    from efficientdet.models.summary import count_macs, count_params

    try:
        gmacs = round(count_macs(model) / 1e9, 3)
    except Exception as exc:  # noqa: BLE001 - a headline number must not fail the run
        log.debug("no GMACs for %s: %s", model.name, exc)
        gmacs = None
    return {"params": count_params(model.trainable_weights), "gmacs": gmacs}


def write_summary(output: str, summary: dict) -> None:
    storage.write_text(storage.join(output, "summary.json"),
                       json.dumps(summary, indent=2, sort_keys=True, default=str))


def artifact_meta(trainer) -> ModelMeta:
    """model.json of the artifact: what the model is and how it was trained."""
    c, summary = trainer.config, trainer.summary
    return ModelMeta.from_dict({
        "task": c.task, "model": c.model, "num_classes": c.num_classes,
        "image_size": c.image_size, "label_map": trainer.label_map,
        "overrides": c.model_overrides or {},
        "training": {k: summary[k] for k in (
            "final_step", "losses", "images_per_second", "world_size", "precision_policy",
            "mlflow_run_id")} | {"ema": trainer.ema is not None},
    }, where=f"the artifact of {c.output}")


class FinalArtifact(Hook):
    """Every rank records its final digests and throughput in the summary (and, with several
    ranks, prints its weights digest); rank 0 saves OUTPUT/model and writes OUTPUT/summary.json (the command's
    closing lines report the throughput)."""

    def __init__(self):
        self._started: float | None = None

    def on_train_begin(self, trainer) -> None:
        self._started = time.monotonic()

    def on_train_end(self, trainer) -> None:
        through = trainer.meter.summary()
        digest = weights_digest(trainer.model.variables)
        ctx = trainer.ctx
        if ctx.size > 1:  # the ranks' lines show that they agree (summary.json has it too)
            print(f"rank {ctx.rank}/{ctx.size} final weights sha256 {digest}", flush=True)
        trainer.summary.update({
            "final_step": trainer.step, "losses": trainer.metrics,
            "images_per_second": through["images_per_second"],
            "images_per_second_per_rank": through["images_per_second_per_rank"],
            "throughput": through, "weights_sha256": digest,
            "state_sha256": trainer.state_digest(),
            "model_uri": storage.join(trainer.config.output, "model"),
            "train_time_s": (round(time.monotonic() - self._started, 3)
                             if self._started is not None else None),
        })
        if not trainer.is_chief:
            return
        trainer.summary.update(model_size(trainer.model))
        self.save_model(trainer)
        write_summary(trainer.config.output, trainer.summary)

    @staticmethod
    def save_model(trainer) -> None:
        from efficientdet import console
        from efficientdet.models.artifact import save_artifact

        console.phase(f"saving the model to {trainer.summary['model_uri']}")
        meta, uri = artifact_meta(trainer), trainer.summary["model_uri"]
        if trainer.ema is not None:
            with trainer.ema.swapped():
                save_artifact(trainer.model, meta, uri)
        else:
            save_artifact(trainer.model, meta, uri)
