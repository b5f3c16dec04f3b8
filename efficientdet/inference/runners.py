"""One interface over every form a model takes: artifact, exported SavedModel (also TF-TRT) and
ONNX file. Evaluation, predict, the parity check and the benchmark all go through it.

A runner takes a list of uint8 RGB images [H, W, 3] (any sizes) and returns per-image results:
detection -> {"boxes" [D, 4] ymin/xmin/ymax/xmax in original pixels, "scores" [D],
"category_ids" [D]}; classification -> {"probabilities" [K], "top_classes", "top_scores"}.
`run_batch` takes one same-size uint8 batch [N, H, W, 3] and returns the raw outputs (what the
benchmark times).
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from efficientdet.models.model_meta import ModelMeta

SAVED_MODEL_FILE = "saved_model.pb"


def batched(items, size: int):
    """Lists of up to SIZE consecutive items (the last one may be shorter)."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _groups_of_equal_shape(images: list[np.ndarray], batch_size: int):
    """Consecutive runs of same-shape images, at most batch_size long: (start, arrays)."""
    start = 0
    while start < len(images):
        end = start + 1
        while (end < len(images) and end - start < batch_size
               and images[end].shape == images[start].shape):
            end += 1
        yield start, images[start:end]
        start = end


def _check_images(images) -> list[np.ndarray]:
    out = []
    for i, im in enumerate(images):
        im = np.asarray(im)
        if im.ndim != 3 or im.shape[-1] != 3 or im.dtype != np.uint8:
            raise ValueError(f"image {i}: expected uint8 [H, W, 3], got {im.dtype} {im.shape}")
        out.append(im)
    return out


