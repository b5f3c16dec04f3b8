"""Training from pretrained weights: init.model (imported automl D0 on a 4-class set),
init.backbone (classifier artifact, automl checkpoint), init.freeze, and recipes that name
weights which are not there."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

import efficientdet  # noqa: F401  (protobuf shim before TensorFlow)
from efficientdet.cli import main
from efficientdet.training.config import ConfigError, TrainOverrides, build_config, load_config
from tests.test_training_unit import write_detection_set

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "automl-efficientdet-d0"
needs_fixture = pytest.mark.skipif(
    not (FIXTURE / "ckpt" / "checkpoint").is_file(),
    reason=f"automl D0 fixture not found at {FIXTURE} (shared/fixtures beside the repository)")
PRIOR = -math.log((1 - 0.01) / 0.01)


@pytest.fixture(scope="module")
def imported_d0(tmp_path_factory):
    if not (FIXTURE / "ckpt" / "checkpoint").is_file():
        pytest.skip(f"automl D0 fixture not found at {FIXTURE}")
    from efficientdet.models.automl_import import import_automl

    out = tmp_path_factory.mktemp("coco-d0") / "model"
    import_automl("efficientdet-d0", str(FIXTURE / "ckpt"), str(out), image_size=128)
    return out


def _config(data, **init):
    return build_config({"model": "efficientdet-d0", "image_size": 128,
                         "data": {"train": str(data)}, "init": init})


def _by_name(model) -> dict:
    from efficientdet.training.initialization import _named_variables

    return {k: np.asarray(v) for k, v in _named_variables(model).items()}


@pytest.mark.slow
@needs_fixture
def test_init_model_keeps_everything_but_the_class_head(imported_d0, tmp_path):
    from efficientdet.models import build_model
    from efficientdet.models.artifact import load_artifact
    from efficientdet.training.initialization import apply_init

    source = _by_name(load_artifact(str(imported_d0))[0])
    config = dataclasses.replace(_config(tmp_path, model=str(imported_d0)), num_classes=4)
    model = build_model("efficientdet-d0", 4, 128)
    report = apply_init(model, config)["model"]
    assert report["reinitialised"] == ["class_net_predict/depthwise_kernel",
                                       "class_net_predict/pointwise_kernel",
                                       "class_net_predict/bias"]
    got = _by_name(model)
    assert report["loaded"] == len(got) - 3
    for key, value in got.items():
        if key.startswith("class_net_predict/"):
            continue
        assert np.array_equal(value, source[key]), key
    np.testing.assert_allclose(got["class_net_predict/bias"], np.full(36, PRIOR), rtol=1e-6)


@pytest.mark.slow
@needs_fixture
def test_train_init_model_fine_tunes_on_four_classes_with_frozen_backbone(imported_d0,
                                                                          tmp_path, capsys):
    from efficientdet.models.artifact import load_artifact

    data = write_detection_set(tmp_path / "data", images=4, classes=4, image_size=128, shards=1)
    out = tmp_path / "run"
    code = main(["train", "--config", "synth-detection", "--init-model", str(imported_d0),
                 "--output", str(out), "--set", f"data.train={data}", "--set", "image_size=128",
                 "--set", "train.steps=2", "--set", "data.batch_size=2",
                 "--set", "init.freeze=^(stem|block)", "--set", "logging.mlflow=false",
                 "--set", "checkpoint.resume=false", "--set", "optimizer.ema_decay=0"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "re-initialised class_net_predict/depthwise_kernel" in printed
    assert "init.freeze" in printed
    tuned, meta = load_artifact(str(out / "model"))
    assert meta.num_classes == 4
    before, after = _by_name(load_artifact(str(imported_d0))[0]), _by_name(tuned)
    frozen = [k for k in after if k.startswith(("stem_conv/", "block")) and
              not k.endswith(("moving_mean", "moving_variance"))]
    assert frozen and all(np.array_equal(after[k], before[k]) for k in frozen)
    assert not np.array_equal(after["fpn_cell0_node0_conv/pointwise_kernel"],
                              before["fpn_cell0_node0_conv/pointwise_kernel"])
    assert after["class_net_predict/bias"].shape == (36,)


def test_init_backbone_from_a_classifier_artifact(tmp_path):
    from efficientdet.models import build_model
    from efficientdet.models.artifact import save_artifact
    from efficientdet.training.initialization import apply_init

    classifier = build_model("efficientnet-b0", num_classes=3, image_size=64)
    for v in classifier.weights:  # distinct values everywhere, BN statistics too
        v.assign(np.random.default_rng(len(v.path)).normal(0, 0.1, v.shape) + 1.0)
    save_artifact(classifier, {"task": "classification", "model": "efficientnet-b0",
                               "num_classes": 3, "image_size": 64}, str(tmp_path / "cls"))
    detector = build_model("efficientdet-d0", 4, 128)
    report = apply_init(detector, _config(tmp_path, backbone=str(tmp_path / "cls")))
    assert report["backbone"]["loaded"] == len(detector.get_layer("backbone").weights)
    theirs = _by_name(classifier)
    got = _by_name(detector)
    shared = [k for k in got if k.startswith(("stem", "block"))]
    assert len(shared) == len(detector.get_layer("backbone").weights)
    assert all(np.array_equal(got[k], theirs[k]) for k in shared)


@needs_fixture
def test_init_backbone_from_an_automl_checkpoint_leaves_the_rest_alone(tmp_path):
    import tensorflow as tf

    from efficientdet.models import build_model
    from efficientdet.training.initialization import apply_init

    detector = build_model("efficientdet-d0", 4, 128)
    head_before = np.asarray(detector.get_layer("class_net_conv0").weights[0])
    report = apply_init(detector, _config(tmp_path, backbone=str(FIXTURE / "ckpt")))
    assert report["backbone"]["kind"] == "automl checkpoint"
    reader = tf.train.load_checkpoint(str(FIXTURE / "ckpt" / "model.ckpt"))
    stem = detector.get_layer("backbone").get_layer("stem_conv").weights[0]
    assert np.array_equal(np.asarray(stem), reader.get_tensor(
        "efficientnet-b0/stem/conv2d/kernel/ExponentialMovingAverage"))
    assert np.array_equal(np.asarray(detector.get_layer("class_net_conv0").weights[0]),
                          head_before)


def test_coco_recipe_stops_at_once_when_its_backbone_is_missing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["train", "--config", "efficientdet-d0-coco", "--set", "data.train=nowhere"])
    assert code == 2
    err = capsys.readouterr().err
    assert "init.backbone" in err and "--init-backbone" in err and "from scratch" in err


def test_init_keys_are_validated(tmp_path):
    with pytest.raises(ConfigError, match="init.freeze_steps"):
        build_config({"data": {"train": "d"}, "init": {"freeze_steps": -1}})
    with pytest.raises(ConfigError, match="init.bakbone"):
        build_config({"data": {"train": "d"}}, ["init.bakbone=x"])
    from efficientdet.models import build_model
    from efficientdet.training.initialization import apply_init

    with pytest.raises(ConfigError, match="exclude each other"):
        apply_init(build_model("efficientdet-d0", 4, 128),
                   _config(tmp_path, model="a", backbone="b"))


def test_pipeline_init_from_picks_model_or_backbone(tmp_path):
    from efficientdet.models import build_model
    from efficientdet.models.artifact import save_artifact
    from efficientdet.training.initialization import init_overrides

    save_artifact(build_model("efficientnet-b0", num_classes=3, image_size=64),
                  {"task": "classification", "model": "efficientnet-b0", "num_classes": 3,
                   "image_size": 64}, str(tmp_path / "cls"))
    cls = str(tmp_path / "cls")
    assert init_overrides(cls, "detection") == {"init_backbone": cls}
    assert init_overrides(cls, "classification") == {"init_model": cls}
    assert init_overrides("", "detection") == {}
    assert init_overrides("ckpt/efficientnet-b0", "detection") == {
        "init_backbone": "ckpt/efficientnet-b0"}
    # the values the trainer receives: the recipe's backbone replaced, or dropped for a model
    d0 = load_config("efficientdet-d0-coco",
                     overrides=TrainOverrides(**init_overrides(cls, "detection")))
    assert d0.init.backbone == cls and d0.init.model is None
    b0 = load_config("efficientnet-b0-imagenet", ["init.backbone=x"],
                     overrides=TrainOverrides(**init_overrides(cls, "classification")))
    assert b0.init.model == cls and b0.init.backbone is None
