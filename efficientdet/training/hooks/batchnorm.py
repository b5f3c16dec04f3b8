"""Batch-norm moving statistics averaged over ranks at the end of training."""

from __future__ import annotations

from efficientdet.training.hooks.base import Hook


class BatchNormAveraging(Hook):
    """Each rank estimates BN moving statistics from its own shard; the final model takes
    their mean over ranks (and of their EMA shadows). Every rank must run it (a collective);
    on one rank it changes nothing."""

    def on_train_end(self, trainer) -> None:
        model, ema = trainer.model, trainer.ema
        trainable = {id(v) for v in model.trainable_variables}
        stats = [v for v in model.variables if id(v) not in trainable]
        if ema is not None:
            stats += [s for s, v in zip(ema.shadows, ema.model_variables)
                      if id(v) not in trainable]
        trainer.ctx.average_variables(stats)
