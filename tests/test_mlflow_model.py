"""The registered model is an MLflow pyfunc model: the register step logs it on a loopback
MLflow server, `mlflow.pyfunc.load_model("models:/NAME/VERSION")` and `mlflow models predict`
answer with the SavedModel's own detections, and `init_from=models:/...` still finds the
training artifact inside it.

The detector is the tiny Keras stand-in of test_export_saved_model (real export, anchors,
NMS), so export and registration take seconds.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from efficientdet.orchestration import pipeline_steps
from tests.test_export_saved_model import (
    LABEL_MAP,
    png_bytes,
    sample_images,
    tiny_detector,
    tiny_meta,
)


@pytest.fixture
def tracked(mlflow_env, track_to):
    """Tracking on the loopback server, in an experiment of this test's own."""
    return track_to(mlflow_env, "pyfunc")


@pytest.fixture(scope="module")
def exported_detector(tmp_path_factory):
    """A training artifact (model.json + weights) and its export folder with saved_model/."""
    from efficientdet.export.saved_model import export_saved_model

    root = tmp_path_factory.mktemp("tiny")
    model = tiny_detector()
    artifact = root / "model"
    artifact.mkdir()
    (artifact / "model.json").write_text(json.dumps(tiny_meta().to_dict()))
    model.save_weights(str(artifact / "model.weights.h5"))
    export_saved_model(model, tiny_meta(), str(root / "exported" / "saved_model"))
    return artifact, root / "exported"


def _register(artifact, exported, name, **kw):
    return pipeline_steps.register(str(artifact), name=name, metric_name="AP",
                                   metric_value=kw.pop("value", 0.5), threshold=0.3,
                                   extra_dirs={"exported": str(exported)}, **kw)


def _saved_model_detections(saved_model, encoded: list[bytes]) -> dict:
    import tensorflow as tf

    serve = tf.saved_model.load(str(saved_model)).signatures["serving_bytes"]
    return {k: v.numpy() for k, v in serve(image_bytes=tf.constant(encoded)).items()}


def _assert_same_detections(rows: pd.DataFrame, expected: dict) -> None:
    names = {c["id"]: c["name"] for c in LABEL_MAP["classes"]}
    assert expected["num_detections"].min() > 0
    for i, row in rows.iterrows():
        n = int(expected["num_detections"][i])
        assert row["num_detections"] == n
        np.testing.assert_allclose(np.array(row["boxes"]).reshape(-1, 4),
                                   expected["boxes"][i, :n], rtol=1e-6)
        np.testing.assert_allclose(row["scores"], expected["scores"][i, :n], rtol=1e-6)
        assert list(row["category_ids"]) == expected["category_ids"][i, :n].tolist()
        assert list(row["labels"]) == [names[c] for c in row["category_ids"]]


def test_registered_model_is_a_pyfunc_with_the_saved_models_detections(tracked,
                                                                         exported_detector):
    import mlflow

    from efficientdet.training.initialization import artifact_task, local_copy

    artifact, exported = exported_detector
    result, md = _register(artifact, exported, "pyfunc-det")
    assert result["alias"] == "champion" and "mlflow.pyfunc.load_model" in md

    model = mlflow.pyfunc.load_model(f"models:/pyfunc-det/{result['version']}")
    schema = model.metadata.get_input_schema()
    assert schema.input_names() == ["image"]
    assert model.metadata.get_output_schema().input_names()[:3] == ["boxes", "scores",
                                                                   "category_ids"]
    assert model.metadata.load_input_example() is not None
    images = [png_bytes(im) for im in sample_images(3, seed=3)]  # three different sizes
    rows = model.predict(pd.DataFrame({"image": images}))
    assert len(rows) == 3
    _assert_same_detections(rows, _saved_model_detections(exported / "saved_model", images))

    with pytest.raises(Exception, match="image"):
        model.predict(pd.DataFrame({"picture": images}))

    # the register run holds the other exports, not a second copy of the SavedModel
    version = mlflow.MlflowClient().get_model_version("pyfunc-det", result["version"])
    assert version.source.startswith("models:/")
    # init_from=models:/NAME@ALIAS trains from the artifact inside the MLflow model
    local = local_copy("models:/pyfunc-det@champion")
    assert artifact_task(local) == "detection"
    assert (local / "model.weights.h5").read_bytes() == \
        (artifact / "model.weights.h5").read_bytes()


def test_register_exports_a_saved_model_when_the_export_step_made_none(
        tracked, exported_detector, tmp_path, monkeypatch):
    """Only ONNX asked: the register step exports the SavedModel it serves from the artifact."""
    import mlflow

    artifact, exported = exported_detector
    only_onnx = tmp_path / "exported"
    (only_onnx / "onnx").mkdir(parents=True)
    (only_onnx / "onnx" / "model.onnx").write_bytes(b"onnx")
    monkeypatch.setattr("efficientdet.models.artifact.load_artifact",
                        lambda uri, cache_dir=None: (tiny_detector(), tiny_meta()))
    result, _ = _register(artifact, only_onnx, "pyfunc-onnx-only", value=0.1)
    assert result["alias"] is None
    model = mlflow.pyfunc.load_model(f"models:/pyfunc-onnx-only/{result['version']}")
    images = [png_bytes(im) for im in sample_images(2, seed=4)]
    _assert_same_detections(model.predict(pd.DataFrame({"image": images})),
                            _saved_model_detections(exported / "saved_model", images))
    run_id = mlflow.MlflowClient().get_model_version("pyfunc-onnx-only", result["version"]).run_id
    listed = [a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "exported/onnx")]
    assert listed == ["exported/onnx/model.onnx"]


@pytest.mark.slow
def test_mlflow_models_predict_cli_answers_with_detections(tracked, exported_detector, tmp_path):
    """`mlflow models predict --env-manager local` (what `mlflow models serve` runs per request)
    reads the documented JSON: base64 images in a dataframe_split `image` column."""
    artifact, exported = exported_detector
    result, _ = _register(artifact, exported, "pyfunc-cli")
    images = [png_bytes(im) for im in sample_images(2, seed=5)]
    request = {"dataframe_split": {"columns": ["image"], "data": [
        [base64.b64encode(b).decode()] for b in images]}}
    (tmp_path / "input.json").write_text(json.dumps(request))
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracked, "TF_CPP_MIN_LOG_LEVEL": "2",
           "CUDA_VISIBLE_DEVICES": "-1"}
    subprocess.run([os.path.join(os.path.dirname(sys.executable), "mlflow"), "models",
                    "predict", "-m", f"models:/pyfunc-cli/{result['version']}",
                    "-i", str(tmp_path / "input.json"), "-t", "json",
                    "-o", str(tmp_path / "out.json"), "--env-manager", "local"],
                   check=True, env=env, cwd=tmp_path, timeout=600, capture_output=True)
    answer = json.loads((tmp_path / "out.json").read_text())
    rows = pd.DataFrame(answer["predictions"] if isinstance(answer, dict) else answer)
    _assert_same_detections(rows, _saved_model_detections(exported / "saved_model", images))
