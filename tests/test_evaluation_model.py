"""Model evaluation on TFRecords: ground truth rebuilt from records, outputs written; top-k."""

from __future__ import annotations

import json

import numpy as np
import pytest

from efficientdet.cli import main
from efficientdet.evaluation.classification import topk_accuracy
from tests import test_export_saved_model as helpers
from tests.test_export_saved_model import sample_images, write_dataset

tiny_artifact = helpers.tiny_artifact  # the fixture


class PerfectRunner:
    """Answers each image with its true boxes (read from the same records)."""

    task = "detection"

    def __init__(self, records):
        self.records = list(records)
        self.calls = 0

    def predict(self, images, batch_size=8):
        out = []
        for img in images:
            boxes, cats = self.records[self.calls]
            h, w = img.shape[:2]
            out.append({"boxes": boxes * [h, w, h, w], "scores": np.linspace(0.9, 0.5, len(cats)),
                        "category_ids": np.asarray(cats)})
            self.calls += 1
        return out


def test_ground_truth_from_records_scores_perfect_detections_at_one(tmp_path):
    import tensorflow as tf

    from efficientdet.data.schema import parse_detection_example
    from efficientdet.evaluation.evaluate import evaluate_runner

    data = write_dataset(tmp_path / "data", sample_images(5))
    records = [(ex["boxes"], ex["category_ids"]) for ex in tf.data.TFRecordDataset(
        [f"{data}/data-00000-of-00001.tfrecord"]).map(parse_detection_example)
        .as_numpy_iterator()]
    result = evaluate_runner(PerfectRunner(records), data, batch_size=2)
    assert result["result"]["metrics"]["AP"] == pytest.approx(1.0)
    gt = result["ground_truth"]
    assert [im["id"] for im in gt["images"]] == [100, 101, 102, 103, 104]
    assert {c["name"] for c in gt["categories"]} == {"circle", "square", "triangle"}
    ann = gt["annotations"][0]
    im = gt["images"][0]
    assert ann["bbox"][2] == pytest.approx(0.4 * im["width"], rel=1e-5)  # original pixels
    assert ann["area"] == pytest.approx(ann["bbox"][2] * ann["bbox"][3], rel=1e-5)


def test_evaluate_cli_writes_metrics_detections_and_report(tmp_path, tiny_artifact, capsys):
    data = write_dataset(tmp_path / "data", sample_images(4))
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(tmp_path / "artifact"), "--data", data,
                 "--output", str(out), "--json", "--batch-size", "3"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["metrics"]) >= {"AP", "AP50", "ARl"} and printed["num_images"] == 4
    dets = json.loads((out / "detections.json").read_text())
    assert len(dets) == 400 and {d["category_id"] for d in dets} <= {1, 2, 3}
    assert {d["image_id"] for d in dets} == {100, 101, 102, 103}
    assert all(d["bbox"][2] >= 0 and d["bbox"][3] >= 0 for d in dets)
    assert json.loads((out / "metrics.json").read_text())["metrics"] == printed["metrics"]
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3  # PR curves, per-class AP, samples
    assert f"<td>Model</td><td>{tmp_path / 'artifact'}</td>" in html
    assert f"<td>Data</td><td>{data}</td>" in html and "score &gt;= 0.30" in html
    assert (out / "samples.png").stat().st_size > 1000


