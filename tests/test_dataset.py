"""ConvertedDataset: shards, per-rank shards, label map, example count from the report, one
cache that is cleaned up, and errors naming the URI; local and on the loopback S3 server."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import tensorflow as tf

from efficientdet import storage
from efficientdet.data.dataset import ConvertedDataset, DatasetError, dataset_root
from efficientdet.data.label_map import LabelMap
from efficientdet.data.shards import IncompleteDataset, shard_name

COUNTS = [3, 2, 4]
LABELS = {"task": "detection", "classes": [{"id": 1, "name": "a"}, {"id": 7, "name": "b"}]}


def write_converted(directory, counts=COUNTS, report=True):
    """A dataset as `effdet convert` leaves it: shards of `counts` records, label map, report."""
    directory.mkdir(parents=True, exist_ok=True)
    names = [shard_name(i, len(counts)) for i in range(len(counts))]
    for name, n in zip(names, counts):
        with tf.io.TFRecordWriter(str(directory / name)) as writer:
            for i in range(n):
                writer.write(f"{name}-{i}".encode())
    (directory / "label_map.json").write_text(json.dumps(LABELS))
    if report:
        (directory / "report.json").write_text(json.dumps(
            {"num_shards": len(counts), "shards": names, "examples_per_shard": counts}))
    return [str(directory / n) for n in names]


def no_reading(monkeypatch):
    """Make any record counting fail: the count must come from the report."""
    monkeypatch.setattr("efficientdet.data.dataset._count_records",
                        lambda files: pytest.fail(f"read {files} to count records"))


def test_local_directory(tmp_path, monkeypatch):
    shards = write_converted(tmp_path / "set")
    no_reading(monkeypatch)
    with ConvertedDataset.open(str(tmp_path / "set") + "/") as data:
        assert data.root == str(tmp_path / "set")
        assert data.shards == shards
        assert data.num_examples == sum(COUNTS)
        assert data.label_map == LabelMap(((1, "a"), (7, "b")), "detection")
        assert data.label_map.num_classes("detection") == 7
        assert data.local_shards() == shards  # local files are read where they are
    # a glob of some shards counts only those, still from the report
    assert ConvertedDataset.open(str(tmp_path / "set" / "*-0000[02]-*")).num_examples == 7


def test_per_rank_shards(tmp_path):
    shards = write_converted(tmp_path / "set")
    data = ConvertedDataset.open(str(tmp_path / "set"))
    assert data.shards_for_rank(1, 2) == ([shards[1]], False)
    assert data.shards_for_rank(0, 2).files == [shards[0], shards[2]]
    assert data.shards_for_rank(3, 4) == (shards, True)  # fewer files than ranks: by record
    with pytest.raises(ValueError, match="rank=2, world_size=2"):
        data.shards_for_rank(2, 2)


def test_without_report_counts_by_reading_and_says_so(tmp_path, caplog):
    write_converted(tmp_path / "set", report=False)
    glob = str(tmp_path / "set" / "*.tfrecord")
    with caplog.at_level(logging.WARNING, "efficientdet.data.dataset"):
        assert ConvertedDataset.open(glob).num_examples == sum(COUNTS)
    assert "3 shard(s) not listed in a report.json; counting" in caplog.text


def test_errors_name_the_uri(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'nope'}: no such dataset dir"):
        ConvertedDataset.open(str(tmp_path / "nope"))
    write_converted(tmp_path / "unfinished", report=False)
    with pytest.raises(IncompleteDataset, match=f"{tmp_path / 'unfinished'}: no report.json"):
        _ = ConvertedDataset.open(str(tmp_path / "unfinished")).shards
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "report.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="empty: no TFRecord shards"):
        _ = ConvertedDataset.open(str(tmp_path / "empty")).shards
    assert ConvertedDataset.open(str(tmp_path / "empty")).label_map is None
    (tmp_path / "empty" / "label_map.json").write_text("{not json")
    with pytest.raises(DatasetError, match="empty/label_map.json: not a valid label map"):
        _ = ConvertedDataset.open(str(tmp_path / "empty")).label_map
    (tmp_path / "empty" / "label_map.json").write_text('{"classes": {"id": 1}}')
    with pytest.raises(DatasetError, match="label_map.json: not a label map"):
        _ = ConvertedDataset.open(str(tmp_path / "empty")).label_map
    with pytest.raises(ValueError, match="dataset URI is empty"):
        ConvertedDataset.open(" , ")


def test_dataset_root_of_each_form(tmp_path):
    assert dataset_root("s3://b/coco/train/") == "s3://b/coco/train"
    assert dataset_root("s3://b/coco/train/data-*.tfrecord") == "s3://b/coco/train"
    assert dataset_root(str(tmp_path / "x.tfrecord")) == str(tmp_path)


def test_s3_rank_downloads_only_its_shards_and_the_temp_cache_is_removed(
        tmp_path, s3_bucket, monkeypatch):
    shards = write_converted(tmp_path / "set")
    remote = f"s3://{s3_bucket}/sets/train"
    storage.upload_dir(tmp_path / "set", remote)
    no_reading(monkeypatch)
    with ConvertedDataset.open(remote) as data:
        assert [storage.basename(u) for u in data.shards] == [storage.basename(s) for s in shards]
        assert data.num_examples == sum(COUNTS)  # nothing downloaded to count
        assert data.label_map.names == {1: "a", 7: "b"}
        mine = data.local_shards(data.shards_for_rank(1, 3).files)
        cache = data.cache_dir
        assert [p.name for p in cache.rglob("*.tfrecord")] == [storage.basename(shards[1])]
        assert Path(mine[0]).read_bytes() == Path(shards[1]).read_bytes()
    assert not cache.exists()
    # garbage collection removes it too when nobody closes the dataset
    data = ConvertedDataset.open(remote)
    data.local_shards(data.shards[:1])
    cache = data.cache_dir
    del data
    assert not cache.exists()


def test_s3_given_cache_is_kept_and_reused(tmp_path, s3_bucket, monkeypatch):
    write_converted(tmp_path / "set")
    remote = f"s3://{s3_bucket}/sets/val"
    storage.upload_dir(tmp_path / "set", remote)
    cache = tmp_path / "cache"
    with ConvertedDataset.open(remote, cache_dir=cache) as data:
        first = data.local_shards()
    assert all(p.startswith(str(cache)) for p in first) and all(map(storage.exists, first))
    monkeypatch.setattr(storage, "download_file",
                        lambda *a: pytest.fail("downloaded a cached shard again"))
    assert ConvertedDataset.open(remote, cache_dir=cache).local_shards() == first


def test_s3_prefix_without_report_is_incomplete(tmp_path, s3_bucket):
    write_converted(tmp_path / "set", report=False)
    remote = f"s3://{s3_bucket}/sets/partial"
    storage.upload_dir(tmp_path / "set", remote)
    with pytest.raises(IncompleteDataset, match=f"{remote}: no report.json"):
        _ = ConvertedDataset.open(remote).shards
