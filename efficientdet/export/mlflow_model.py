"""The registered model as an MLflow model: pyfunc over the exported SavedModel.

`log_pyfunc_model` logs `mlflow_pyfunc.py` (models from code: it needs TensorFlow, not this
package) with two artifacts: the serving SavedModel it calls and the training artifact
(model.json + model.weights.h5), so `mlflow.pyfunc.load_model("models:/NAME/VERSION")` and
`mlflow models serve` answer with detections, while `init_from=models:/NAME@ALIAS` still finds
the weights to train from (`training_artifact_in`).
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from efficientdet.models.model_meta import ModelMeta

PYFUNC_CODE = Path(__file__).with_name("mlflow_pyfunc.py")
MODEL_NAME = "model"  # the logged model's name in its run
SAVED_MODEL_ARTIFACT = "saved_model"  # the key mlflow_pyfunc.py loads
TRAINING_ARTIFACT = "model"
EXAMPLE_IMAGE_SIZE = 32  # the input example: one small PNG (the model resizes any size)


def signature(task: str):
    """Input: a binary ``image`` column (encoded JPEG/PNG); output: one row per image."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Schema

    inputs = Schema([ColSpec(DataType.binary, "image")])
    if task == "detection":
        outputs = [ColSpec(Array(Array(DataType.double)), "boxes"),
                   ColSpec(Array(DataType.double), "scores"),
                   ColSpec(Array(DataType.long), "category_ids"),
                   ColSpec(Array(DataType.string), "labels"),
                   ColSpec(DataType.long, "num_detections")]
    else:
        outputs = [ColSpec(Array(DataType.double), "probabilities"),
                   ColSpec(Array(DataType.long), "top_classes"),
                   ColSpec(Array(DataType.double), "top_scores"),
                   ColSpec(Array(DataType.string), "top_labels")]
    return ModelSignature(inputs=inputs, outputs=Schema(outputs))


def input_example():
    """One encoded grey PNG in the ``image`` column."""
    import numpy as np
    import pandas as pd
    import tensorflow as tf

    image = np.full((EXAMPLE_IMAGE_SIZE, EXAMPLE_IMAGE_SIZE, 3), 128, np.uint8)
    return pd.DataFrame({"image": [tf.io.encode_png(image).numpy()]})


def _pinned(*distributions: str) -> str:
    """``name==version`` of the first installed distribution (local labels such as NGC's
    ``+nv`` dropped), else the bare name of the first."""
    from packaging.version import Version

    for name in distributions:
        try:
            return f"{name}=={Version(importlib.metadata.version(name)).base_version}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return distributions[0]


def pip_requirements() -> list[str]:
    """What loading the model needs outside this repository (not the efficientdet package)."""
    return [_pinned("mlflow", "mlflow-skinny"), _pinned("tensorflow", "tensorflow-cpu"),
            _pinned("numpy"), _pinned("pandas")]


def log_pyfunc_model(artifact_dir: str | Path, saved_model_dir: str | Path, meta: ModelMeta):
    """Logs the pyfunc model into the active run; returns mlflow's ModelInfo (its
    ``model_uri`` is what to register)."""
    import mlflow

    saved_model_dir = Path(saved_model_dir)
    if not (saved_model_dir / "saved_model.pb").is_file():
        raise ValueError(f"{saved_model_dir}: not an exported SavedModel (no saved_model.pb)")
    if not (saved_model_dir / "model.json").is_file():
        raise ValueError(f"{saved_model_dir}: the SavedModel has no model.json beside it "
                         "(export it with `effdet export`)")
    return mlflow.pyfunc.log_model(
        name=MODEL_NAME, python_model=str(PYFUNC_CODE),
        artifacts={SAVED_MODEL_ARTIFACT: str(saved_model_dir),
                   TRAINING_ARTIFACT: str(artifact_dir)},
        signature=signature(meta.task), input_example=input_example(),
        pip_requirements=pip_requirements(),
        metadata={"task": meta.task, "model": meta.model, "num_classes": meta.num_classes,
                  "image_size": meta.image_size})


def training_artifact_in(local: Path) -> Path:
    """The training artifact inside a downloaded MLflow model directory (per its MLmodel);
    LOCAL itself when it is not an MLflow model (an artifact registered as raw files)."""
    mlmodel = Path(local) / "MLmodel"
    if not mlmodel.is_file():
        return Path(local)
    import yaml

    flavor = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {}).get(
        "python_function", {})
    relative = (flavor.get("artifacts") or {}).get(TRAINING_ARTIFACT, {}).get("path")
    if not relative:
        raise ValueError(f"{local}: an MLflow model without a {TRAINING_ARTIFACT!r} artifact "
                         "(not registered by this project)")
    return Path(local) / relative