def test_evaluate_reads_and_writes_s3(tmp_path, tiny_artifact, s3_bucket, capsys):
    from efficientdet import storage

    data = write_dataset(tmp_path / "data", sample_images(2))
    storage.upload_dir(data, f"s3://{s3_bucket}/val")
    out = f"s3://{s3_bucket}/eval"
    assert main(["evaluate", "--model", str(tmp_path / "artifact"), "--data",
                 f"s3://{s3_bucket}/val", "--output", out, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert json.loads(storage.read_text(f"{out}/metrics.json"))["metrics"] == printed["metrics"]
    assert storage.read_bytes(f"{out}/report.html").startswith(b"<!DOCTYPE html>")
    assert len(json.loads(storage.read_text(f"{out}/detections.json"))) == 200


def test_evaluate_cli_usage_errors(tmp_path, capsys):
    assert main(["evaluate", "--model", "m"]) == 2
    assert "need --model and --data" in capsys.readouterr().err
    assert main(["evaluate", "--annotations", str(tmp_path / "missing.json"),
                 "--detections", str(tmp_path / "d.json")]) == 2
    assert "missing.json" in capsys.readouterr().err


def test_topk_accuracy():
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    labels = np.array([1, 1, 0, 2])
    assert topk_accuracy(scores, labels, ks=(1, 2, 5)) == {"top1": 0.25, "top2": 0.5,
                                                           "top5": 1.0}
    with pytest.raises(ValueError, match="matching labels"):
        topk_accuracy(scores, labels[:2])


def _tiny_classifier(num_classes=4):
    import keras

    keras.utils.set_random_seed(1)
    inputs = keras.Input((64, 64, 3))
    x = keras.layers.Rescaling(1 / 127.5, -1.0)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


def test_classifier_evaluate_predict_and_export(tmp_path, monkeypatch, capsys):
    import tensorflow as tf

    from efficientdet.data.schema import classification_example
    from efficientdet.export.saved_model import export_saved_model
    from efficientdet.inference.runners import ModuleRunner, SavedModelRunner, served_module
    from efficientdet.models.model_meta import ModelMeta
    from tests.test_export_saved_model import png_bytes

    model = _tiny_classifier()
    # the bare class list: a label map form older artifacts hold
    old_form = {"task": "classification", "model": "efficientnet-b0", "num_classes": 4,
                "image_size": 64, "label_map": [{"id": i, "name": f"c{i}"} for i in range(4)]}
    meta = ModelMeta.from_dict(old_form)
    (tmp_path / "artifact").mkdir()
    (tmp_path / "artifact" / "model.json").write_text(json.dumps(old_form))
    monkeypatch.setattr("efficientdet.models.artifact.load_artifact",
                        lambda uri, cache_dir=None: (model, meta))
    images = sample_images(6, seed=7)
    labels = [0, 1, 2, 3, 1, 2]
    (tmp_path / "data").mkdir()
    with tf.io.TFRecordWriter(str(tmp_path / "data" / "data-00000-of-00001.tfrecord")) as w:
        for i, (im, label) in enumerate(zip(images, labels)):
            w.write(classification_example(encoded=png_bytes(im), height=im.shape[0],
                                           width=im.shape[1], filename=f"{i}.png", label=label,
                                           text=f"c{label}", image_format="png")
                    .SerializeToString())
    (tmp_path / "data" / "report.json").write_text("{}")  # marks a complete dataset
    assert main(["evaluate", "--model", str(tmp_path / "artifact"), "--data",
                 str(tmp_path / "data"), "--json", "--output", str(tmp_path / "eval")]) == 0
    printed = json.loads(capsys.readouterr().out)
    metrics = printed["metrics"]
    report = (tmp_path / "eval" / "report.html").read_text()
    assert "<h2>Confusion matrix</h2>" in report and "<h2>Top confusions</h2>" in report
    assert "<td>Config</td><td>efficientnet-b0, 64x64, 4 classes</td>" in report
    assert set(printed["per_class_accuracy"]) == {"c0", "c1", "c2", "c3"}
    runner = ModuleRunner(served_module(model, meta), meta)
    probs = np.stack([r["probabilities"] for r in runner.predict(images)])
    assert metrics == topk_accuracy(probs, np.array(labels), ks=(1, 5))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)

    export_saved_model(model, meta, str(tmp_path / "sm"))
    exported = SavedModelRunner(tmp_path / "sm")
    assert exported.task == "classification"
    for got, want in zip(exported.predict(images), runner.predict(images)):
        np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=1e-6)
        np.testing.assert_array_equal(got["top_classes"], want["top_classes"])

    from PIL import Image
    Image.fromarray(images[0]).save(tmp_path / "one.png")
    assert main(["predict", "--model", str(tmp_path / "sm"), str(tmp_path / "one.png"),
                 "--json", "--top-k", "2"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top_k"]
    assert [t["label"] for t in top] == [f"c{c}" for c in np.argsort(-probs[0])[:2]]
