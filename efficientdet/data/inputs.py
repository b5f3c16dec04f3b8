"""tf.data input pipelines: EfficientDet detection (train/eval) and EfficientNet classification.

Both read converted TFRecord shards (see `data.schema`) and yield `(images, labels)` with images
float32 RGB in [0, 255], [B, H, W, 3] (models normalize internally).

Multi-worker reading (Horovod ranks): the sorted file list is split by FILE when there are at
least as many files as ranks (rank r reads files r, r + n, r + 2n, ...: no rank opens a file
another reads); with fewer files than ranks every rank reads all files in the same fixed order and
keeps every n-th RECORD. Either way the ranks see disjoint data that together cover the set. With
file sharding the ranks may hold a few records more or less; training datasets repeat forever, so
the loop decides the epoch length with `steps_per_epoch` and no rank runs dry.

Files: anything `data.dataset.ConvertedDataset` opens (converted dataset directories or s3://
prefixes, shard globs); each rank downloads only its own shards into the local cache
(`cache_dir`, default `data.dataset.default_cache_dir`), then reads them locally.

Randomness: each element gets its own seed from a seeded random stream, and every augmentation is
a stateless op of that seed. In `deterministic=True` mode (tests) file order, interleave order,
shuffles and seeds are fixed, so two runs yield identical batches; otherwise tf.data may reorder
for speed.
"""

from __future__ import annotations

from collections.abc import Mapping

import tensorflow as tf

from efficientdet.data import augment
from efficientdet.data.dataset import ConvertedDataset, default_cache_dir

AUTOTUNE = tf.data.AUTOTUNE
DEFAULT_SEED = 0
READ_BUFFER_BYTES = 8 << 20
MAX_INTERLEAVE = 16


