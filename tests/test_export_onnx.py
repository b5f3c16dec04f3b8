"""ONNX export: tf2onnx from the SavedModel, onnxruntime outputs within the stated tolerance."""

from __future__ import annotations

import json

import numpy as np
import pytest

from efficientdet.cli import main
from tests import test_export_saved_model as helpers
from tests.test_export_saved_model import sample_images, tiny_meta, write_dataset

tiny_artifact = helpers.tiny_artifact  # the fixture


@pytest.mark.slow
def test_onnx_export_matches_tensorflow_within_tolerance(tmp_path, tiny_artifact, capsys):
    from efficientdet.export.onnx import match_detections
    from efficientdet.inference.runners import ModuleRunner, OnnxRunner, served_module

    data = write_dataset(tmp_path / "data", sample_images(3))
    out = tmp_path / "onnx"
    assert main(["export", "--model", "a", "--output", str(out), "--format", "onnx",
                 "--data", data, "--json"]) == 0
    report = json.loads((out / "export_report.json").read_text())
    assert report["onnx_check"]["unmatched"] == 0 and report["onnx_check"]["detections"] > 0
    assert report["parity"]["passed"] and abs(report["parity"]["drop"]) <= 1e-3
    meta = json.loads((out / "model.json").read_text())
    assert meta["export"]["onnx"]["opset"] == 17

    # independent check on real-looking images of several sizes, against the in-memory model
    runner = OnnxRunner(out / "model.onnx")
    reference = ModuleRunner(served_module(tiny_artifact, tiny_meta()), tiny_meta())
    images = sample_images(3, seed=5)
    for got, want in zip(runner.predict(images), reference.predict(images)):
        assert len(got["scores"]) == len(want["scores"]) > 0
        np.testing.assert_allclose(got["scores"], want["scores"], atol=1e-4)  # sorted scores
        assert match_detections(want, got)["unmatched"] == 0

    capsys.readouterr()
    assert main(["benchmark", "--model", str(out / "model.onnx"), "--batch-sizes", "1",
                 "--warmup", "1", "--iterations", "2", "--json"]) == 0
    bench = json.loads(capsys.readouterr().out)
    assert bench["runtime"] == "OnnxRunner" and bench["results"][0]["throughput_img_s"] > 0
