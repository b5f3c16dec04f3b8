"""The model artifact: save/load round trip (local and s3://) and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from efficientdet.models.artifact import ArtifactError, load_artifact, read_meta, save_artifact


@pytest.fixture(scope="module")
def classifier():
    from efficientdet.models import build_model

    return build_model("efficientnet-b0", 3, 32)


def _meta():
    return {"task": "classification", "model": "efficientnet-b0", "num_classes": 3,
            "image_size": 32, "label_map": {"classes": [{"id": 0, "name": "a"}]},
            "training": {"final_step": 7}}


def _check_same(model, loaded):
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(model(x, training=False).numpy(),
                               loaded(x, training=False).numpy(), rtol=1e-5, atol=1e-5)


def test_round_trip_local(tmp_path, classifier):
    uri = save_artifact(classifier, _meta(), str(tmp_path / "model"))
    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    assert meta["format_version"] == 1 and meta["overrides"] == {}
    loaded, meta = load_artifact(uri)
    assert meta.label_map.names == {0: "a"} and meta.label_map.task == "classification"
    assert meta.training["final_step"] == 7
    _check_same(classifier, loaded)


def test_round_trip_s3(s3_bucket, classifier):
    uri = f"s3://{s3_bucket}/runs/x/model"
    save_artifact(classifier, _meta(), uri)
    assert read_meta(uri).model == "efficientnet-b0"
    loaded, _ = load_artifact(uri)
    _check_same(classifier, loaded)


def test_errors_name_the_uri(tmp_path, classifier):
    with pytest.raises(ArtifactError, match="nowhere"):
        load_artifact(str(tmp_path / "nowhere"))
    bad = {k: v for k, v in _meta().items() if k != "num_classes"}
    with pytest.raises(ArtifactError, match="num_classes"):
        save_artifact(classifier, bad, str(tmp_path / "m"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_artifact(str(tmp_path / "broken"))
    wrong = dict(_meta(), num_classes=5)
    save_artifact(classifier, wrong, str(tmp_path / "wrong"))
    with pytest.raises(ArtifactError, match="do not fit"):
        load_artifact(str(tmp_path / "wrong"))
