"""The model artifact: what ``--model URI`` points at, local or s3://.

A directory with ``model.json`` (a `ModelMeta`: how to rebuild the model, ``task``, ``model``,
``num_classes``, ``image_size``, ``label_map``, ``overrides``, ``training`` summary) and
``model.weights.h5``
(EMA weights when training kept an EMA). Loading rebuilds the architecture with
``models.build_model`` from ``model.json`` and loads the weights, so no Python objects are
pickled and the format survives Keras upgrades that keep variable structure.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path

from efficientdet import storage
from efficientdet.models.model_meta import ModelMeta, ModelMetaError

META_FILE = "model.json"
WEIGHTS_FILE = "model.weights.h5"


class ArtifactError(ValueError):
    """A model artifact is missing or malformed; the message names the URI."""


def save_artifact(model, meta: ModelMeta | Mapping, uri: str) -> str:
    """Write ``model.json`` + ``model.weights.h5`` to the directory ``uri``; returns ``uri``.

    ``meta`` is a `ModelMeta` or its dict form. Weights go first, the JSON last, so a reader
    that finds model.json finds complete weights.
    """
    uri = str(uri)
    meta = _as_meta(meta, uri)
    with tempfile.TemporaryDirectory(prefix="effdet-artifact-") as tmp:
        weights = Path(tmp) / WEIGHTS_FILE
        model.save_weights(str(weights))
        (Path(tmp) / META_FILE).write_text(json.dumps(meta.to_dict(), indent=2, sort_keys=True,
                                                      default=str))
        storage.upload_file(weights, storage.join(uri, WEIGHTS_FILE))
        storage.upload_file(Path(tmp) / META_FILE, storage.join(uri, META_FILE))
    return uri


def _as_meta(meta: ModelMeta | Mapping, where: str) -> ModelMeta:
    if isinstance(meta, ModelMeta):
        return meta
    try:
        return ModelMeta.from_dict(meta, where)
    except ModelMetaError as exc:
        raise ArtifactError(str(exc)) from None


def read_meta(uri: str) -> ModelMeta:
    """The `ModelMeta` of an artifact (or export) directory, from its ``model.json``."""
    meta_uri = storage.join(str(uri), META_FILE)
    try:
        text = storage.read_text(meta_uri)
    except (FileNotFoundError, storage.StorageError) as exc:
        raise ArtifactError(f"{uri}: not a model artifact (no readable {META_FILE}: {exc})") \
            from exc
    try:
        meta = json.loads(text)
    except ValueError as exc:
        raise ArtifactError(f"{meta_uri}: not valid JSON ({exc})") from exc
    return _as_meta(meta, str(uri))


def load_artifact(uri: str, cache_dir: str | None = None) -> tuple[object, ModelMeta]:
    """Rebuild the model described by ``model.json`` and load its weights -> (model, meta)."""
    from efficientdet.models import build_model

    uri = str(uri)
    meta = read_meta(uri)
    try:
        model = build_model(meta.model, meta.num_classes, meta.image_size, **meta.overrides)
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"{uri}: cannot rebuild {meta.model!r} from model.json ({exc})") \
            from exc
    weights_uri = storage.join(uri, WEIGHTS_FILE)
    with tempfile.TemporaryDirectory(prefix="effdet-artifact-", dir=cache_dir) as tmp:
        local = Path(tmp) / WEIGHTS_FILE
        try:
            storage.download_file(weights_uri, local)
        except (FileNotFoundError, storage.StorageError) as exc:
            raise ArtifactError(f"{uri}: no {WEIGHTS_FILE} ({exc})") from exc
        try:
            model.load_weights(str(local))
        except (ValueError, KeyError, OSError) as exc:
            raise ArtifactError(f"{weights_uri}: weights do not fit {meta.model} "
                                f"({exc})") from exc
    return model, meta
