"""The report builders, without a model: header, stated sample threshold, top-K boxes, file-name
titles, per-class AP once, and the classifier report on a small known confusion case."""

from __future__ import annotations

import re

import numpy as np
import pytest

from efficientdet.evaluation import classification_report, report_page, reports
from efficientdet.evaluation.classification import ConfusionCounts
from efficientdet.evaluation.coco import evaluate_coco, to_coco_detections
from efficientdet.evaluation.evaluate import report_header
from efficientdet.models.model_meta import ModelMeta

HEADER = report_page.ReportHeader(model="s3://models/run-7/model", data="s3://data/val",
                                  config="efficientdet-d0, 512x512, 90 classes",
                                  run_id="abc123", training_run_id="train456",
                                  date="2024-05-01 12:00 UTC")


def _header_cells(html: str) -> dict[str, str]:
    header = re.search(r'<table class="header">(.*?)</table>', html).group(1)
    return dict(re.findall(r"<tr><td>(.*?)</td><td>(.*?)</td></tr>", header))


def _coco():
    """Two images, classes cat (found) and dog (missed): per-class AP 1.0 and 0.0."""
    gt = {"images": [{"id": 1, "height": 100, "width": 100},
                     {"id": 2, "height": 100, "width": 100}],
          "annotations": [
              {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40],
               "area": 1600, "iscrowd": 0},
              {"id": 2, "image_id": 2, "category_id": 2, "bbox": [50, 50, 30, 30],
               "area": 900, "iscrowd": 0}],
          "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}
    dets = to_coco_detections(1, [[10, 10, 50, 50]], [0.9], [1])
    return evaluate_coco(gt, dets)


def test_header_names_model_data_run_config_and_date():
    html = report_page.page("Evaluation", HEADER, [])
    assert _header_cells(html) == {
        "Model": "s3://models/run-7/model", "Data": "s3://data/val",
        "Config": "efficientdet-d0, 512x512, 90 classes", "MLflow run": "abc123",
        "Training run": "train456", "Date": "2024-05-01 12:00 UTC"}
    untracked = report_page.page("Evaluation", report_page.ReportHeader("m", "d"), [])
    assert _header_cells(untracked)["MLflow run"] == "none (not tracked)"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", _header_cells(untracked)["Date"])


