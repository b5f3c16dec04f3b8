"""Detection input pipeline on real TFRecords written with `data.schema` (tiny images, 128 px)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from efficientdet.data import inputs, schema
from efficientdet.models.configs import IMAGENET_MEAN_RGB

IMAGE_SIZE = 128
ANCHOR_CONFIG = {  # the EfficientDet anchor settings (a mapping works as a model config)
    "min_level": 3,
    "max_level": 7,
    "num_scales": 3,
    "aspect_ratios": [1.0, 2.0, 0.5],
    "anchor_scale": 4.0,
}
RED = (230, 20, 20)


def _jpeg(pixels: np.ndarray) -> bytes:
    return tf.io.encode_jpeg(tf.constant(pixels, tf.uint8), quality=98).numpy()


def _example(image_id, pixels, boxes_px, category_ids, is_crowd=None):
    """A detection Example from pixel boxes [M, 4] (ymin, xmin, ymax, xmax) on `pixels`."""
    height, width = pixels.shape[:2]
    boxes_px = np.asarray(boxes_px, np.float32).reshape(-1, 4)
    norm = boxes_px / np.array([height, width, height, width], np.float32)
    is_crowd = [0] * len(boxes_px) if is_crowd is None else is_crowd
    areas = (boxes_px[:, 2] - boxes_px[:, 0]) * (boxes_px[:, 3] - boxes_px[:, 1])
    return schema.detection_example(
        encoded=_jpeg(pixels),
        height=height,
        width=width,
        image_id=image_id,
        filename=f"{image_id:06d}.jpg",
        boxes=norm,
        category_ids=list(category_ids),
        category_names=[f"c{c}" for c in category_ids],
        is_crowd=is_crowd,
        areas=list(areas),
    )


def _write(path, examples) -> str:
    with tf.io.TFRecordWriter(str(path)) as writer:
        for ex in examples:
            writer.write(ex.SerializeToString())
    return str(path)


def _random_set(num_images: int, seed: int = 0):
    """Images of varied sizes/aspects with 0-4 random boxes each; returns examples + truth."""
    rng = np.random.default_rng(seed)
    examples, truth = [], {}
    for i in range(num_images):
        image_id = 1000 + i
        height, width = int(rng.integers(60, 200)), int(rng.integers(60, 200))
        pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        count = 0 if i % 7 == 3 else int(rng.integers(1, 5))
        boxes = []
        for _ in range(count):
            y0, x0 = rng.uniform(0, height - 12), rng.uniform(0, width - 12)
            boxes.append([y0, x0, rng.uniform(y0 + 8, height), rng.uniform(x0 + 8, width)])
        cats = [int(c) for c in rng.integers(1, 91, count)]
        crowd = [1 if (count > 1 and j == count - 1 and i % 3 == 0) else 0 for j in range(count)]
        examples.append(_example(image_id, pixels, boxes, cats, crowd))
        truth[image_id] = (
            np.asarray(boxes, np.float32).reshape(-1, 4),
            np.asarray(cats),
            np.asarray(crowd),
        )
    return examples, truth


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    """14 images in 4 shards, plus the per-image truth."""
    root = tmp_path_factory.mktemp("det")
    examples, truth = _random_set(14)
    for shard in range(4):
        _write(root / f"data-{shard:05d}-of-00004.tfrecord", examples[shard::4])
    (root / "report.json").write_text("{}")  # marks a complete dataset
    return root, truth


def _eval_ds(pattern, **kw):
    kw.setdefault("batch_size", 4)
    return inputs.detection_dataset(
        str(pattern),
        model_config=ANCHOR_CONFIG,
        image_size=IMAGE_SIZE,
        is_training=False,
        deterministic=True,
        **kw,
    )


def _train_ds(pattern, **kw):
    kw.setdefault("batch_size", 4)
    kw.setdefault("deterministic", True)
    return inputs.detection_dataset(
        str(pattern),
        model_config=ANCHOR_CONFIG,
        image_size=IMAGE_SIZE,
        is_training=True,
        **kw,
    )


def _image_ids(ds) -> list[int]:
    return [int(i) for _, labels in ds for i in labels["image_id"].numpy()]


def test_eval_boxes_map_back_to_source_within_a_pixel(dataset_dir):
    root, truth = dataset_dir
    seen = set()
    for images, labels in _eval_ds(root / "*.tfrecord"):
        assert images.dtype == tf.float32 and images.shape[1:] == (IMAGE_SIZE, IMAGE_SIZE, 3)
        assert float(tf.reduce_min(images)) >= 0.0 and float(tf.reduce_max(images)) <= 255.0
        for b, image_id in enumerate(labels["image_id"].numpy()):
            seen.add(int(image_id))
            src_boxes, src_cats, src_crowd = truth[int(image_id)]
            m = len(src_boxes)
            scale = float(labels["image_scale"][b])
            # ground truth in original pixels, crowd included, padded with class -1
            np.testing.assert_allclose(labels["groundtruth_boxes"][b, :m], src_boxes, atol=1.0)
            np.testing.assert_array_equal(labels["groundtruth_classes"][b, :m], src_cats - 1)
            np.testing.assert_array_equal(labels["groundtruth_is_crowd"][b, :m], src_crowd)
            assert np.all(labels["groundtruth_classes"][b, m:] == -1)
            height, width = labels["original_size"][b].numpy()
            assert max(height, width) * scale == pytest.approx(IMAGE_SIZE, abs=0.5)
            # the input-pixel boxes (what the targets encode) map back with image_scale
            keep = src_crowd == 0
            k = int(keep.sum())
            np.testing.assert_allclose(labels["boxes"][b, :k] / scale, src_boxes[keep], atol=1.0)
            np.testing.assert_array_equal(labels["classes"][b, :k], src_cats[keep] - 1)
            assert np.all(labels["classes"][b, k:] == -1)
            # targets exist exactly for images with (non-crowd) objects
            positives = float(labels["num_positives"][b])
            assert (positives > 0) == (k > 0)
            assert int(np.sum(labels["cls_targets"][b] >= 0)) == int(positives)
            # padding right/below the resized image is the mean colour (0 once normalised)
            scaled_h, scaled_w = round(height * scale), round(width * scale)
            image = images[b].numpy()
            mean = np.float32(IMAGENET_MEAN_RGB)
            assert np.all(image[scaled_h + 1 :] == mean)
            assert np.all(image[:, scaled_w + 1 :] == mean)
            assert image[: scaled_h - 1, : scaled_w - 1].mean() > 20.0
    assert seen == set(truth)


def _rectangle_set(tmp_path, count=6):
    """Grey images of several shapes, each with one red rectangle placed off-centre."""
    examples, rng = [], np.random.default_rng(3)
    for i in range(count):
        height, width = [(120, 160), (160, 100), (90, 90), (200, 140), (100, 180), (140, 140)][
            i % 6
        ]
        pixels = np.full((height, width, 3), 110, np.uint8)
        y0, x0 = int(rng.integers(5, height // 3)), int(rng.integers(5, width // 4))
        y1, x1 = (
            y0 + int(rng.integers(height // 4, height // 2)),
            x0 + int(rng.integers(width // 5, width // 3)),
        )
        pixels[y0:y1, x0:x1] = RED
        examples.append(_example(i + 1, pixels, [[y0, x0, y1, x1]], [5]))
    return _write(tmp_path / "rect.tfrecord", examples)


def _red_mask(image: np.ndarray) -> np.ndarray:
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    return (r > 170) & (g < 70) & (b < 70)


def test_training_boxes_stay_aligned_with_flipped_scaled_content(tmp_path):
    path = _rectangle_set(tmp_path)
    ds = _train_ds(path, batch_size=6, shuffle_buffer=8).take(8)
    scales, centres, checked = [], [], 0
    for images, labels in ds:
        images, boxes, classes = images.numpy(), labels["boxes"].numpy(), labels["classes"].numpy()
        assert images.shape == (6, IMAGE_SIZE, IMAGE_SIZE, 3) and boxes.shape == (6, 100, 4)
        assert np.all(boxes >= 0.0) and np.all(boxes <= IMAGE_SIZE)
        scales.extend(labels["image_scale"].numpy())
        for b in range(6):
            mask = _red_mask(images[b])
            if classes[b, 0] < 0:  # the rectangle fell outside the crop
                assert mask.sum() == 0
                continue
            assert classes[b, 0] == 4 and np.all(classes[b, 1:] == -1)
            assert labels["num_positives"][b] > 0
            ymin, xmin, ymax, xmax = boxes[b, 0]
            assert ymax > ymin and xmax > xmin
            if (ymax - ymin) < 6 or (xmax - xmin) < 6:
                continue  # too small to compare with the blurred pixels
            ys, xs = np.nonzero(mask)
            # the red pixels' extent matches the box (resampling/JPEG blur: a few pixels)
            tol = 2.5 + 2.0 * float(labels["image_scale"][b])
            np.testing.assert_allclose(
                [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1], [ymin, xmin, ymax, xmax], atol=tol
            )
            inside = mask[int(ymin) : int(np.ceil(ymax)), int(xmin) : int(np.ceil(xmax))]
            assert inside.sum() >= 0.97 * mask.sum()
            centres.append((xmin + xmax) / 2 / IMAGE_SIZE)
            checked += 1
    assert checked >= 20
    # the augmentation really varies: scales across the jitter range, rectangles flipped to the right
    assert min(scales) < 0.4 and max(scales) > 1.0
    assert max(centres) > 0.5 and min(centres) < 0.4


def test_training_skips_crowd_and_caps_instances(tmp_path):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 255, (100, 100, 3), dtype=np.uint8)
    many = [[y, x, y + 30, x + 30] for y in range(0, 66, 5) for x in range(0, 66, 5)]  # 196 boxes
    path = _write(
        tmp_path / "x.tfrecord",
        [
            _example(1, pixels, [[10, 10, 90, 90]], [3], is_crowd=[1]),
            _example(2, pixels, many, [7] * len(many)),
        ],
    )
    ds = inputs.detection_dataset(
        path,
        model_config=ANCHOR_CONFIG,
        image_size=IMAGE_SIZE,
        is_training=True,
        batch_size=1,
        deterministic=True,
        repeat=False,
        max_instances=100,
    )
    by_id = {int(labels["image_id"][0]): labels for _, labels in ds}
    crowd_only = by_id[1]
    assert (
        np.all(crowd_only["classes"].numpy() == -1) and float(crowd_only["num_positives"][0]) == 0.0
    )
    assert np.all(crowd_only["cls_targets"].numpy() == -1)
    crowded = by_id[2]
    assert crowded["boxes"].shape == (1, 100, 4)
    assert 0 < int(np.sum(crowded["classes"].numpy() == 6)) <= 100


def test_ranks_see_disjoint_data_covering_the_set(dataset_dir, tmp_path):
    root, truth = dataset_dir
    every = set(truth)
    # 4 files: 2 ranks shard by file, 3 ranks by file (uneven: 2 + 1 + 1 files)
    for num_shards in (2, 3):
        parts = [
            set(_image_ids(_eval_ds(root / "*.tfrecord", shard_index=r, num_shards=num_shards)))
            for r in range(num_shards)
        ]
        assert sum(len(p) for p in parts) == len(every), num_shards
        assert set().union(*parts) == every
    # one file, 3 training ranks: records are sharded before shuffling
    examples, small_truth = _random_set(9, seed=5)
    single = _write(tmp_path / "single.tfrecord", examples)
    parts = [
        set(
            _image_ids(
                _train_ds(
                    single,
                    batch_size=1,
                    shard_index=r,
                    num_shards=3,
                    repeat=False,
                    deterministic=False,
                )
            )
        )
        for r in range(3)
    ]
    assert [len(p) for p in parts] == [3, 3, 3]
    assert set().union(*parts) == set(small_truth)


def test_file_and_record_sharding_rules():
    from efficientdet.data.dataset import rank_shards

    files = [f"f{i}" for i in range(5)]
    assert rank_shards(files, 1, 2) == (["f1", "f3"], False)
    assert rank_shards(files[:2], 2, 3) == (["f0", "f1"], True)
    with pytest.raises(ValueError, match="rank"):
        rank_shards(files, 2, 2)


def test_deterministic_mode_repeats_exactly(dataset_dir):
    root, _ = dataset_dir

    def first_batches():
        ds = _train_ds(root / "*.tfrecord", batch_size=3, seed=11).take(3)
        return [
            (images.numpy(), labels["box_targets"].numpy(), labels["image_id"].numpy())
            for images, labels in ds
        ]

    a, b = first_batches(), first_batches()
    for (ia, ta, da), (ib, tb, db) in zip(a, b):
        np.testing.assert_array_equal(da, db)
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(ta, tb)


def test_training_shapes_are_static_and_repeat_forever(dataset_dir):
    root, truth = dataset_dir
    ds = _train_ds(root / "*.tfrecord", batch_size=4, deterministic=False)
    images_spec, labels_spec = ds.element_spec
    assert images_spec.shape == (4, IMAGE_SIZE, IMAGE_SIZE, 3)
    num_anchors = labels_spec["cls_targets"].shape[1]
    assert num_anchors == 9 * sum((IMAGE_SIZE // 2**lvl) ** 2 for lvl in range(3, 8))
    assert labels_spec["box_targets"].shape == (4, num_anchors, 4)
    assert labels_spec["boxes"].shape == (4, 100, 4)
    # more batches than one epoch holds
    assert sum(1 for _ in ds.take(len(truth) // 4 + 3)) == len(truth) // 4 + 3


def test_counting_helpers(dataset_dir):
    from efficientdet.data.dataset import ConvertedDataset

    root, truth = dataset_dir
    with ConvertedDataset.open(str(root / "*.tfrecord")) as source:  # no report: counted
        assert source.num_examples == len(truth)
    assert inputs.steps_per_epoch(len(truth), batch_size=4) == 3
    assert inputs.steps_per_epoch(len(truth), batch_size=4, num_shards=2) == 1
    assert inputs.steps_per_epoch(3, batch_size=8, num_shards=2) == 1


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        inputs.detection_dataset(
            str(tmp_path / "nothing-here-*.tfrecord"),
            model_config=ANCHOR_CONFIG,
            image_size=IMAGE_SIZE,
            is_training=True,
            batch_size=2,
        )
    with pytest.raises(ValueError, match="batch_size"):
        inputs.detection_dataset(
            str(tmp_path),
            model_config=ANCHOR_CONFIG,
            image_size=IMAGE_SIZE,
            is_training=True,
            batch_size=0,
        )
    with pytest.raises(ValueError, match="image_size"):
        inputs.detection_dataset(
            str(tmp_path), model_config=ANCHOR_CONFIG, image_size=-5, is_training=True, batch_size=2
        )


@pytest.mark.slow
def test_reads_shards_from_s3_through_the_local_cache(dataset_dir, s3_bucket, tmp_path):
    from efficientdet import storage
    from efficientdet.data.dataset import ConvertedDataset

    root, truth = dataset_dir
    for path in sorted(root.glob("*.tfrecord")):
        storage.upload_file(path, f"s3://{s3_bucket}/sets/val/{path.name}")
    storage.write_text(f"s3://{s3_bucket}/sets/val/label_map.json", "{}")  # not a shard: ignored
    storage.write_text(f"s3://{s3_bucket}/sets/val/report.json", "{}")
    remote = f"s3://{s3_bucket}/sets/val"
    assert len(ConvertedDataset.open(remote).shards) == 4
    assert ConvertedDataset.open(remote + "/*-00001-*.tfrecord").shards == [
        f"{remote}/data-00001-of-00004.tfrecord"
    ]
    cache = tmp_path / "cache"
    # rank 1 of 2 downloads only its own two shards
    ids = _image_ids(_eval_ds(remote, shard_index=1, num_shards=2, cache_dir=str(cache)))
    cached = sorted(p.name for p in cache.rglob("*.tfrecord"))
    assert cached == ["data-00001-of-00004.tfrecord", "data-00003-of-00004.tfrecord"]
    local = _image_ids(_eval_ds(str(root / "data-0000[13]-*.tfrecord")))
    assert sorted(ids) == sorted(local)
    with ConvertedDataset.open(remote, cache_dir=str(cache)) as source:  # "{}": no counts
        assert source.num_examples == len(truth)
    with pytest.raises(FileNotFoundError, match="nope"):
        _ = ConvertedDataset.open(f"s3://{s3_bucket}/nope/*.tfrecord").shards


def test_model_config_by_name_sets_the_anchors(dataset_dir):
    root, _ = dataset_dir
    ds = inputs.detection_dataset(
        str(root),
        model_config="efficientdet-d0",
        image_size=IMAGE_SIZE,
        is_training=False,
        batch_size=2,
    )
    native = inputs.detection_dataset(
        str(root), model_config="efficientdet-d0", image_size=None, is_training=False, batch_size=2
    )
    assert native.element_spec[0].shape[1:] == (512, 512, 3)
    assert ds.element_spec[1]["cls_targets"].shape[1] == 9 * sum(
        (IMAGE_SIZE // 2**lvl) ** 2 for lvl in range(3, 8)
    )
