"""The registered model's inference code, logged with it as MLflow "models from code".

This file is copied into the MLflow model and runs wherever the model is loaded
(`mlflow.pyfunc.load_model`, `mlflow models serve`/`predict`), so it imports only TensorFlow,
NumPy, pandas and MLflow, never this package. It calls the exported SavedModel's
``serving_bytes`` signature (decode, resize + pad, model, NMS, boxes back to original pixels).

Input: a DataFrame with one binary column ``image`` holding encoded JPEG/PNG images of any
sizes. Over REST (``mlflow models serve``) binary cells are base64:
``{"dataframe_split": {"columns": ["image"], "data": [["<base64 JPEG>"], ...]}}``.
Output, one row per image:
- detection: ``boxes`` ([ymin, xmin, ymax, xmax] in original-image pixels), ``scores``,
  ``category_ids`` (the dataset's ids), ``labels`` (their names), ``num_detections``; the
  lists hold only the valid detections (the SavedModel's padding is cut off);
- classification: ``probabilities`` (one per class), ``top_classes`` (class indices),
  ``top_scores``, ``top_labels`` (their names).
"""

import json
import os

import mlflow
import numpy as np
import pandas as pd

IMAGE_COLUMN = "image"
SAVED_MODEL_ARTIFACT = "saved_model"
SIGNATURE = "serving_bytes"
BATCH_SIZE = 16  # images per SavedModel call: bounds memory for large requests


class SavedModelPyfunc(mlflow.pyfunc.PythonModel):
    """Encoded images in, detections (or class probabilities) out, through the SavedModel."""

    def load_context(self, context):
        import tensorflow as tf

        path = context.artifacts[SAVED_MODEL_ARTIFACT]
        self._saved_model = tf.saved_model.load(path)  # keeps the signature's variables alive
        self._serve = self._saved_model.signatures[SIGNATURE]
        with open(os.path.join(path, "model.json")) as f:
            meta = json.load(f)
        self._task = meta["task"]
        classes = (meta.get("label_map") or {}).get("classes") or []
        self._names = {int(c["id"]): str(c["name"]) for c in classes}

    def predict(self, context, model_input, params=None):
        images = _encoded_images(model_input)
        rows = []
        for start in range(0, len(images), BATCH_SIZE):
            rows.extend(self._predict_batch(images[start:start + BATCH_SIZE]))
        return pd.DataFrame(rows, columns=self._columns())

    def _columns(self):
        if self._task == "detection":
            return ["boxes", "scores", "category_ids", "labels", "num_detections"]
        return ["probabilities", "top_classes", "top_scores", "top_labels"]

    def _predict_batch(self, images):
        import tensorflow as tf

        out = {k: v.numpy() for k, v in self._serve(image_bytes=tf.constant(images)).items()}
        if self._task == "detection":
            rows = []
            for i, n in enumerate(out["num_detections"].astype(int)):
                ids = out["category_ids"][i, :n].astype(int).tolist()
                rows.append({"boxes": out["boxes"][i, :n].astype(float).tolist(),
                             "scores": out["scores"][i, :n].astype(float).tolist(),
                             "category_ids": ids,
                             "labels": [self._names.get(c, str(c)) for c in ids],
                             "num_detections": int(n)})
            return rows
        return [{"probabilities": out["probabilities"][i].astype(float).tolist(),
                 "top_classes": out["top_classes"][i].astype(int).tolist(),
                 "top_scores": out["top_scores"][i].astype(float).tolist(),
                 "top_labels": [self._names.get(int(c), str(int(c)))
                                for c in out["top_classes"][i]]}
                for i in range(len(out["probabilities"]))]


def _encoded_images(model_input) -> list:
    """The encoded images of MODEL_INPUT (a DataFrame with an ``image`` column, or a list of
    bytes); a clear error names the input otherwise."""
    if isinstance(model_input, pd.DataFrame):
        if IMAGE_COLUMN not in model_input.columns:
            raise ValueError(f"model input: expected a column {IMAGE_COLUMN!r} of encoded "
                             f"JPEG/PNG bytes, got columns {list(model_input.columns)}")
        values = list(model_input[IMAGE_COLUMN])
    elif isinstance(model_input, (list, tuple, np.ndarray)):
        values = list(model_input)
    else:
        raise TypeError(f"model input: expected a DataFrame with a column {IMAGE_COLUMN!r}, "
                        f"got {type(model_input).__name__}")
    for i, value in enumerate(values):
        if not isinstance(value, (bytes, bytearray)):
            raise TypeError(f"model input row {i}: {IMAGE_COLUMN!r} must be encoded JPEG/PNG "
                            f"bytes (base64 over REST), got {type(value).__name__}")
    return [bytes(v) for v in values]


mlflow.models.set_model(SavedModelPyfunc())
