"""What differs between training a detector and a classifier: model, input, loss, metadata.

The `Trainer` (``training.trainer``) is task-agnostic; it asks a task for these pieces.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import tensorflow as tf

from efficientdet.data.dataset import ConvertedDataset, DatasetError
from efficientdet.data.label_map import LabelMapError
from efficientdet.data.shards import LABEL_MAP_NAME
from efficientdet.training.config import ConfigError, TrainConfig


def check_overrides(name: str, overrides: dict) -> None:
    """`model_overrides` keys must be keyword arguments of `models.build_model`."""
    import inspect

    from efficientdet.models import build_model

    params = inspect.signature(build_model).parameters
    known = sorted(k for k, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY)
    for key in overrides:
        if key not in known:
            raise ConfigError(f"config key 'model_overrides.{key}': not an option of {name} "
                              f"(known: {', '.join(known)})")


@dataclass
class Task:
    name: str

    def resolve(self, config: TrainConfig) -> tuple[TrainConfig, dict | None]:
        """CONFIG with num_classes / image_size filled from the data and the variant, and the
        training data's label map (None when it has none)."""
        from efficientdet.models import EfficientDetConfig, get_config

        try:
            cfg = get_config(config.model)
        except ValueError as exc:
            raise ConfigError(f"config key 'model': {exc}") from exc
        check_overrides(config.model, config.model_overrides)
        is_detector = isinstance(cfg, EfficientDetConfig)
        if is_detector != (self.name == "detection"):
            kind = "an EfficientDet" if self.name == "detection" else "an EfficientNet"
            raise ConfigError(f"task {self.name!r} needs {kind} model, got {config.model!r}")
        train = config.data.train
        num_classes, image_size = config.num_classes, config.image_size
        try:
            with ConvertedDataset.open(train) as dataset:
                label_map = dataset.label_map
            if num_classes is None:
                if label_map is None:
                    raise ConfigError(
                        f"num_classes is not set and {train} has no {LABEL_MAP_NAME}")
                num_classes = label_map.num_classes(self.name, where=train)
        except (FileNotFoundError, DatasetError, LabelMapError) as exc:
            raise ConfigError(f"config key 'data.train': {exc}") from None
        if image_size is None:
            image_size = int(cfg.image_size)
        elif is_detector and image_size % 2 ** cfg.max_level:
            raise ConfigError(f"config key 'image_size': {image_size} is not a multiple "
                              f"of {2 ** cfg.max_level} (the stride of level P{cfg.max_level})")
        resolved = dataclasses.replace(config, num_classes=num_classes, image_size=image_size)
        return resolved, (label_map.to_dict() if label_map else None)

    def build_model(self, config: TrainConfig):
        from efficientdet.models import build_model

        return build_model(config.model, config.num_classes, config.image_size,
                           **config.model_overrides)

    def dataset(self, config: TrainConfig, *, shard_index: int, num_shards: int,
                is_training: bool = True) -> tf.data.Dataset:
        raise NotImplementedError

    def loss(self, outputs, labels, config: TrainConfig) -> dict:
        """{"loss": scalar, ...named parts} (float32), without weight decay."""
        raise NotImplementedError


class DetectionTask(Task):
    def __init__(self):
        super().__init__("detection")

    def dataset(self, config, *, shard_index, num_shards, is_training=True):
        from efficientdet.data.inputs import detection_dataset
        from efficientdet.models import get_config

        return detection_dataset(
            config.data.train if is_training else config.data.val,
            model_config=get_config(config.model), image_size=config.image_size,
            is_training=is_training, batch_size=config.data.batch_size,
            shard_index=shard_index, num_shards=num_shards,
            deterministic=config.data.deterministic, seed=config.seed,
            cache_dir=config.data.cache_dir)

    def loss(self, outputs, labels, config):
        from efficientdet.detection.anchors import flatten_outputs
        from efficientdet.detection.losses import detection_loss

        flat = flatten_outputs(outputs, config.num_classes)
        total, cls_loss, box_loss = detection_loss(
            flat, labels, config.num_classes,
            label_smoothing=config.optimizer.label_smoothing)
        return {"loss": total, "cls_loss": cls_loss, "box_loss": box_loss}


class ClassificationTask(Task):
    def __init__(self):
        super().__init__("classification")

    def dataset(self, config, *, shard_index, num_shards, is_training=True):
        from efficientdet.data.inputs import classification_dataset

        return classification_dataset(
            config.data.train if is_training else config.data.val,
            image_size=config.image_size, is_training=is_training,
            batch_size=config.data.batch_size, shard_index=shard_index,
            num_shards=num_shards, randaugment=config.data.randaugment,
            deterministic=config.data.deterministic, seed=config.seed,
            cache_dir=config.data.cache_dir)

    def loss(self, outputs, labels, config):
        logits = tf.cast(outputs, tf.float32)
        onehot = tf.one_hot(tf.cast(labels, tf.int32), config.num_classes, dtype=tf.float32)
        smoothing = float(config.optimizer.label_smoothing)
        if smoothing:
            onehot = onehot * (1.0 - smoothing) + smoothing / config.num_classes
        per_example = tf.nn.softmax_cross_entropy_with_logits(labels=onehot, logits=logits)
        loss = tf.reduce_mean(per_example)
        accuracy = tf.reduce_mean(tf.cast(
            tf.equal(tf.argmax(logits, -1, output_type=tf.int32), tf.cast(labels, tf.int32)),
            tf.float32))
        return {"loss": loss, "accuracy": accuracy}


def get_task(name: str) -> Task:
    if name == "detection":
        return DetectionTask()
    if name == "classification":
        return ClassificationTask()
    raise ValueError(f"unknown task {name!r} (detection or classification)")
