"""Classification input pipeline and RandAugment on real TFRecords written with `data.schema`."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from efficientdet.data import inputs, randaugment, schema

SIZE = 64
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]  # one per class


def _jpeg(pixels) -> bytes:
    return tf.io.encode_jpeg(tf.constant(pixels, tf.uint8), quality=98).numpy()


def _write(path, examples) -> str:
    with tf.io.TFRecordWriter(str(path)) as writer:
        for ex in examples:
            writer.write(ex.SerializeToString())
    return str(path)


def _example(pixels, label, name):
    height, width = pixels.shape[:2]
    return schema.classification_example(
        encoded=_jpeg(pixels),
        height=height,
        width=width,
        filename=name,
        label=label,
        text=f"class{label}",
    )


@pytest.fixture(scope="module")
def plain_set(tmp_path_factory):
    """12 images, each one flat colour that encodes its label, in 3 shards; sizes vary."""
    root = tmp_path_factory.mktemp("cls")
    examples = []
    for i in range(12):
        label = i % 4
        height, width = [(80, 120), (120, 70), (96, 96)][i % 3]
        pixels = np.empty((height, width, 3), np.uint8)
        pixels[...] = COLOURS[label]
        examples.append(_example(pixels, label, f"img{i:03d}.jpg"))
    for shard in range(3):
        _write(root / f"data-{shard:05d}-of-00003.tfrecord", examples[shard::3])
    (root / "report.json").write_text("{}")  # marks a complete dataset
    return root


def _dataset(pattern, **kw):
    kw.setdefault("batch_size", 4)
    kw.setdefault("deterministic", True)
    return inputs.classification_dataset(str(pattern), image_size=SIZE, **kw)


def _colour_label(image: np.ndarray) -> int:
    mean = image.reshape(-1, 3).mean(axis=0)
    return int(np.argmin([np.abs(mean - c).sum() for c in COLOURS]))


@pytest.mark.parametrize("is_training", [True, False])
def test_images_and_labels_agree(plain_set, is_training):
    ds = _dataset(plain_set / "*.tfrecord", is_training=is_training, repeat=False)
    count = 0
    for images, labels in ds:
        assert images.dtype == tf.float32 and images.shape[1:] == (SIZE, SIZE, 3)
        assert labels.dtype == tf.int32
        arr = images.numpy()
        assert arr.min() >= 0.0 and arr.max() <= 255.0
        for image, label in zip(arr, labels.numpy()):
            assert _colour_label(image) == label
            count += 1
    assert count == 12


def test_eval_center_crop_takes_the_official_fraction(tmp_path):
    # 100 x 160 image: the eval crop is SIZE/(SIZE+32) of the shorter side, centred: 66 x 66 at
    # rows 17..83, cols 47..113. That window is green with a one-pixel yellow frame inside its
    # edge, the rest is blue; PNG keeps the edges exact.
    pixels = np.zeros((100, 160, 3), np.uint8)
    pixels[...] = (20, 20, 220)
    side = int(SIZE / (SIZE + 32) * 100)
    top, left = (100 - side + 1) // 2, (160 - side + 1) // 2
    pixels[top : top + side, left : left + side] = (220, 220, 20)
    pixels[top + 1 : top + side - 1, left + 1 : left + side - 1] = (20, 220, 20)
    encoded = tf.io.encode_png(tf.constant(pixels)).numpy()
    example = schema.classification_example(
        encoded=encoded,
        height=100,
        width=160,
        filename="c.png",
        label=0,
        text="c",
        image_format="png",
    )
    path = _write(tmp_path / "c.tfrecord", [example])
    images, _ = next(iter(_dataset(path, is_training=False, batch_size=1)))
    image = images[0].numpy()
    assert image[..., 2].max() < 40  # no blue: the crop is not larger than the window
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    assert border[:, 0].min() > 100  # the yellow frame is on every edge: not smaller either
    assert image[3:-3, 3:-3, 0].max() < 40 and image[3:-3, 3:-3, 1].min() > 200


def test_random_resized_crop_varies_scale_and_flip(tmp_path):
    # left half black, right half white: crops show different fractions, flips swap the sides
    pixels = np.zeros((96, 96, 3), np.uint8)
    pixels[:, 48:] = 255
    path = _write(tmp_path / "lr.tfrecord", [_example(pixels, 1, "lr.jpg")] * 16)
    images, labels = next(iter(_dataset(path, is_training=True, batch_size=16, shuffle_buffer=4)))
    arr = images.numpy()
    assert np.all(labels.numpy() == 1)
    white_left = [img[:, : SIZE // 4].mean() > img[:, -SIZE // 4 :].mean() for img in arr]
    assert any(white_left) and not all(white_left)  # flipped and unflipped both occur
    white_fraction = [float((img.mean(axis=-1) > 128).mean()) for img in arr]
    assert max(white_fraction) - min(white_fraction) > 0.2  # crops differ


def test_ranks_see_disjoint_data_covering_the_set(plain_set):
    def names(shard_index, num_shards, is_training):
        ds = _dataset(
            plain_set / "*.tfrecord",
            is_training=is_training,
            batch_size=1,
            repeat=False,
            shard_index=shard_index,
            num_shards=num_shards,
        )
        return [tuple(np.round(img.numpy().mean(axis=(0, 1, 2)), 3)) for img, _ in ds]

    for num_shards in (2, 3):  # 3 files: 2 ranks by file (uneven), 3 ranks by file
        counts = [len(names(r, num_shards, False)) for r in range(num_shards)]
        assert sum(counts) == 12
    # 3 files, 5 ranks: by record
    counts = [len(names(r, 5, True)) for r in range(5)]
    assert sorted(counts) == [2, 2, 2, 3, 3]


def test_record_sharding_is_disjoint(tmp_path):
    # distinct labels per record make identity checkable
    examples = [_example(np.full((40, 40, 3), 10 * i, np.uint8), i, f"{i}.jpg") for i in range(10)]
    path = _write(tmp_path / "one.tfrecord", examples)
    seen = []
    for rank in range(3):
        ds = _dataset(
            path,
            is_training=True,
            batch_size=1,
            repeat=False,
            shard_index=rank,
            num_shards=3,
            deterministic=False,
        )
        seen.append({int(label) for _, labels in ds for label in labels.numpy()})
    assert sum(len(s) for s in seen) == 10 and set().union(*seen) == set(range(10))


def test_deterministic_mode_with_randaugment_repeats_exactly(plain_set):
    def batches():
        ds = _dataset(
            plain_set / "*.tfrecord", is_training=True, batch_size=4, randaugment=(2, 9), seed=3
        )
        return [(x.numpy(), y.numpy()) for x, y in ds.take(4)]

    for (xa, ya), (xb, yb) in zip(batches(), batches()):
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(xa, xb)


def test_randaugment_changes_images_in_the_pipeline(plain_set):
    plain = _dataset(plain_set / "*.tfrecord", is_training=True, batch_size=12, seed=5)
    augmented = _dataset(
        plain_set / "*.tfrecord", is_training=True, batch_size=12, seed=5, randaugment=(2, 10)
    )
    (xp, yp), (xa, ya) = next(iter(plain)), next(iter(augmented))
    np.testing.assert_array_equal(yp, ya)
    changed = [not np.allclose(a, p, atol=2.0) for a, p in zip(xa.numpy(), xp.numpy())]
    assert sum(changed) >= 8
    assert xa.numpy().min() >= 0.0 and xa.numpy().max() <= 255.0


def test_bad_arguments_are_named(plain_set):
    with pytest.raises(ValueError, match="randaugment"):
        _dataset(plain_set, is_training=True, randaugment=(2, 15))
    with pytest.raises(ValueError, match="image_size"):
        inputs.classification_dataset(
            str(plain_set), image_size=(64, 64), is_training=True, batch_size=2
        )
    with pytest.raises(FileNotFoundError, match="missing"):
        _dataset(plain_set / "missing*.tfrecord", is_training=False)


# --------------------------------------------------------------------------------- RandAugment


def _texture(seed=0, height=48, width=64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, width)[None, :, None] * np.ones((height, 1, 3))
    noise = rng.normal(0, 20, (height, width, 3))
    return np.clip(base * np.array([1.0, 0.6, 0.3]) + noise + 10, 0, 255).astype(np.float32)


@pytest.mark.parametrize("name", sorted(randaugment.OPS))
def test_every_op_runs_in_graph_mode_and_keeps_range(name):
    image = _texture()

    @tf.function
    def run(img, seed):
        return randaugment.apply_op(name, img, 9.0, seed)

    out = run(tf.constant(image), tf.constant([1, 2], tf.int64)).numpy()
    assert out.shape == image.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 255.0
    assert not np.allclose(out, image, atol=1.0), f"{name} at magnitude 9 left the image unchanged"
    again = run(tf.constant(image), tf.constant([1, 2], tf.int64)).numpy()
    np.testing.assert_array_equal(out, again)


def test_op_semantics():
    image = _texture(1)
    seed = tf.constant([4, 5], tf.int64)
    np.testing.assert_allclose(randaugment.apply_op("Invert", image, 5, seed), 255.0 - image)
    posterized = randaugment.apply_op("Posterize", image, 10, seed).numpy()
    assert np.all(posterized % 16 == 0)  # 4 bits kept at full magnitude
    solarized = randaugment.apply_op("Solarize", image, 10, seed).numpy()
    np.testing.assert_allclose(solarized, 255.0 - image)  # threshold 0: everything inverted
    stretched = randaugment.apply_op("AutoContrast", image * 0.5 + 40, 0, seed).numpy()
    assert stretched.min(axis=(0, 1)).max() <= 0.5 and stretched.max(axis=(0, 1)).min() >= 254.5
    equalized = randaugment.apply_op("Equalize", image * 0.3 + 60, 0, seed).numpy()
    assert equalized.min() <= 5 and equalized.max() >= 240
    for geometric in ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"):
        np.testing.assert_allclose(
            randaugment.apply_op(geometric, image, 0, seed), image, atol=1e-3
        )
    # translation by level/10 * 100/224 of the width: magnitude 10 on 224 px -> 100 px either way
    wide = _texture(2, width=224)
    for seed in ([0, 1], [0, 2], [0, 3], [0, 4]):
        moved = randaugment.apply_op("TranslateX", wide, 10, tf.constant(seed, tf.int64)).numpy()
        filled = np.all(moved == randaugment.FILL_VALUE, axis=(0, 2))
        assert filled.sum() == 100
        if filled[0]:  # content moved right
            np.testing.assert_allclose(moved[:, 100:], wide[:, :124], atol=1e-3)
        else:
            np.testing.assert_allclose(moved[:, :124], wide[:, 100:], atol=1e-3)


def test_randaugment_validates_its_arguments():
    with pytest.raises(ValueError, match="magnitude"):
        randaugment.randaugment(_texture(), 2, 11, tf.constant([0, 0]))
    with pytest.raises(ValueError, match="unknown RandAugment op"):
        randaugment.apply_op("Blur", _texture(), 5, tf.constant([0, 0]))


def test_each_pass_of_a_finite_training_set_is_augmented_anew(tmp_path):
    # the same textured image 12 times: only the augmentation can make passes differ
    pixels = _texture(4, height=80, width=96).astype(np.uint8)
    path = _write(tmp_path / "same.tfrecord", [_example(pixels, 2, "same.jpg")] * 12)

    def two_passes():
        ds = _dataset(path, is_training=True, batch_size=12, repeat=False, seed=9)
        return [next(iter(ds))[0].numpy() for _ in range(2)]

    first, second = two_passes()
    assert not np.allclose(first, second)  # epoch 2 is not a replay of epoch 1
    again_first, again_second = two_passes()
    np.testing.assert_array_equal(first, again_first)  # yet deterministic run to run
    np.testing.assert_array_equal(second, again_second)
