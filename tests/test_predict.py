"""`effdet predict` on one image, a directory and a TFRecord, with an artifact and an export."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from efficientdet.cli import main
from tests import test_export_saved_model as helpers
from tests.test_export_saved_model import sample_images, tiny_meta, write_dataset

tiny_artifact = helpers.tiny_artifact  # the fixture


def _write_images(directory, images):
    directory.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(directory / f"img{i}.png")
    return directory


def test_predict_one_image_directory_and_tfrecord(tmp_path, tiny_artifact, capsys):
    from efficientdet.inference.runners import ModuleRunner, served_module

    images = sample_images(3, seed=3)
    folder = _write_images(tmp_path / "imgs", images)
    out = tmp_path / "pred"
    assert main(["predict", "--model", str(tmp_path / "artifact"), str(folder / "img0.png"),
                 "--output", str(out), "--score-threshold", "0.2", "--nms", "hard"]) == 0
    single = json.loads((out / "predictions.json").read_text())["predictions"]
    assert len(single) == 1 and single[0]["height"] == images[0].shape[0]

    # the same detections as the in-memory model with the same settings
    runner = ModuleRunner(served_module(tiny_artifact, tiny_meta(), nms="hard"), tiny_meta())
    ref = runner.predict([images[0]])[0]
    keep = ref["scores"] >= 0.2
    assert len(single[0]["detections"]) == int(keep.sum()) > 0
    np.testing.assert_allclose([d["box"] for d in single[0]["detections"]],
                               ref["boxes"][keep], atol=0.01)
    assert {d["label"] for d in single[0]["detections"]} <= {"circle", "square", "triangle"}
    drawn = Image.open(single[0]["drawn"])
    assert drawn.size == (images[0].shape[1], images[0].shape[0])
    assert not np.array_equal(np.asarray(drawn.convert("RGB")), images[0])  # boxes were drawn

    out2 = tmp_path / "pred2"
    assert main(["predict", "--model", str(tmp_path / "artifact"), str(folder),
                 "--output", str(out2), "--batch-size", "2"]) == 0
    many = json.loads((out2 / "predictions.json").read_text())["predictions"]
    assert [p["image"].rsplit("/", 1)[-1] for p in many] == ["img0.png", "img1.png", "img2.png"]
    assert len(list((out2 / "images").glob("*.jpg"))) == 3

    data = write_dataset(tmp_path / "data", images[:2])
    capsys.readouterr()
    assert main(["predict", "--model", str(tmp_path / "artifact"),
                 f"{data}/data-00000-of-00001.tfrecord", "--json"]) == 0
    from_records = json.loads(capsys.readouterr().out)
    assert [r["image"].rsplit("#", 1)[-1] for r in from_records] == ["0.png", "1.png"]


def test_predict_bad_inputs_name_the_input(tmp_path, tiny_artifact, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    assert main(["predict", "--model", str(tmp_path / "artifact"),
                 str(tmp_path / "notes.txt")]) == 2
    assert "notes.txt: not an image" in capsys.readouterr().err
    assert main(["predict", "--model", str(tmp_path / "nowhere"), str(tmp_path)]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_predict_goes_on_past_unreadable_inputs(tmp_path, tiny_artifact, capsys):
    folder = _write_images(tmp_path / "imgs", sample_images(2, seed=5))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"junk" * 10)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "data-00000-of-00001.tfrecord.partial").write_bytes(b"a conversion in progress")
    out = tmp_path / "pred"
    args = ["predict", "--model", str(tmp_path / "artifact"), str(folder), "--output", str(out),
            "--batch-size", "1"]
    assert main(args) == 0
    err = capsys.readouterr().err
    preds = json.loads((out / "predictions.json").read_text())["predictions"]
    by_name = {p["image"].rsplit("/", 1)[-1]: p for p in preds}
    assert sorted(by_name) == ["broken.png", "empty.jpg", "img0.png", "img1.png"]
    assert set(by_name["broken.png"]) == {"image", "error"}
    assert "not a readable image" in by_name["empty.jpg"]["error"]
    assert "detections" in by_name["img1.png"] and "error" not in by_name["img1.png"]
    assert "broken.png" in err and "empty.jpg" in err and "Traceback" not in err
    assert len(list((out / "images").glob("*.jpg"))) == 2
    assert main([*args, "--strict"]) == 2
    assert "--strict: 2 of 4 inputs could not be read" in capsys.readouterr().err
