"""Run names and tags (efficientdet.run_identity): what ran, on what data, with what."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from efficientdet import run_identity
from efficientdet.run_identity import RunSubject, run_name, run_tags


def _converted(root, *, annotations: str | None = None, shards=2, output=None):
    """A converted dataset directory as `effdet convert` leaves it (the shards' bytes are
    never read here)."""
    root.mkdir(parents=True)
    names = [f"data-{i:05d}-of-{shards:05d}.tfrecord" for i in range(shards)]
    for name in names:
        (root / name).write_bytes(b"not read")
    inputs = {"annotations": annotations} if annotations else {"root": "/data/inet-train"}
    (root / "report.json").write_text(json.dumps({
        "task": "detection", "inputs": inputs, "output": output or str(root),
        "shards": names, "examples_per_shard": [4] * shards}))
    return root


def test_run_name_says_what_ran(tmp_path):
    data = _converted(tmp_path / "dataset", annotations="/coco/annotations/instances_val2017.json")
    subject = RunSubject(task="detection", variant="efficientdet-d0", dataset=str(data))
    assert run_name("train", subject) == "train efficientdet-d0 instances_val2017"
    uuid = "1a2b3c4d-5e6f-7081-92a3-b4c5d6e7f809"
    assert run_name("train", subject, kfp_run_id=uuid) == \
        "train efficientdet-d0 instances_val2017 [kfp 1a2b3c4d]"
    assert run_name("efficientdet-detection", kfp_run_id="local-0123456789") == \
        "efficientdet-detection [kfp local-0123456789]"
    assert run_name("export", RunSubject(variant="efficientnet-b0")) == "export efficientnet-b0"


def test_dataset_names_come_from_what_the_conversion_read(tmp_path):
    synthetic = _converted(tmp_path / "a", annotations="/tmp/raw-train/annotations.json")
    assert run_identity.dataset_name(str(synthetic)) == "raw-train"  # generic stem: its folder
    folders = _converted(tmp_path / "b")
    assert run_identity.dataset_name(str(folders)) == "inet-train"
    bare = tmp_path / "coco-mini"
    bare.mkdir()
    assert run_identity.dataset_name(str(bare / "*.tfrecord")) == "coco-mini"  # no report


def test_dataset_digest_follows_the_conversion_not_its_location(tmp_path):
    a = _converted(tmp_path / "a", annotations="/coco/instances_val2017.json")
    copy = _converted(tmp_path / "copy", annotations="/coco/instances_val2017.json")
    more = _converted(tmp_path / "more", annotations="/coco/instances_val2017.json", shards=3)
    digest = run_identity.dataset_digest(str(a))
    assert len(digest) == 16
    assert run_identity.dataset_digest(str(copy)) == digest  # output is not part of it
    assert run_identity.dataset_digest(str(more)) != digest
    assert run_identity.dataset_digest(str(tmp_path / "missing")) is None


def test_run_tags(tmp_path, monkeypatch):
    data = _converted(tmp_path / "d", annotations="/coco/instances_val2017.json")
    tags = run_tags(RunSubject(task="detection", variant="efficientdet-d0", dataset=str(data)),
                    environ={"EFFDET_IMAGE": "reg.example/effdet-train:0.1.0"})
    assert tags["effdet.task"] == "detection" and tags["effdet.variant"] == "efficientdet-d0"
    assert tags["effdet.dataset"] == str(data)
    assert tags["effdet.dataset_digest"] == run_identity.dataset_digest(str(data))
    assert tags["effdet.image"] == "reg.example/effdet-train:0.1.0"
    from efficientdet import __version__

    assert tags["effdet.version"] == __version__
    assert tags["effdet.versions.tensorflow"].startswith("2.")
    assert tags["effdet.versions.keras"].startswith("3.")
    if (Path(run_identity.__file__).resolve().parents[1] / ".git").exists():
        assert len(tags["mlflow.source.git.commit"]) == 40  # the checkout's commit
    bare = run_tags(environ={})
    assert not {"effdet.task", "effdet.variant", "effdet.dataset", "effdet.image"} & set(bare)
    # a URI with credentials is never a tag
    secret = run_tags(RunSubject(dataset="s3://user:pw@host/bucket/set"), environ={})
    assert not any("pw@" in v for v in secret.values())


def test_git_commit_falls_back_to_the_image_build(monkeypatch, tmp_path):
    monkeypatch.setattr(run_identity, "__file__", str(tmp_path / "pkg" / "run_identity.py"))
    monkeypatch.setenv(run_identity.COMMIT_ENV, "f" * 40)
    run_identity.git_commit.cache_clear()
    try:
        assert run_identity.git_commit() == "f" * 40
        monkeypatch.delenv(run_identity.COMMIT_ENV)
        run_identity.git_commit.cache_clear()
        assert run_identity.git_commit() is None
    finally:
        run_identity.git_commit.cache_clear()


@pytest.mark.parametrize("run_id,short", [("1a2b3c4d-5e6f-7081-92a3-b4c5d6e7f809", "1a2b3c4d"),
                                          ("local-abc", "local-abc"), ("run-1", "run-1")])
def test_short_id(run_id, short):
    assert run_identity.short_id(run_id) == short