def steps_per_epoch(num_records: int, batch_size: int, num_shards: int = 1) -> int:
    """Training steps per epoch for a global batch of `batch_size * num_shards` (at least 1)."""
    if batch_size < 1 or num_shards < 1:
        raise ValueError(f"batch_size and num_shards must be >= 1, got {batch_size}, {num_shards}")
    if num_records < 1:
        raise ValueError(f"the dataset is empty (num_records={num_records})")
    return max(1, num_records // (batch_size * num_shards))


def _dataset(
    file_pattern,
    map_fn,
    *,
    batch_size,
    is_training,
    shard_index,
    num_shards,
    deterministic,
    seed,
    shuffle_buffer,
    cache_dir,
    repeat,
):
    """The plumbing both builders share: this rank's serialized examples (listed, copied locally,
    sharded, interleaved, shuffled, repeated), each with its element seed, mapped by
    `map_fn(serialized, element_seed)`, batched and prefetched with the deterministic options."""
    element_seed = _element_seed(deterministic, seed, shard_index)
    repeat = is_training if repeat is None else bool(repeat)
    # the tf.data pipeline reads the files lazily: a persistent cache, never a temp one
    source = ConvertedDataset.open(file_pattern, cache_dir=cache_dir or default_cache_dir())
    files, shard_records = source.shards_for_rank(shard_index, num_shards)
    files = source.local_shards(files)
    ds = tf.data.Dataset.from_tensor_slices(files)
    if is_training and not shard_records:
        # every rank holds its own files: their order may change per epoch
        ds = ds.shuffle(len(files), seed=element_seed, reshuffle_each_iteration=True)
    ds = ds.interleave(
        lambda f: tf.data.TFRecordDataset(f, buffer_size=READ_BUFFER_BYTES),
        cycle_length=min(len(files), MAX_INTERLEAVE),
        block_length=1,
        num_parallel_calls=AUTOTUNE,
        # record sharding needs the same order on every rank, whatever `deterministic` says
        deterministic=bool(deterministic or shard_records),
    )
    if shard_records:
        ds = ds.shard(num_shards, shard_index)
    if is_training:
        ds = ds.shuffle(shuffle_buffer, seed=element_seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    # one [2] int64 seed per element for the stateless augmentations
    # (new seeds on every pass, so epochs of a non-repeated dataset are augmented differently)
    seeds = tf.data.Dataset.random(seed=element_seed, rerandomize_each_iteration=True)
    seeds = seeds.batch(2, drop_remainder=True)
    ds = tf.data.Dataset.zip((ds, seeds))
    ds = ds.map(map_fn, num_parallel_calls=AUTOTUNE, deterministic=bool(deterministic))
    ds = ds.batch(
        batch_size,
        drop_remainder=is_training,
        num_parallel_calls=AUTOTUNE,
        deterministic=bool(deterministic),
    )
    options = tf.data.Options()
    options.deterministic = bool(deterministic)
    options.autotune.enabled = True
    options.experimental_optimization.map_parallelization = True
    return ds.with_options(options).prefetch(AUTOTUNE)


def _element_seed(deterministic: bool, seed, shard_index: int):
    if seed is None and not deterministic:
        return None
    return int(DEFAULT_SEED if seed is None else seed) + 7919 * int(shard_index)


# ----------------------------------------------------------------------------------- detection


def detection_dataset(
    file_pattern,
    *,
    model_config,
    image_size,
    is_training: bool,
    batch_size: int,
    shard_index: int = 0,
    num_shards: int = 1,
    deterministic: bool = False,
    max_instances: int = 100,
    cache_dir: str | None = None,
    seed: int | None = None,
    shuffle_buffer: int = 512,
    repeat: bool | None = None,
) -> tf.data.Dataset:
    """EfficientDet input: `(images [B, H, W, 3] float32 in [0, 255], labels)`.

    Training: crowd boxes skipped, horizontal flip p=0.5, aspect-preserving scale jitter
    0.1-2.0 of the output size, random crop, mean-colour pad to `image_size`; boxes clipped, zero-area
    boxes dropped, at most `max_instances`; batches drop the remainder; repeats forever unless
    `repeat=False`.
    Evaluation: aspect-preserving resize + mean-colour pad, one pass, last batch may be smaller.

    `labels` (all batched):
      cls_targets [B, N] int32, box_targets [B, N, 4], num_positives [B] (from
      `detection.targets.encode_targets`, crowd boxes excluded), image_id [B] int64,
      image_scale [B] float32 (input pixels per original pixel: original = input / scale),
      boxes [B, max_instances, 4] float32 (the boxes the targets encode, input pixels, zero
      padding), classes [B, max_instances] int32 (class index = category_id - 1, -1 padding).
    Evaluation adds groundtruth_boxes [B, max_instances, 4] in ORIGINAL image pixels (crowd boxes
    included), groundtruth_classes (class index, -1 padding), groundtruth_is_crowd int32,
    groundtruth_area float32, and original_size [B, 2] int32 (height, width).

    `model_config` is a config from `models.get_config` (or its name, or a mapping with the anchor
    keys); it defines the anchors. `image_size=None` takes the config's own input size.
    """
    from efficientdet.data.schema import parse_detection_example
    from efficientdet.detection.anchors import Anchors
    from efficientdet.detection.targets import encode_targets

    _check_batch(batch_size)
    if max_instances < 1:
        raise ValueError(f"max_instances must be >= 1, got {max_instances}")
    if isinstance(model_config, str):
        from efficientdet.models import get_config

        model_config = get_config(model_config)
    if image_size is None:  # the variant's native input size
        image_size = getattr(model_config, "image_size", None) or (
            model_config.get("image_size") if isinstance(model_config, Mapping) else None
        )
    out_hw = augment.output_hw(image_size)
    anchors = Anchors.from_config(model_config, out_hw)

    def labels_for(ex, scale, boxes_px, classes):
        """Targets, image_id, image_scale and the padded boxes/classes (input pixels) for the
        positive-area boxes among `boxes_px` (at most `max_instances`)."""
        boxes_px, classes = augment.keep_positive_area(boxes_px, classes)
        boxes_px, classes = boxes_px[:max_instances], classes[:max_instances]
        encoded = encode_targets(anchors, boxes_px, classes)  # IoU cost grows with rows: no padding
        labels = {
            "cls_targets": tf.cast(encoded["cls_targets"], tf.int32),
            "box_targets": tf.cast(encoded["box_targets"], tf.float32),
            "num_positives": tf.cast(encoded["num_positives"], tf.float32),
        }
        boxes_px, classes = augment.pad_instances(boxes_px, classes, max_instances)
        labels.update(
            image_id=tf.cast(ex["image_id"], tf.int64),
            image_scale=tf.cast(scale, tf.float32),
            boxes=boxes_px,
            classes=classes,
        )
        return labels

    def train_map(serialized, element_seed_):
        ex = parse_detection_example(serialized)
        keep = tf.logical_not(tf.cast(ex["is_crowd"], tf.bool))
        boxes = tf.boolean_mask(tf.cast(ex["boxes"], tf.float32), keep)
        classes = tf.cast(tf.boolean_mask(ex["category_ids"], keep), tf.int32) - 1
        seed_flip, seed_scale = augment.split_seed(element_seed_, 2)
        image, boxes = augment.random_horizontal_flip(ex["image"], boxes, seed_flip)
        image, boxes_px, scale = augment.random_scale_crop_pad(image, boxes, out_hw, seed_scale)
        return image, labels_for(ex, scale, boxes_px, classes)

    def eval_map(serialized, element_seed_):
        del element_seed_
        ex = parse_detection_example(serialized)
        image, scale, scaled_hw = augment.resize_and_pad(ex["image"], out_hw)
        original_size = tf.shape(ex["image"])[:2]
        height = tf.cast(original_size[0], tf.float32)
        width = tf.cast(original_size[1], tf.float32)
        norm = tf.cast(ex["boxes"], tf.float32)
        classes_all = tf.cast(ex["category_ids"], tf.int32) - 1
        is_crowd = tf.cast(ex["is_crowd"], tf.int32)
        # ground truth for COCO evaluation: original pixels, crowd boxes kept
        original_px = norm * tf.stack([height, width, height, width])
        gt_boxes, gt_classes, gt_crowd, gt_area = augment.pad_instances(
            original_px, classes_all, max_instances, is_crowd, tf.cast(ex["area"], tf.float32)
        )
        # targets (validation loss): input pixels, no crowd boxes
        scaled = tf.cast(scaled_hw, tf.float32)
        input_px = norm * tf.stack([scaled[0], scaled[1], scaled[0], scaled[1]])
        keep = tf.equal(is_crowd, 0)
        labels = labels_for(
            ex, scale, tf.boolean_mask(input_px, keep), tf.boolean_mask(classes_all, keep)
        )
        labels.update(
            groundtruth_boxes=gt_boxes,
            groundtruth_classes=gt_classes,
            groundtruth_is_crowd=gt_crowd,
            groundtruth_area=gt_area,
            original_size=original_size,
        )
        return image, labels

    # fmt: off
    return _dataset(file_pattern, train_map if is_training else eval_map,
                    batch_size=batch_size, is_training=is_training, shard_index=shard_index,
                    num_shards=num_shards, deterministic=deterministic, seed=seed,
                    shuffle_buffer=shuffle_buffer, cache_dir=cache_dir, repeat=repeat)
    # fmt: on


# ------------------------------------------------------------------------------ classification


def classification_dataset(
    file_pattern,
    *,
    image_size: int,
    is_training: bool,
    batch_size: int,
    shard_index: int = 0,
    num_shards: int = 1,
    randaugment=None,
    deterministic: bool = False,
    cache_dir: str | None = None,
    seed: int | None = None,
    shuffle_buffer: int = 1024,
    repeat: bool | None = None,
    crop_padding: int = 32,
) -> tf.data.Dataset:
    """EfficientNet input: `(images [B, S, S, 3] float32 in [0, 255], labels [B] int32)`.

    Training: random resized crop (area 0.08-1, aspect 3/4-4/3), horizontal flip, optional
    RandAugment `(num_layers, magnitude)`; drops the remainder, repeats forever unless
    `repeat=False`. Evaluation: center crop of `S / (S + crop_padding)` of the shorter side,
    resized to S (the official EfficientNet eval crop), one pass.
    """
    from efficientdet.data.schema import parse_classification_example

    _check_batch(batch_size)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if randaugment is not None:
        if isinstance(randaugment, Mapping):
            randaugment = (randaugment["num_layers"], randaugment["magnitude"])
        num_layers, magnitude = int(randaugment[0]), float(randaugment[1])
        from efficientdet.data import randaugment as ra

        if num_layers < 0 or not 0 <= magnitude <= ra.MAX_LEVEL:
            raise ValueError(
                f"randaugment must be (num_layers >= 0, magnitude 0-10), got {randaugment!r}"
            )

    def train_map(serialized, element_seed_):
        ex = parse_classification_example(serialized)
        seed_crop, seed_flip, seed_ra = augment.split_seed(element_seed_, 3)
        image = augment.random_resized_crop(ex["image"], image_size, seed_crop)
        image = tf.image.stateless_random_flip_left_right(image, seed=seed_flip)
        if randaugment is not None and num_layers > 0:
            image = ra.randaugment(tf.round(image), num_layers, magnitude, seed_ra)
        image.set_shape([image_size, image_size, 3])
        return image, tf.cast(ex["label"], tf.int32)

    def eval_map(serialized, element_seed_):
        del element_seed_
        ex = parse_classification_example(serialized)
        image = augment.center_crop(ex["image"], image_size, crop_padding)
        return image, tf.cast(ex["label"], tf.int32)

    # fmt: off
    return _dataset(file_pattern, train_map if is_training else eval_map,
                    batch_size=batch_size, is_training=is_training, shard_index=shard_index,
                    num_shards=num_shards, deterministic=deterministic, seed=seed,
                    shuffle_buffer=shuffle_buffer, cache_dir=cache_dir, repeat=repeat)
    # fmt: on


def _check_batch(batch_size) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
