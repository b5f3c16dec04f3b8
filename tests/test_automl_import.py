"""Importing google/automl's D0 reproduces automl's own outputs on the shared fixture.

The fixture (random weights, EMA shadows that differ from the raw values) holds what automl's
TF2 code computed: raw per-level class/box outputs and its post-processed detections. The
import must match them from the checkpoint folder, from a .tar.gz as automl publishes it, and
from automl's Keras .h5."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import h5py
import numpy as np
import pytest

import efficientdet  # noqa: F401  (protobuf shim before TensorFlow)
from efficientdet.cli import main

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "automl-efficientdet-d0"
LEVELS = (3, 4, 5, 6, 7)

pytestmark = pytest.mark.skipif(
    not (FIXTURE / "expected.npz").is_file(),
    reason=f"automl D0 fixture not found at {FIXTURE} (shared/fixtures beside the repository)")


@pytest.fixture(scope="module")
def expected():
    return dict(np.load(FIXTURE / "expected.npz"))


def _import(weights, output, *extra):
    code = main(["models", "import", "--from", "automl", "--model", "efficientdet-d0",
                 "--weights", str(weights), "--output", str(output), *extra])
    assert code == 0
    return output


def _weights(artifact) -> dict:
    out = {}
    with h5py.File(Path(artifact) / "model.weights.h5", "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, np.asarray(obj))
                     if isinstance(obj, h5py.Dataset) else None)
    return out


@pytest.fixture(scope="module")
def from_folder(tmp_path_factory):
    return _import(FIXTURE / "ckpt", tmp_path_factory.mktemp("d0") / "model")


@pytest.mark.slow
def test_raw_outputs_match_automl_at_every_level(from_folder, expected):
    from efficientdet.models.artifact import load_artifact

    model, meta = load_artifact(str(from_folder))
    assert meta.num_classes == 90 and meta.image_size == 512
    out = model(expected["image"].astype("float32"), training=False)
    diffs = {}
    for i, level in enumerate(LEVELS):
        for kind, key in (("class", "class_outputs"), ("box", "box_outputs")):
            ref = expected[f"{kind}_p{level}"]
            got = np.asarray(out[key][i])
            assert got.shape == ref.shape
            diffs[f"{kind}_p{level}"] = float(np.abs(got - ref).max())
    print("max abs diff per level:", json.dumps(diffs))
    assert max(diffs.values()) < 1e-4, diffs


def _predict(artifact, image_file, tmp_path):
    out = tmp_path / f"pred-{Path(artifact).parent.name}"
    assert main(["predict", str(image_file), "--model", str(artifact), "--output", str(out),
                 "--score-threshold", "0", "--batch-size", "1"]) == 0
    dets = json.loads((out / "predictions.json").read_text())["predictions"][0]["detections"]
    return dets


@pytest.fixture(scope="module")
def image_file(expected, tmp_path_factory):
    from PIL import Image

    path = tmp_path_factory.mktemp("img") / "synthetic.png"
    Image.fromarray(expected["image"][0]).save(path)
    return path


def _assert_same_detections(dets, expected):
    n = int(expected["valid"][0])
    assert len(dets) == n
    boxes = np.array([d["box"] for d in dets])
    scores = np.array([d["score"] for d in dets])
    classes = np.array([d["category_id"] for d in dets])
    np.testing.assert_array_equal(classes, expected["classes"][0][:n].astype(int))
    box_diff = float(np.abs(boxes - expected["boxes"][0][:n]).max())
    score_diff = float(np.abs(scores - expected["scores"][0][:n]).max())
    print(f"{n} detections: max box diff {box_diff:.4f} px, max score diff {score_diff:.2e}")
    assert box_diff <= 0.5 and score_diff <= 1e-3


@pytest.mark.slow
def test_predict_reproduces_automl_detections(from_folder, image_file, expected, tmp_path):
    meta = json.loads((Path(from_folder) / "model.json").read_text())
    assert meta["label_map"]["classes"][0] == {"id": 1, "name": "person"}
    assert len(meta["label_map"]["classes"]) == 80 and meta["num_classes"] == 90
    _assert_same_detections(_predict(from_folder, image_file, tmp_path), expected)


@pytest.mark.parametrize("prefix,state_file", [("model.ckpt-300000", True), ("model", False)])
def test_tar_gz_as_published_gives_the_same_weights(from_folder, tmp_path, prefix, state_file):
    """automl's archives hold a folder with the checkpoint under various prefixes."""
    folder = tmp_path / "efficientdet-d0"
    folder.mkdir()
    for f in (FIXTURE / "ckpt").glob("model.ckpt.*"):
        shutil.copy(f, folder / f.name.replace("model.ckpt", prefix))
    if state_file:
        (folder / "checkpoint").write_text(f'model_checkpoint_path: "{prefix}"\n')
    archive = tmp_path / "efficientdet-d0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="efficientdet-d0")
    shutil.rmtree(folder)
    got = _weights(_import(archive, tmp_path / "model", "--image-size", "128"))
    ref = _weights(from_folder)
    assert got.keys() == ref.keys()
    assert all(np.array_equal(got[k], ref[k]) for k in ref)


