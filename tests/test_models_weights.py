"""Backbone weights from keras.applications files and from our own classifier weights."""

from __future__ import annotations

import h5py
import keras
import numpy as np
import pytest

import efficientdet  # noqa: F401  (protobuf shim before TensorFlow)
from efficientdet.models import build_backbone, build_model
from efficientdet.models.weights import (
    WeightsMismatchError,
    find_backbone,
    load_backbone_weights,
    load_keras_applications_weights,
)

SIZE = 64
TAPS_B0 = ["block3b_add", "block5c_add", "block7a_project_bn"]  # C3, C4, C5 in keras.applications


def _randomize(model, seed=0):
    """Random weights everywhere (BN statistics too), so a mis-mapped layer cannot pass."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            _randomize(layer, seed + 1)
            continue
        weights = layer.get_weights()
        if not weights:
            continue
        if layer.name == "normalization":  # keras.applications: ImageNet mean/variance in [0, 1]
            layer.set_weights([np.array([0.485, 0.456, 0.406], "float32"),
                               np.square(np.array([0.229, 0.224, 0.225], "float32")), weights[2]])
            continue
        new = [rng.normal(0.0, 0.2, w.shape).astype("float32") for w in weights]
        if isinstance(layer, keras.layers.BatchNormalization):
            new[3] = rng.uniform(0.5, 1.5, weights[3].shape).astype("float32")
        layer.set_weights(new)


@pytest.fixture(scope="module")
def keras_b0():
    model = keras.applications.EfficientNetB0(weights=None, include_top=False,
                                              input_shape=(SIZE, SIZE, 3))
    _randomize(model)
    return model


@pytest.fixture(scope="module")
def detector():
    """One D0 (3 classes, 128 px) shared by the tests: every load overwrites its backbone."""
    return build_model("efficientdet-d0", num_classes=3, image_size=128)


def _images(batch=2, size=SIZE):
    return np.random.default_rng(7).uniform(0, 255, (batch, size, size, 3)).astype("float32")


def _assert_features_equal(ours, theirs):
    for a, b in zip(ours, theirs):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-4 * max(1.0, np.abs(b).max()))


@pytest.mark.parametrize("fmt", ["keras3", "legacy"])
def test_keras_applications_file_gives_identical_features(keras_b0, tmp_path, fmt):
    if fmt == "keras3":
        path = tmp_path / "efficientnetb0_notop.weights.h5"
        keras_b0.save_weights(path)
    else:  # the Keras 2 layout of the files users download (efficientnetb0_notop.h5)
        from keras.src.legacy.saving import legacy_h5_format

        path = tmp_path / "efficientnetb0_notop.h5"
        with h5py.File(path, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, keras_b0)
    backbone = build_backbone("efficientnet-b0", SIZE)
    assert load_keras_applications_weights(backbone, path) == 128  # stem + 16 blocks' layers
    x = _images()
    reference = keras.Model(keras_b0.input, [keras_b0.get_layer(n).output for n in TAPS_B0])
    _assert_features_equal(backbone(x, training=False), reference(x, training=False))


def test_keras_applications_file_with_top_loads_into_a_detector(tmp_path, detector):
    model = keras.applications.EfficientNetB0(weights=None, input_shape=(128, 128, 3))
    _randomize(model, seed=3)
    path = tmp_path / "b0.weights.h5"
    model.save_weights(path)
    det = detector
    load_backbone_weights(det, path)
    x = _images(1, 128)
    reference = keras.Model(model.input, [model.get_layer(n).output for n in TAPS_B0])
    _assert_features_equal(find_backbone(det)(x, training=False), reference(x, training=False))


def test_own_classifier_weights_into_detector_backbone(tmp_path, detector):
    clf = build_model("efficientnet-b0", num_classes=7, image_size=SIZE)
    _randomize(clf, seed=5)
    path = tmp_path / "classifier.weights.h5"
    clf.save_weights(path)
    det = detector
    head_before = [np.copy(w) for w in det.get_layer("class_net_predict").get_weights()]
    assert load_backbone_weights(det, path) == 128
    for a, b in zip(find_backbone(det).weights, find_backbone(clf).weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(det.get_layer("class_net_predict").get_weights(), head_before):
        np.testing.assert_array_equal(a, b)  # only the backbone changes
    x = _images(1, 128)
    same_size = build_backbone("efficientnet-b0", 128)
    same_size.set_weights(find_backbone(clf).get_weights())
    _assert_features_equal(find_backbone(det)(x, training=False), same_size(x, training=False))
    # an artifact directory holding model.weights.h5 works too
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    clf.save_weights(artifact / "model.weights.h5")
    assert load_backbone_weights(same_size, artifact) == 128


def test_wrong_variant_is_refused_with_file_and_layer_named(tmp_path, detector):
    b1 = build_model("efficientnet-b1", num_classes=4, image_size=SIZE)
    path = tmp_path / "b1.weights.h5"
    b1.save_weights(path)
    det = detector
    before = [np.copy(w) for w in find_backbone(det).get_weights()]
    with pytest.raises(WeightsMismatchError) as info:
        load_backbone_weights(det, path)
    message = str(info.value)
    assert str(path) in message and "backbone layer #" in message and "expects" in message
    for a, b in zip(find_backbone(det).get_weights(), before):
        np.testing.assert_array_equal(a, b)  # nothing assigned on failure
    # a B0 file is too shallow for a B1 backbone
    b0 = build_model("efficientnet-b0", num_classes=4, image_size=SIZE)
    b0_path = tmp_path / "b0.weights.h5"
    b0.save_weights(b0_path)
    with pytest.raises(WeightsMismatchError, match="b0.weights.h5"):
        load_backbone_weights(build_backbone("efficientnet-b1", SIZE), b0_path)


def test_missing_and_non_hdf5_files(tmp_path):
    backbone = build_backbone("efficientnet-b0", SIZE)
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        load_backbone_weights(backbone, tmp_path / "nope.h5")
    junk = tmp_path / "junk.h5"
    junk.write_text("not hdf5")
    with pytest.raises(WeightsMismatchError, match="junk.h5: not an HDF5 weights file"):
        load_backbone_weights(backbone, junk)
    with pytest.raises(ValueError, match="has no 'backbone' sub-model"):
        find_backbone(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]))
