"""COCO -> TFRecords: round trip, every bad case with exact counts, --strict, s3, reruns."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from efficientdet import storage
from efficientdet.cli import main
from efficientdet.data import convert_coco as cc
from efficientdet.data import schema, synthetic
from efficientdet.data.report import ConversionError


def read_detection(paths) -> dict[str, dict]:
    """Every record of the shards, parsed by the schema, keyed by file name."""
    ds = tf.data.TFRecordDataset(sorted(str(p) for p in paths)).map(
        schema.parse_detection_example)
    out = {}
    for rec in ds:
        rec = {k: v.numpy() for k, v in rec.items()}
        out[rec["filename"].decode()] = rec
    return out


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    synthetic.write_synthetic_coco(root, images=12, classes=4, seed=7, image_size=96)
    return root


def _shard_bytes(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.glob("data-*.tfrecord"))}


def test_round_trip_boxes_within_a_pixel(synth, tmp_path):
    out = tmp_path / "out"
    report = cc.convert_coco(str(synth / "annotations.json"), str(synth / "images"), str(out),
                             num_shards=3, workers=2, progress=False)
    coco = json.loads((synth / "annotations.json").read_text())
    assert report["images"] == {"input": 12, "written": 12, "skipped": 0,
                                "skipped_by_reason": {}, "negatives": 0, "converted": {}}
    assert report["annotations"]["written"] == len(coco["annotations"])
    assert report["annotations"]["dropped"] == 0 and report["problems"] == []
    assert sorted(p.name for p in out.iterdir()) == [
        "data-00000-of-00003.tfrecord", "data-00001-of-00003.tfrecord",
        "data-00002-of-00003.tfrecord", "label_map.json", "report.json"]
    assert report["examples_per_shard"] == [4, 4, 4]
    label_map = json.loads((out / "label_map.json").read_text())
    assert label_map == {"task": "detection", "classes": [
        {"id": 1, "name": "circle"}, {"id": 2, "name": "square"},
        {"id": 3, "name": "triangle"}, {"id": 4, "name": "cross"}]}
    records = read_detection(out.glob("data-*.tfrecord"))
    assert len(records) == 12
    for info in coco["images"]:
        rec = records[info["file_name"]]
        assert rec["image_id"] == info["id"]
        assert rec["image"].shape == (info["height"], info["width"], 3)
        anns = [a for a in coco["annotations"] if a["image_id"] == info["id"]]
        px = rec["boxes"] * [info["height"], info["width"], info["height"], info["width"]]
        expected = [[a["bbox"][1], a["bbox"][0], a["bbox"][1] + a["bbox"][3],
                     a["bbox"][0] + a["bbox"][2]] for a in anns]
        np.testing.assert_allclose(px, expected, atol=1.0)
        assert rec["category_ids"].tolist() == [a["category_id"] for a in anns]
        assert rec["area"].tolist() == [a["area"] for a in anns]
        assert not rec["is_crowd"].any()
    # The same input gives the same shards whatever the number of workers.
    cc.convert_coco(str(synth / "annotations.json"), str(synth / "images"),
                    str(tmp_path / "again"), num_shards=3, workers=1, progress=False)
    assert _shard_bytes(out) == _shard_bytes(tmp_path / "again")


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad")
    synthetic.write_bad_coco(root)
    return root


def test_every_bad_case_has_its_documented_outcome(bad, tmp_path):
    out = tmp_path / "out"
    report = cc.convert_coco(str(bad / "annotations.json"), str(bad / "images"), str(out),
                             num_shards=2, workers=1, progress=False)
    assert report["images"]["input"] == 17
    assert report["images"]["written"] == 10
    assert report["images"]["skipped_by_reason"] == {
        "corrupt": 1, "duplicate_image_id": 1, "malformed_image_entry": 1, "missing_file": 1,
        "size_mismatch": 1, "truncated": 1, "unsupported_format": 1}
    assert report["images"]["negatives"] == 1
    conv = report["images"]["converted"]
    assert conv["grayscale"] == 1 and conv["cmyk"] == 1 and conv["alpha"] == 1
    assert conv["palette"] == 1 and conv["16bit"] == 1 and conv["exif_rotated"] == 2
    assert conv["boxes_from_stored_frame"] == 1
    ann = report["annotations"]
    assert (ann["input"], ann["written"], ann["dropped"], ann["clipped"], ann["crowd"]) == \
        (21, 10, 11, 1, 1)
    assert ann["dropped_by_reason"] == {
        "image_skipped": 5, "malformed_bbox": 1, "non_positive_size": 2, "outside_image": 1,
        "unknown_category_id": 1, "unknown_image_id": 1}
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["images"] == report["images"]
    problems = {(p["input"], p["reason"]) for p in on_disk["problems"]}
    assert ("dup.jpg", "duplicate_image_id") in problems
    assert ("missing.jpg", "missing_file") in problems
    assert ("annotation 21", "unknown_image_id") in problems
    assert ("annotation 2 of good.jpg", "outside_image_clipped") in problems

    records = read_detection(out.glob("data-*.tfrecord"))
    assert sorted(records) == sorted([
        "good.jpg", "gray.png", "cmyk.jpg", "rgba.png", "palette.gif", "deep16.png",
        "rotated display.jpg", "rotated_raw.jpg", "negative.jpg", "ünï cödé file.jpg"])
    scale = np.array([64, 96, 64, 96])
    for name, rec in records.items():
        assert rec["image"].shape == (64, 96, 3), name  # every picture displayed 96x64 RGB
    np.testing.assert_allclose(records["good.jpg"]["boxes"] * scale,
                               [[10, 10, 30, 30], [50, 80, 64, 96]], atol=1e-3)
    assert records["good.jpg"]["area"].tolist() == [400.0, 900.0]  # COCO's area is kept
    gray = records["gray.png"]["image"].astype(int)
    assert np.abs(gray[..., 0] - gray[..., 1]).max() <= 2
    assert records["negative.jpg"]["boxes"].shape == (0, 4)
    assert records["ünï cödé file.jpg"]["is_crowd"].tolist() == [True]
    np.testing.assert_allclose(records["rotated display.jpg"]["boxes"] * scale,
                               [[10, 10, 30, 30]], atol=1e-3)
    # stored-frame box x 10..30, y 30..50 on a 64x96 (w x h) picture with orientation 6:
    # (x, y) -> (96 - y, x), so displayed x 46..66, y 10..30
    np.testing.assert_allclose(records["rotated_raw.jpg"]["boxes"] * scale,
                               [[10, 46, 30, 66]], atol=1e-3)
    # the rotated pictures show the same content as the upright original
    diff = np.abs(records["rotated_raw.jpg"]["image"].astype(int)
                  - records["good.jpg"]["image"].astype(int))
    assert diff.mean() < 6


def test_strict_fails_naming_the_input(bad, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["convert", "coco", "--annotations", str(bad / "annotations.json"),
                 "--images", str(bad / "images"), "--output", str(out), "--strict",
                 "--workers", "1", "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--strict" in err and "dup.jpg" in err and "duplicate_image_id" in err
    assert not (out / "report.json").exists() and not list(out.glob("data-*"))


def test_strict_fails_on_an_image_problem(bad, tmp_path):
    coco = json.loads((bad / "annotations.json").read_text())
    coco["images"] = [i for i in coco["images"] if i.get("file_name") in ("good.jpg",
                                                                          "truncated.jpg")]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] == 10]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(coco))
    with pytest.raises(ConversionError, match="truncated.jpg: skipped \\(truncated"):
        cc.convert_coco(str(path), str(bad / "images"), str(tmp_path / "out"), strict=True,
                        workers=1, progress=False)
    assert not list((tmp_path / "out").glob("*"))  # nothing half-written


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ("[]", "expected a JSON object"),
    ('{"images": []}', "'categories' is missing"),
    ('{"images": [], "categories": [{"name": "x"}]}', "categories\\[0\\] needs an integer"),
    ('{"images": [], "categories": [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]}',
     "category id 1 appears twice"),
    ('{"images": [], "annotations": {}, "categories": [{"id": 1, "name": "a"}]}',
     "'annotations' is not a list"),
])
def test_malformed_annotations_file_is_a_clear_error(tmp_path, content, message, capsys):
    path = tmp_path / "bad ann.json"
    path.write_text(content)
    with pytest.raises(ConversionError, match=message) as info:
        cc.convert_coco(str(path), str(tmp_path), str(tmp_path / "o"), progress=False)
    assert "bad ann.json" in str(info.value)
    assert main(["convert", "coco", "--annotations", str(tmp_path / "none.json"), "--images",
                 str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    assert "none.json" in capsys.readouterr().err


def _all_bytes(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_interrupted_run_then_rerun_is_safe(synth, tmp_path, monkeypatch):
    ann, imgs, out = str(synth / "annotations.json"), str(synth / "images"), tmp_path / "out"
    cc.convert_coco(ann, imgs, str(tmp_path / "clean"), num_shards=3, workers=1, progress=False)
    # A complete earlier conversion with another shard count is in the output directory.
    cc.convert_coco(ann, imgs, str(out), num_shards=2, workers=1, progress=False)
    good = _all_bytes(out)
    real = cc.process_image
    calls = {"n": 0}

    def interrupted(task):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(cc, "process_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cc.convert_coco(ann, imgs, str(out), num_shards=3, workers=1, progress=False)
    assert _all_bytes(out) == good  # the earlier good dataset is untouched, report included
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean", "out"]  # no staging left
    # A hard kill leaves a staging directory behind (its process is gone): simulate one.
    (tmp_path / ".out.incoming-999999999").mkdir()
    (tmp_path / ".out.incoming-999999999" / "data-00001-of-00003.tfrecord.partial").write_bytes(
        b"half a shard")
    monkeypatch.setattr(cc, "process_image", real)
    cc.convert_coco(ann, imgs, str(out), num_shards=3, workers=1, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean", "out"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        list(_shard_bytes(tmp_path / "clean")) + ["label_map.json", "report.json"])
    assert _shard_bytes(out) == _shard_bytes(tmp_path / "clean")


def test_failed_rerun_keeps_the_good_dataset_and_reruns_are_byte_identical(synth, bad,
                                                                            tmp_path, capsys):
    out = tmp_path / "out"
    args = ["convert", "coco", "--annotations", str(synth / "annotations.json"), "--images",
            str(synth / "images"), "--output", str(out), "--workers", "1", "--no-progress"]
    assert main(args) == 0
    first = _all_bytes(out)
    assert main(args) == 0
    assert _all_bytes(out) == first  # same command, same bytes (report.json too)
    assert out.stat().st_mode & 0o777 == 0o777 & ~_umask()
    assert all(p.stat().st_mode & 0o777 == 0o666 & ~_umask() for p in out.iterdir())
    # a rerun that fails (--strict on the bad corpus) leaves the good set as it was
    assert main(["convert", "coco", "--annotations", str(bad / "annotations.json"), "--images",
                 str(bad / "images"), "--output", str(out), "--strict", "--workers", "1",
                 "--no-progress"]) == 2
    assert _all_bytes(out) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_output_holding_other_files_is_refused(synth, tmp_path, capsys):
    (tmp_path / "notes.md").write_text("mine")
    code = main(["convert", "coco", "--annotations", str(synth / "annotations.json"),
                 "--images", str(synth / "images"), "--output", str(tmp_path), "--workers", "1",
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "notes.md" in err and str(tmp_path) in err
    assert [p.name for p in tmp_path.iterdir()] == ["notes.md"]


def test_sigterm_cleans_up_like_ctrl_c(synth, tmp_path, monkeypatch, capsys):
    import os
    import signal

    real = cc.process_image
    calls = {"n": 0}

    def killed(task):
        calls["n"] += 1
        if calls["n"] == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(task)

    monkeypatch.setattr(cc, "process_image", killed)
    before = signal.getsignal(signal.SIGTERM)
    code = main(["convert", "coco", "--annotations", str(synth / "annotations.json"),
                 "--images", str(synth / "images"), "--output", str(tmp_path / "out"),
                 "--workers", "1", "--no-progress"])
    assert code == 143 and "terminated" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no output, no staging, no partial shard
    assert signal.getsignal(signal.SIGTERM) is before


def test_hostile_annotation_values(synth, tmp_path):
    coco = json.loads((synth / "annotations.json").read_text())
    outside = tmp_path / "outside.jpg"
    outside.write_bytes((synth / "images" / coco["images"][0]["file_name"]).read_bytes())
    first = coco["images"][0]["id"]
    coco["images"] += [
        {"id": 1001, "file_name": "../outside.jpg"},
        {"id": 1002, "file_name": str(outside)},
        {"id": 1003, "file_name": coco["images"][1]["file_name"], "width": "96"},
    ]
    base = {"image_id": first, "bbox": [1, 1, 5, 5], "area": 25.0}
    coco["annotations"] += [
        {**base, "id": 9001, "category_id": 1.0},
        {**base, "id": 9002, "category_id": True},
        {**base, "id": 9003, "category_id": [1]},
        {**base, "id": 9004, "category_id": 1, "iscrowd": "no"},
        {**base, "id": 9005, "category_id": 1, "iscrowd": 2},
        {**base, "id": 9006, "category_id": {"id": 1}},
    ]
    path = tmp_path / "hostile.json"
    path.write_text(json.dumps(coco))
    images = tmp_path / "imgs"
    images.symlink_to(synth / "images")
    report = cc.convert_coco(str(path), str(images), str(tmp_path / "out"), workers=1,
                             progress=False)
    problems = {p["input"]: p["reason"] for p in report["problems"]}
    assert problems["../outside.jpg"] == "path_outside_images"
    assert problems[str(outside)] == "path_outside_images"
    assert problems[coco["images"][1]["file_name"]] == "malformed_image_entry"
    for ann_id in range(9001, 9007):
        name = f"annotation {ann_id} of {coco['images'][0]['file_name']}"
        assert problems[name] == "malformed_annotation", name
    assert report["images"]["written"] == 12 and report["annotations"]["crowd"] == 0
    assert report["annotations"]["dropped_by_reason"] == {"malformed_annotation": 6}
    assert "outside.jpg" not in read_detection((tmp_path / "out").glob("data-*.tfrecord"))
    with pytest.raises(ConversionError, match="outside.jpg.*path_outside_images"):
        cc.convert_coco(str(path), str(images), str(tmp_path / "strict"), workers=1,
                        progress=False, strict=True)


def test_s3_input_and_output(synth, s3_bucket, tmp_path):
    src = f"s3://{s3_bucket}/raw"
    storage.upload_dir(synth, src)
    out = f"s3://{s3_bucket}/converted/train"
    code = main(["convert", "coco", "--annotations", f"{src}/annotations.json",
                 "--images", f"{src}/images", "--output", out, "--shards", "2",
                 "--workers", "1", "--cache-dir", str(tmp_path / "cache"), "--no-progress"])
    assert code == 0
    files = storage.list_files(out)
    assert [storage.basename(f) for f in files] == [
        "data-00000-of-00002.tfrecord", "data-00001-of-00002.tfrecord", "label_map.json",
        "report.json"]
    report = json.loads(storage.read_text(f"{out}/report.json"))
    assert report["images"]["written"] == 12 and report["output"] == out
    local = storage.sync_to_local(out, tmp_path / "back")
    assert len(read_detection(local.glob("data-*.tfrecord"))) == 12


def test_readers_refuse_incomplete_datasets_and_partial_files(synth, tmp_path):
    from efficientdet.data.dataset import ConvertedDataset
    from efficientdet.data.shards import IncompleteDataset
    from efficientdet.evaluation.evaluate import evaluate_model

    out = tmp_path / "out"
    cc.convert_coco(str(synth / "annotations.json"), str(synth / "images"), str(out),
                    num_shards=2, workers=1, progress=False)
    (out / "data-00000-of-00002.tfrecord.partial").write_bytes(b"half a shard")
    shards = [str(out / f"data-0000{i}-of-00002.tfrecord") for i in range(2)]
    assert ConvertedDataset.open(str(out)).shards == shards
    assert ConvertedDataset.open(str(out)).num_examples == 12  # from report.json
    (out / "report.json").unlink()
    with pytest.raises(IncompleteDataset, match=f"{out}: no report.json"):
        _ = ConvertedDataset.open(str(out)).shards
    with pytest.raises(IncompleteDataset, match=f"{out}: no report.json"):
        evaluate_model(str(tmp_path / "no-model"), str(out))  # before the model is loaded


def test_output_through_a_symlink_replaces_the_target(synth, tmp_path):
    real, link = tmp_path / "real", tmp_path / "link"
    real.mkdir()
    link.symlink_to(real)
    for shards in (3, 2):
        cc.convert_coco(str(synth / "annotations.json"), str(synth / "images"), str(link),
                        num_shards=shards, workers=1, progress=False)
    assert link.is_symlink() and sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]
    assert sorted(p.name for p in real.iterdir()) == [
        "data-00000-of-00002.tfrecord", "data-00001-of-00002.tfrecord", "label_map.json",
        "report.json"]