def test_report_header_from_model_meta_takes_the_training_run(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    meta = ModelMeta(task="detection", model="efficientdet-d0", num_classes=90,
                     image_size=512, training={"mlflow_run_id": "train456"})
    header = report_header("artifact", "val", meta)
    assert (header.config, header.run_id, header.training_run_id) == (
        "efficientdet-d0, 512x512, 90 classes", "train456", "train456")
    assert report_header("artifact", "val", meta, run_id="eval789").run_id == "eval789"
    assert report_header("dets.json", "gt.json").config == ""


def test_detection_report_states_threshold_and_shows_per_class_ap_once():
    coco = _coco()
    html = reports.report_html(coco, HEADER, pr_curves=b"pr", per_class_ap=b"chart",
                               samples=b"samples", score_threshold=0.3, max_boxes=10)
    assert html.count("<h2>Per-class AP</h2>") == 1
    assert html.count("<td>cat</td>") == 1 and html.count("<td>dog</td>") == 1
    per_class = html.split("<h2>Per-class AP</h2>")[1].split("<h2>")[0]
    assert per_class.count("<table") == 1 and per_class.count("<img") == 1
    assert per_class.index("<td>cat</td><td>1.0000</td>") < per_class.index(
        "<td>dog</td><td>0.0000</td>")  # highest AP first
    assert "score &gt;= 0.30, at most 10 per image" in html
    assert _header_cells(html)["MLflow run"] == "abc123"
    without_samples = reports.report_html(coco, HEADER, pr_curves=b"pr", per_class_ap=b"c")
    assert "Sample detections" not in without_samples


def test_shown_predictions_keep_the_top_k_above_the_threshold():
    scores = [0.2, 0.95, 0.5, 0.31, 0.3, 0.8, 0.29]
    assert reports.shown_predictions(scores, 0.3, 3).tolist() == [1, 5, 2]
    assert reports.shown_predictions(scores, 0.3, 10).tolist() == [1, 5, 2, 3, 4]
    assert reports.shown_predictions([], 0.3, 10).tolist() == []
    with pytest.raises(ValueError, match="max_boxes"):
        reports.shown_predictions(scores, 0.3, -1)


def test_samples_draw_at_most_k_boxes_titled_with_file_names(monkeypatch):
    drawn = []
    monkeypatch.setattr(reports, "figure_png", lambda fig: drawn.append(fig) or b"png")
    many = np.linspace(0.99, 0.31, 25)
    samples = [{"image": np.zeros((64, 64, 3), np.uint8), "image_id": 7,
                "filename": "val2017/000000000139.jpg",
                "pred_boxes": np.tile([[5.0, 5.0, 30.0, 30.0]], (25, 1)), "pred_scores": many,
                "pred_category_ids": np.ones(25, np.int64),
                "true_boxes": np.array([[1.0, 1.0, 20.0, 20.0]]),
                "true_category_ids": np.array([1])},
               {"image": np.zeros((64, 64, 3), np.uint8), "image_id": 8, "filename": "",
                "pred_boxes": np.zeros((0, 4)), "pred_scores": np.zeros(0),
                "pred_category_ids": np.zeros(0, np.int64), "true_boxes": np.zeros((0, 4)),
                "true_category_ids": np.zeros(0)}]
    assert reports.samples_png(samples, {1: "person"}, score_threshold=0.3, max_boxes=4) == b"png"
    first, second = drawn[0].axes[:2]
    red = [p for p in first.patches if p.get_edgecolor()[:3] == (1.0, 0.0, 0.0)]
    assert len(red) == 4 and len(first.patches) == 5  # 4 predictions + 1 ground truth
    assert [t.get_text() for t in first.texts] == [f"person {s:.2f}" for s in many[:4]]
    assert first.get_title() == "000000000139.jpg"
    assert second.get_title() == "image 8"  # no file name in the record


def test_write_report_writes_the_files_with_a_header(tmp_path):
    uris = reports.write_report(str(tmp_path), _coco(), [], {1: "cat", 2: "dog"}, HEADER)
    assert [u.rsplit("/", 1)[-1] for u in uris] == ["pr_curves.png", "per_class_ap.png",
                                                    "report.html"]
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2
    assert _header_cells(html)["Model"] == "s3://models/run-7/model"


def _confusion():
    """cat: 1 of 3 right (2 taken for dog); dog: 2 of 2; bird: 2 of 3 (1 taken for cat)."""
    confusion = ConfusionCounts(3)
    confusion.update([0, 1, 1, 1, 1], [0, 0, 0, 1, 1])
    confusion.update([2, 0, 2], [2, 2, 2])
    return confusion


def test_confusion_counts_per_class_accuracy_and_top_confusions():
    confusion = _confusion()
    np.testing.assert_array_equal(confusion.matrix, [[1, 2, 0], [0, 2, 0], [1, 0, 2]])
    assert confusion.count == 8
    assert confusion.per_class_accuracy() == pytest.approx([1 / 3, 1.0, 2 / 3])
    assert confusion.top_confusions() == [(0, 1, 2), (2, 0, 1)]
    assert confusion.top_confusions(1) == [(0, 1, 2)]
    assert ConfusionCounts(2).per_class_accuracy() == [None, None]
    with pytest.raises(ValueError, match=r"labels hold class indices outside 0..2: \[3\]"):
        confusion.update([0], [3])
    with pytest.raises(ValueError, match="num_classes"):
        ConfusionCounts(0)


def test_many_classes_keep_the_most_confused_in_the_matrix():
    confusion = ConfusionCounts(30)
    confusion.update(list(range(30)), list(range(30)))  # every class right once
    confusion.update([25, 3, 3], [7, 12, 12])  # 7 -> 25 once, 12 -> 3 twice
    keep = classification_report.matrix_classes(confusion, max_classes=4)
    assert len(keep) == 4 and {3, 7, 12, 25} == set(keep)
    assert classification_report.matrix_classes(_confusion(), max_classes=20) == [0, 1, 2]


def test_classification_report_content(tmp_path):
    names = {0: "cat", 1: "dog", 2: "bird"}
    uris = classification_report.write_classification_report(
        str(tmp_path), _confusion(), {"top1": 0.625, "top5": 1.0}, names, HEADER)
    assert [u.rsplit("/", 1)[-1] for u in uris] == ["confusion_matrix.png", "report.html"]
    assert (tmp_path / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    html = (tmp_path / "report.html").read_text()
    assert _header_cells(html)["Data"] == "s3://data/val"
    assert "<td>top1</td><td>0.6250</td>" in html
    assert html.count("data:image/png;base64,") == 1 and "All 3 classes." in html
    per_class = html.split("<h2>Per-class accuracy</h2>")[1].split("<h2>")[0]
    rows = re.findall(r"<tr><td>(\w+)</td><td>(\d+)</td><td>(\d+)</td><td>([\d.]+)</td></tr>",
                      per_class)
    assert rows == [("cat", "3", "1", "0.3333"), ("bird", "3", "2", "0.6667"),
                    ("dog", "2", "2", "1.0000")]
    top = html.split("<h2>Top confusions</h2>")[1]
    assert re.findall(r"<tr><td>(\w+)</td><td>(\w+)</td><td>(\d+)</td>", top) == [
        ("cat", "dog", "2"), ("bird", "cat", "1")]


def test_classification_report_of_a_perfect_classifier_says_so():
    confusion = ConfusionCounts(2)
    confusion.update([0, 1], [0, 1])
    html = classification_report.report_html(confusion, {"top1": 1.0}, {}, HEADER,
                                             matrix_png=b"png")
    assert "No image was misclassified." in html
    assert "<td>0</td><td>1</td><td>1</td><td>1.0000</td>" in html  # unnamed: the index
