"""Class folders -> TFRecords: labels by sorted folder, bad files counted, --strict, reruns."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from efficientdet import storage
from efficientdet.cli import main
from efficientdet.data import schema, synthetic
from efficientdet.data.convert_imagenet import convert_imagenet
from efficientdet.data.report import ConversionError


def read_classification(paths) -> dict[str, dict]:
    ds = tf.data.TFRecordDataset(sorted(str(p) for p in paths)).map(
        schema.parse_classification_example)
    return {r["filename"].numpy().decode(): {k: v.numpy() for k, v in r.items()} for r in ds}


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "tree"
    synthetic.write_synthetic_imagenet(root, images_per_class=4, classes=3, seed=1,
                                       image_size=40)
    gray = io.BytesIO()
    Image.new("L", (30, 20), 99).save(gray, format="PNG")
    (root / "square" / "nested dir").mkdir()
    (root / "square" / "nested dir" / "grå bild.png").write_bytes(gray.getvalue())
    (root / "triangle" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(100))
    (root / "circle" / "README.txt").write_text("not an image")
    (root / "stray.jpg").write_bytes((root / "circle" / "circle_0000.jpg").read_bytes())
    (root / "zebra").mkdir()  # an empty class keeps its index
    (root / ".hidden").mkdir()  # not a class
    return root


def test_convert_tree_round_trip_and_report(tree, tmp_path):
    out = tmp_path / "out"
    report = convert_imagenet(str(tree), str(out), num_shards=2, workers=2, progress=False)
    images = report["images"]
    assert (images["input"], images["written"], images["skipped"]) == (16, 13, 3)
    assert images["skipped_by_reason"] == {"corrupt": 1, "not_in_class_folder": 1,
                                           "unsupported_format": 1}
    assert images["per_class"] == {"0": 4, "1": 5, "2": 4}
    assert images["converted"]["grayscale"] == 1
    assert report["notes"] == ["class folder 'zebra' is empty (index 3 kept)"]
    assert json.loads((out / "label_map.json").read_text()) == {
        "task": "classification", "classes": [{"id": 0, "name": "circle"},
                                              {"id": 1, "name": "square"},
                                              {"id": 2, "name": "triangle"},
                                              {"id": 3, "name": "zebra"}]}
    records = read_classification(out.glob("data-*.tfrecord"))
    assert len(records) == 13
    assert records["square/nested dir/grå bild.png"]["label"] == 1
    assert records["square/nested dir/grå bild.png"]["image"].shape == (20, 30, 3)
    original = tree / "triangle" / "triangle_0002.jpg"
    rec = records["triangle/triangle_0002.jpg"]
    assert rec["label"] == 2 and rec["image"].shape == (40, 40, 3)
    encoded = {}
    for raw in tf.data.TFRecordDataset(sorted(str(p) for p in out.glob("data-*.tfrecord"))):
        feats = tf.train.Example.FromString(raw.numpy()).features.feature
        encoded[feats["image/filename"].bytes_list.value[0].decode()] = \
            feats["image/encoded"].bytes_list.value[0]
    assert encoded["triangle/triangle_0002.jpg"] == original.read_bytes()  # baseline JPEG kept
    pil = np.asarray(Image.open(original), np.int16)
    assert np.abs(rec["image"].astype(np.int16) - pil).mean() < 3  # decoders differ slightly
    assert report["examples_per_shard"] == [6, 7]  # file k -> shard k % 2, skips included


def test_strict_and_bad_roots(tree, tmp_path, capsys):
    assert main(["convert", "imagenet", "--root", str(tree), "--output", str(tmp_path / "o"),
                 "--strict", "--workers", "1", "--no-progress"]) == 2
    assert "stray.jpg" in capsys.readouterr().err
    (tree / "stray.jpg").unlink()
    with pytest.raises(ConversionError, match="README.txt: skipped \\(unsupported_format"):
        convert_imagenet(str(tree), str(tmp_path / "o"), strict=True, workers=1,
                         progress=False)
    assert not (tmp_path / "o" / "report.json").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConversionError, match="no class folders"):
        convert_imagenet(str(empty), str(tmp_path / "o2"), progress=False)
    assert main(["convert", "imagenet", "--root", str(tmp_path / "nope"), "--output",
                 str(tmp_path / "o3")]) == 2
    assert "nope" in capsys.readouterr().err


def test_rerun_with_other_shard_count_replaces_the_set(tree, tmp_path, s3_bucket):
    out = f"s3://{s3_bucket}/inet"
    convert_imagenet(str(tree), out, num_shards=3, workers=1, progress=False)
    convert_imagenet(str(tree), out, num_shards=2, workers=1, progress=False)
    names = [storage.basename(u) for u in storage.list_files(out)]
    assert names == ["data-00000-of-00002.tfrecord", "data-00001-of-00002.tfrecord",
                     "label_map.json", "report.json"]
    local = storage.sync_to_local(out, tmp_path / "cache")
    assert len(read_classification(local.glob("data-*.tfrecord"))) == 13