@pytest.mark.slow
def test_h5_reproduces_automl_detections(image_file, expected, tmp_path):
    artifact = _import(FIXTURE / "efficientdet-d0.h5", tmp_path / "h5" / "model")
    _assert_same_detections(_predict(artifact, image_file, tmp_path), expected)


def test_no_ema_takes_raw_values(from_folder, tmp_path):
    import tensorflow as tf

    raw = _weights(_import(FIXTURE / "ckpt", tmp_path / "model", "--no-ema", "--image-size",
                           "128"))
    ema = _weights(from_folder)
    reader = tf.train.load_checkpoint(str(FIXTURE / "ckpt" / "model.ckpt"))
    name = "class_net/class-predict/bias"
    hits = [k for k, v in raw.items() if np.array_equal(v, reader.get_tensor(name))]
    assert len(hits) == 1  # exactly our class_net_predict bias holds the raw value
    assert not np.array_equal(ema[hits[0]], raw[hits[0]])
    assert np.array_equal(ema[hits[0]],
                          reader.get_tensor(name + "/ExponentialMovingAverage"))


class _DictSource:
    """A source whose variables the test edits (drop, add, reshape one)."""

    def __init__(self, arrays, where="edited.ckpt"):
        self.where, self._arrays = where, arrays
        self.shapes = {k: tuple(v.shape) for k, v in arrays.items()}

    def read(self, name):
        return self._arrays[name]


@pytest.fixture(scope="module")
def fixture_arrays():
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(FIXTURE / "ckpt" / "model.ckpt"))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()}


@pytest.fixture(scope="module")
def d0():
    from efficientdet.models import build_model

    return build_model("efficientdet-d0", num_classes=90, image_size=128)


def _run(d0, arrays, **kw):
    from efficientdet.models import get_config
    from efficientdet.models.automl_import import import_weights

    return import_weights(d0, get_config("efficientdet-d0"), _DictSource(arrays), **kw)


def test_missing_unused_and_mismatched_variables_are_named(d0, fixture_arrays):
    from efficientdet.models.automl_import import AutomlImportError

    name = "box_net/box-2-bn-4/moving_variance"
    dropped = {k: v for k, v in fixture_arrays.items() if not k.startswith(name)}
    with pytest.raises(AutomlImportError, match=f"lacks model variable {name}"):
        _run(d0, dropped)
    report = _run(d0, dropped, allow_missing=r"box-2-bn-4/moving_variance$")
    assert report.missing_allowed == [name]

    extra = {**fixture_arrays, "fpn_cells/cell_9/fnode0/WSM": np.float32(1.0)}
    with pytest.raises(AutomlImportError, match="has variable fpn_cells/cell_9/fnode0/WSM "):
        _run(d0, extra)

    bad = dict(fixture_arrays)
    bad["class_net/class-predict/bias/ExponentialMovingAverage"] = np.zeros(10, "float32")
    with pytest.raises(AutomlImportError, match=r"class-predict/bias/Exponential.*\(10,\)"):
        _run(d0, bad)


def test_cli_reports_a_bad_source_in_one_line(tmp_path, capsys):
    code = main(["models", "import", "--from", "automl", "--model", "efficientdet-d1",
                 "--weights", str(FIXTURE / "ckpt"), "--output", str(tmp_path / "m"),
                 "--image-size", "128"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("effdet models: error: ")
    assert "lacks model variable efficientnet-b1/stem/conv2d/kernel (and " in err
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_checkpoint_prefix_on_s3(from_folder, s3_bucket, tmp_path):
    """A prefix (not an object, not a folder) on S3: its folder is fetched, the prefix kept."""
    from efficientdet import storage

    for f in (FIXTURE / "ckpt").iterdir():
        storage.upload_file(f, f"s3://{s3_bucket}/automl/d0/{f.name}")
    got = _weights(_import(f"s3://{s3_bucket}/automl/d0/model.ckpt", tmp_path / "model",
                           "--image-size", "128"))
    ref = _weights(from_folder)
    assert got.keys() == ref.keys()
    assert all(np.array_equal(got[k], ref[k]) for k in ref)
