"""Backbone weights from a file: keras.applications EfficientNet weights (legacy `.h5` or
Keras 3 `.weights.h5`) or this project's own classifier/backbone weights.

Layers are mapped by structure, not by name: the backbone's layers that hold weights are
walked in order and paired with the file's layers in the same order (for Keras 3 files, the
k-th layer of each class, which is how Keras 3 names them on disk), and every shape is checked.
Any mismatch raises `WeightsMismatchError` naming the file and the first mismatching layer.
"""

from __future__ import annotations

import logging
import os
import re

import keras
import numpy as np

from efficientdet.models.efficientnet import BACKBONE_NAME

log = logging.getLogger(__name__)

# Leftover file layers allowed after the backbone: keras.applications' top conv/BN/dense.
_TOP_ALLOWANCE = {"conv2d": 1, "batch_normalization": 1, "dense": 1}


class WeightsMismatchError(ValueError):
    """The weights file does not fit the backbone (wrong variant, wrong file)."""


def _snake(class_name: str) -> str:
    """Keras 3's on-disk name of a layer class (keras.src.utils.naming.to_snake_case)."""
    name = re.sub(r"\W+", "", class_name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def find_backbone(model: keras.Model) -> keras.Model:
    """The nested feature extractor of a classifier/detector, or the model if it is one."""
    if model.name == BACKBONE_NAME:
        return model
    try:
        return model.get_layer(BACKBONE_NAME)
    except ValueError:
        raise ValueError(
            f"model {model.name!r} has no '{BACKBONE_NAME}' sub-model; build it with "
            "efficientdet.models.build_model/build_backbone"
        ) from None


def _resolve_path(path) -> str:
    path = os.fspath(path)
    if os.path.isdir(path):  # a model artifact directory
        candidate = os.path.join(path, "model.weights.h5")
        if os.path.isfile(candidate):
            return candidate
        raise FileNotFoundError(f"{path}: directory has no model.weights.h5")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    return path


def _shapes(arrays) -> list[tuple]:
    return [tuple(np.shape(a)) for a in arrays]


def _legacy_source(f) -> list[tuple[str, list]]:
    """Weighted layers of a Keras 2 style `.h5` file, in the file's layer order."""
    group = f.get("model_weights", f)
    out = []
    for raw in group.attrs["layer_names"]:
        name = raw.decode() if isinstance(raw, bytes) else str(raw)
        g = group[name]
        weight_names = [w.decode() if isinstance(w, bytes) else str(w)
                        for w in g.attrs.get("weight_names", [])]
        if not weight_names:
            continue
        if any(w.split("/")[-1].startswith("count") for w in weight_names):
            continue  # keras.applications' Normalization layer (mean/variance/count)
        out.append((name, [np.asarray(g[w]) for w in weight_names], weight_names))
    return out


def _keras3_group(f):
    """The group holding the backbone's layers in a Keras 3 weights file: the nested
    'functional' model of our classifiers/detectors, else the top-level layers."""
    layers = f["layers"]
    nested = layers.get("functional")
    if nested is not None and "layers" in nested:
        return nested["layers"], "layers/functional/layers"
    return layers, "layers"


def _read_vars(group) -> list:
    if "vars" not in group:
        return []
    vars_group = group["vars"]
    return [np.asarray(vars_group[str(i)]) for i in range(len(vars_group))]


def _pairs(path: str, backbone: keras.Model):
    """([(target layer, source name, source arrays)], problem or None) for the weighted
    backbone layers, in order; `problem` describes a count mismatch found while pairing."""
    import h5py

    targets = [layer for layer in backbone.layers if layer.weights]
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise WeightsMismatchError(f"{path}: not an HDF5 weights file ({exc})") from None
    with f:
        if "layer_names" in f.attrs or "model_weights" in f:
            source = _legacy_source(f)
            pairs = [(t, name, arrays) for t, (name, arrays, _) in zip(targets, source)]
            problem = None
            if len(source) < len(targets):
                problem = (f"{path}: has {len(source)} layers with weights, the backbone needs "
                           f"{len(targets)} (a different EfficientNet variant?)")
            extra = source[len(targets):]
            deeper = any("depthwise" in w for _, _, names in extra for w in names)
            if deeper or len(extra) > sum(_TOP_ALLOWANCE.values()):
                problem = (f"{path}: has {len(source)} layers with weights, more than the "
                           f"backbone's {len(targets)} plus a classifier top (a deeper "
                           "EfficientNet variant?)")
            return pairs, problem
        if "layers" not in f:
            raise WeightsMismatchError(f"{path}: no Keras weights found (no 'layers' group)")
        group, prefix = _keras3_group(f)
        counters: dict[str, int] = {}
        out = []
        problem = None
        for target in targets:
            cls = _snake(type(target).__name__)
            k = counters.get(cls, 0)
            counters[cls] = k + 1
            key = cls if k == 0 else f"{cls}_{k}"
            if key not in group:
                problem = (f"{path}: backbone layer #{len(out)} '{target.name}' expects "
                           f"'{prefix}/{key}' in the file, which is missing (a different "
                           "EfficientNet variant, or not an EfficientNet weights file?)")
                break
            out.append((target, f"{prefix}/{key}", _read_vars(group[key])))
        for cls, used in counters.items():
            extra = used
            while (f"{cls}_{extra}" if extra else cls) in group:
                extra += 1
            if problem is None and extra - used > _TOP_ALLOWANCE.get(cls, 0):
                problem = (f"{path}: has {extra} '{cls}' layers, the backbone uses {used} "
                           "(a deeper EfficientNet variant?)")
        return out, problem


def load_backbone_weights(model: keras.Model, path) -> int:
    """Load backbone weights into `model` (a detector, classifier or backbone) from `path`:
    a keras.applications EfficientNet weights file (`.h5` or `.weights.h5`, with or without
    top), a weights file of a classifier/backbone built by this project, or a model artifact
    directory holding `model.weights.h5`. Returns the number of layers loaded.

    Nothing is assigned unless every layer fits; on a mismatch `WeightsMismatchError` names
    the file and the first mismatching layer with both shapes.
    """
    path = _resolve_path(path)
    backbone = find_backbone(model)
    pairs, problem = _pairs(path, backbone)
    for index, (target, source_name, arrays) in enumerate(pairs):  # first shape mismatch wins
        expected = _shapes(target.get_weights())
        got = _shapes(arrays)
        if expected != got:
            raise WeightsMismatchError(
                f"{path}: backbone layer #{index} '{target.name}' expects weight shapes "
                f"{expected}, the file's layer '{source_name}' has {got}"
            )
    if problem:
        raise WeightsMismatchError(problem)
    for target, _, arrays in pairs:
        target.set_weights(arrays)
    log.info("loaded %d backbone layers from %s", len(pairs), path)
    return len(pairs)


def load_keras_applications_weights(model: keras.Model, path) -> int:
    """Backbone weights from a keras.applications EfficientNet file a user downloaded
    (e.g. efficientnetb0_notop.h5); same mapping and checks as `load_backbone_weights`."""
    return load_backbone_weights(model, path)