def split_outputs(task: str, outputs: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Batched outputs -> one dict per image (detections cut at num_detections)."""
    if task == "detection":
        results = []
        for i, n in enumerate(np.asarray(outputs["num_detections"]).reshape(-1)):
            n = int(n)
            results.append({"boxes": np.asarray(outputs["boxes"][i][:n], np.float32),
                            "scores": np.asarray(outputs["scores"][i][:n], np.float32),
                            "category_ids": np.asarray(outputs["category_ids"][i][:n], np.int64)})
        return results
    return [{k: np.asarray(v[i]) for k, v in outputs.items()}
            for i in range(len(outputs["probabilities"]))]


class Runner:
    """Common behaviour; subclasses implement `run_batch`."""

    meta: ModelMeta
    image_size: tuple[int, int]

    @property
    def task(self) -> str:
        return self.meta.task

    @property
    def label_map(self) -> dict[int, str]:
        """Class name by id."""
        return self.meta.class_names

    def run_batch(self, images: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def predict(self, images, batch_size: int = 8) -> list[dict[str, np.ndarray]]:
        images = _check_images(images)
        results: list[dict[str, np.ndarray]] = []
        for _, group in _groups_of_equal_shape(images, batch_size):
            results.extend(split_outputs(self.task, self.run_batch(np.stack(group))))
        return results


class ModuleRunner(Runner):
    """An in-memory model wrapped in `Detector`/`Classifier` (the exact graph that is exported).

    Mixed sizes are resized and padded image by image and then run as one batch."""

    def __init__(self, module, meta: ModelMeta):
        import tensorflow as tf

        self.module = module
        self.meta = meta
        self.image_size = tuple(module.image_size)
        self._tf = tf

    def run_batch(self, images: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in self.module.serve_images(
            self._tf.constant(images, self._tf.uint8)).items()}

    def predict(self, images, batch_size: int = 8):
        from efficientdet.inference.detector import resize_and_pad

        tf = self._tf
        images = _check_images(images)
        results = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            padded, scales = zip(*(resize_and_pad(tf.constant(im[None]), self.image_size)
                                   for im in chunk))
            batch = tf.concat(padded, 0)
            if self.task == "detection":
                sizes = tf.constant([im.shape[:2] for im in chunk], tf.int32)
                out = self._detect(batch, tf.concat(scales, 0), sizes)
            else:
                out = self._classify(batch)
            results.extend(split_outputs(self.task, {k: v.numpy() for k, v in out.items()}))
        return results

    def _detect(self, batch, scales, sizes):
        if not hasattr(self, "_detect_fn"):
            self._detect_fn = self._tf.function(self.module.detect_padded)
        return self._detect_fn(batch, scales, sizes)

    def _classify(self, batch):
        if not hasattr(self, "_classify_fn"):
            self._classify_fn = self._tf.function(self.module.classify_padded)
        return self._classify_fn(batch)


class SavedModelRunner(Runner):
    """An exported SavedModel (plain or TF-TRT converted), called via `serving_default`."""

    def __init__(self, path: str | Path):
        import tensorflow as tf

        self.path = Path(path)
        self._loaded = tf.saved_model.load(str(self.path))
        self._fn = self._loaded.signatures["serving_default"]
        self.meta = _sidecar_meta(self.path)
        self.image_size = self.meta.input_hw
        self._tf = tf

    def run_batch(self, images: np.ndarray) -> dict[str, np.ndarray]:
        out = self._fn(images=self._tf.constant(images, self._tf.uint8))
        return {k: v.numpy() for k, v in out.items()}


class OnnxRunner(Runner):
    """An ONNX file from `effdet export --format onnx`, run with onnxruntime on CPU."""

    def __init__(self, path: str | Path):
        import onnxruntime as ort

        self.path = Path(path)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self._session = ort.InferenceSession(str(self.path), opts,
                                             providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._outputs = [o.name for o in self._session.get_outputs()]
        self.meta = _sidecar_meta(self.path.parent)
        self.image_size = self.meta.input_hw

    def run_batch(self, images: np.ndarray) -> dict[str, np.ndarray]:
        values = self._session.run(self._outputs, {self._input: images.astype(np.uint8)})
        return dict(zip(self._outputs, values))


def _sidecar_meta(directory: Path) -> ModelMeta:
    """The `ModelMeta` written beside an export (task, label map, input size)."""
    from efficientdet.models.artifact import read_meta

    return read_meta(str(directory))


# Post-processing when neither the caller nor the artifact's model.json "postprocess" says.
DEFAULT_POSTPROCESS = {"nms": "hard", "max_detections": 100, "score_threshold": 0.001,
                       "iou_threshold": 0.5, "pre_nms_topk": 5000, "soft_nms_sigma": 0.25}


def postprocess_settings(meta: ModelMeta, **options) -> dict:
    """Detector options: explicit ones (not None) over the artifact's ``postprocess`` (e.g.
    automl's, written by `effdet models import`) over `DEFAULT_POSTPROCESS`."""
    given = {k: v for k, v in options.items() if v is not None}
    return {**DEFAULT_POSTPROCESS, **(meta.postprocess or {}), **given}


def served_module(model, meta: ModelMeta, *, frozen: bool = False, **options):
    """Wrap a pure model from an artifact in `Detector` or `Classifier` per its task;
    OPTIONS are `Detector` post-processing options (see `postprocess_settings`). FROZEN bakes
    the weights in as constants (faster; for a model whose weights no longer change)."""
    from efficientdet.inference.detector import Classifier, Detector

    if not meta.is_detector:
        return Classifier(model, image_size=meta.image_size, frozen=frozen)
    from efficientdet.detection.anchors import Anchors

    anchors = Anchors.from_config(meta.model_config(), image_size=meta.image_size)
    return Detector(model, image_size=meta.image_size, num_classes=meta.num_classes,
                    anchors=anchors, frozen=frozen, **postprocess_settings(meta, **options))


def load_runner(uri: str, *, nms: str | None = None, **detector_options) -> Runner:
    """A runner for a model URI: an artifact dir (model.json + weights), an exported SavedModel
    dir, or an .onnx file (s3:// URIs are fetched to a local cache first). Artifacts use NMS
    (and DETECTOR_OPTIONS) as given, else their model.json's "postprocess", else hard NMS."""
    from efficientdet.models.artifact import META_FILE, WEIGHTS_FILE

    with _local_model(uri) as local:  # every runner holds its model in memory once built
        if local.is_file() and local.suffix == ".onnx":
            return OnnxRunner(local)
        if local.is_dir() and (local / SAVED_MODEL_FILE).is_file():
            return SavedModelRunner(local)
        if (local.is_dir() and (local / "model.onnx").is_file()
                and not (local / WEIGHTS_FILE).exists()):
            return OnnxRunner(local / "model.onnx")
        if local.is_dir() and (local / META_FILE).is_file():
            from efficientdet.models.artifact import load_artifact

            model, meta = load_artifact(str(local))
            return ModuleRunner(served_module(model, meta, frozen=True, nms=nms,
                                              **detector_options), meta)
    raise ValueError(f"--model {uri}: not a model artifact (model.json + model.weights.h5), an "
                     f"exported SavedModel ({SAVED_MODEL_FILE}) or an .onnx file")


@contextmanager
def _local_model(uri: str):
    """A local path for a model URI; an s3:// copy lives in a temp dir removed on exit."""
    from efficientdet import storage

    if not storage.is_remote(uri):
        yield storage.sync_to_local(uri)
        return
    tmp = tempfile.mkdtemp(prefix="effdet-model-")
    try:
        yield storage.sync_to_local(str(uri), tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
