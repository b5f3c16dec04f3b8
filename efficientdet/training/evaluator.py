"""The model being trained, scored on ``data.val`` in memory: validation loss from the training
input pipeline's evaluation mode, and COCO AP (detection) or top-1/top-5 (classification) from
the same runner and scorer `effdet evaluate` uses, so the numbers of a run and of a later
`effdet evaluate` of its artifact agree. EMA weights are scored when the run keeps them (they
are what the artifact holds).

Inference only (``training=False``): no collective op runs, so rank 0 can evaluate while the
other ranks wait in the next step's allreduce.
"""

from __future__ import annotations

import contextlib
import math

from efficientdet.models.model_meta import ModelMeta
from efficientdet.training.config import TrainConfig

# The metrics published per task (prefixed ``val_``) and the one that picks the best weights.
HEADLINE = {"detection": ("AP", "AP50", "AP75"), "classification": ("top1", "top5")}
BEST_METRIC = {"detection": "val_AP", "classification": "val_top1"}


class ValidationEvaluator:
    """Scores MODEL (with EMA weights swapped in when EMA is given) on CONFIG's ``data.val``;
    ``max_images`` caps the images of each evaluation. The validation set is opened once (s3
    shards are copied to ``data.cache_dir``) and the traced functions are kept between
    evaluations; `close` removes temporary downloads."""

    def __init__(self, config: TrainConfig, task, model, *, label_map: dict | None = None,
                 ema=None, max_images: int | None = None):
        if config.data.val is None:
            raise ValueError("config key 'data.val' is not set: nothing to evaluate on")
        self.config = config
        self.task = task
        self.model = model
        self.ema = ema
        self.max_images = max_images
        self.meta = ModelMeta.from_dict({
            "task": config.task, "model": config.model, "num_classes": config.num_classes,
            "image_size": config.image_size, "label_map": label_map,
            "overrides": config.model_overrides or {}}, where=f"the model of {config.output}")
        self._dataset = None
        self._runner = None
        self._loss_fn = None

    @classmethod
    def for_trainer(cls, trainer, max_images: int | None = None) -> ValidationEvaluator:
        return cls(trainer.config, trainer.task, trainer.model, label_map=trainer.label_map,
                   ema=trainer.ema, max_images=max_images)

    @property
    def best_metric(self) -> str:
        return BEST_METRIC[self.config.task]

    def evaluate(self) -> dict[str, float]:
        """``val_<loss part>`` and the ``val_<metric>`` of `HEADLINE` (finite values only),
        plus ``num_images`` scored."""
        with self.model_weights():
            metrics = self._losses()
            result = self._scores()
        for name in HEADLINE[self.config.task]:
            value = result["metrics"].get(name)
            if value is not None and math.isfinite(value):
                metrics[f"val_{name}"] = float(value)
        metrics["num_images"] = int(result["num_images"])
        return metrics

    def model_weights(self):
        """A block in which the model holds the weights that are scored and saved."""
        return self.ema.swapped() if self.ema is not None else contextlib.nullcontext()

    def save_model(self, uri: str, training: dict) -> str:
        """The scored weights as a model artifact at URI, TRAINING in its model.json."""
        import dataclasses

        from efficientdet.models.artifact import save_artifact

        meta = dataclasses.replace(self.meta, training={**training, "ema": self.ema is not None})
        with self.model_weights():
            return save_artifact(self.model, meta, uri)

    def close(self) -> None:
        if self._dataset is not None:
            self._dataset.close()
            self._dataset = None

    # -- the two passes --------------------------------------------------------------------
    def _losses(self) -> dict[str, float]:
        """The task's loss parts (no weight decay), averaged over images. The detection loss is
        normalised per batch, so batches are made in a fixed order: evaluations at different
        steps see the same batches and compare."""
        import dataclasses

        import tensorflow as tf

        config = self.config
        fixed = dataclasses.replace(config, data=dataclasses.replace(config.data,
                                                                     deterministic=True))
        data = self.task.dataset(fixed, shard_index=0, num_shards=1, is_training=False)
        if self.max_images:
            data = data.unbatch().take(self.max_images).batch(config.data.batch_size)
        if self._loss_fn is None:
            model, task = self.model, self.task

            @tf.function(reduce_retracing=True)
            def loss_fn(images, labels):
                losses = task.loss(model(images, training=False), labels, config)
                return {k: v for k, v in losses.items() if k.endswith("loss")}

            self._loss_fn = loss_fn
        totals: dict[str, float] = {}
        count = 0
        for images, labels in data:
            n = int(images.shape[0])
            for name, value in self._loss_fn(images, labels).items():
                totals[name] = totals.get(name, 0.0) + float(value) * n
            count += n
        if not count:
            raise ValueError(f"config key 'data.val': {config.data.val} holds no images")
        return {f"val_{name}": total / count for name, total in totals.items()}

    def _scores(self) -> dict:
        from efficientdet.data.dataset import ConvertedDataset
        from efficientdet.evaluation.evaluate import COCO_EVAL_POSTPROCESS, evaluate_runner
        from efficientdet.inference.runners import ModuleRunner, served_module

        if self._dataset is None:
            self._dataset = ConvertedDataset.open(self.config.data.val,
                                                  self.config.data.cache_dir)
        if self._runner is None:
            self._runner = ModuleRunner(
                served_module(self.model, self.meta, **COCO_EVAL_POSTPROCESS), self.meta)
        return evaluate_runner(self._runner, self.config.data.val,
                               batch_size=self.config.data.batch_size,
                               max_images=self.max_images, dataset=self._dataset)["result"]
