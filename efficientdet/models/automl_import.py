"""Import google/automl's pretrained weights: TF1 checkpoints, their .tar.gz archives, Keras .h5.

Every variable of our model gets its automl name by rule (`automl_names`), is read from the
source (the EMA shadow ``<name>/ExponentialMovingAverage`` when present, unless ``use_ema`` is
off), shape-checked, and only then assigned. A model variable the source lacks, a source
variable nothing uses, or a shape that differs is an error naming the variable; a regex
``allow_missing`` makes a partial import deliberate. Nothing is assigned unless all checks pass.
"""

from __future__ import annotations

import logging
import re
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from efficientdet import storage
from efficientdet.models.automl_names import automl_variable_map

log = logging.getLogger(__name__)

EMA_SUFFIX = "/ExponentialMovingAverage"
# Training state saved beside the weights: never model variables, never an import problem.
_BOOKKEEPING = re.compile(r"(^|/)global_step$|/(Momentum|RMSProp|RMSProp_1|Adam|Adam_1)$")
_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")
# automl's default inference post-processing ('global', nms_configs method gaussian): each
# anchor's best class over all anchors, class-agnostic soft-NMS with TF soft_nms_sigma = automl
# sigma 0.5 / 2 (its iou_thresh 0.5 is ignored by TF once sigma > 0), score_thresh 0 -> its
# 0.001 fallback, boxes clipped after NMS, 100 detections.
AUTOML_POSTPROCESS = {"nms": "soft", "candidates": "anchor_max", "pre_nms_topk": 0,
                      "soft_nms_sigma": 0.25, "score_threshold": 0.001,
                      "clip_before_nms": False, "max_detections": 100}


class AutomlImportError(ValueError):
    """The source does not fit the model; the message names the source and the variable."""


class _Source:
    """Named arrays of a checkpoint or .h5: `shapes` {name: shape} and `read(name)`."""

    where: str
    shapes: dict[str, tuple]

    def read(self, name: str) -> np.ndarray:
        raise NotImplementedError


class _CheckpointSource(_Source):
    def __init__(self, prefix: str, where: str):
        import tensorflow as tf

        self.where = where
        try:
            self._reader = tf.train.load_checkpoint(prefix)
        except (ValueError, tf.errors.OpError) as exc:
            raise AutomlImportError(f"{where}: not a readable TF checkpoint "
                                    f"({str(exc).splitlines()[0]})") from None
        self.shapes = {k: tuple(v) for k, v in self._reader.get_variable_to_shape_map().items()}

    def read(self, name):
        return np.asarray(self._reader.get_tensor(name))


class _H5Source(_Source):
    """automl's tf.keras `save_weights(.h5)`: layer groups whose `weight_names` are the
    variables' scoped names (``efficientnet-b0/stem/conv2d/kernel:0``)."""

    def __init__(self, path: Path, where: str):
        import h5py

        self.where = where
        self._arrays: dict[str, np.ndarray] = {}
        try:
            f = h5py.File(path, "r")
        except OSError as exc:
            raise AutomlImportError(f"{where}: not an HDF5 file ({exc})") from None
        with f:
            group = f.get("model_weights", f)
            if "layer_names" not in group.attrs:
                raise AutomlImportError(f"{where}: no Keras layer_names attribute (not a "
                                        "tf.keras save_weights .h5)")
            for raw in group.attrs["layer_names"]:
                layer = group[_text(raw)]
                for weight in layer.attrs.get("weight_names", []):
                    weight = _text(weight)
                    self._arrays[weight.split(":")[0]] = np.asarray(layer[weight])
        self.shapes = {k: v.shape for k, v in self._arrays.items()}

    def read(self, name):
        return self._arrays[name]


def _text(raw) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _checkpoint_prefix(directory: Path, where: str) -> str:
    """The prefix of the checkpoint in a directory (or any folder below it, as in automl's
    archives): from its `checkpoint` file, else its single ``*.index``."""
    candidates = [directory] + sorted(p for p in directory.rglob("*") if p.is_dir())
    for folder in candidates:
        state = folder / "checkpoint"
        if state.is_file():
            m = re.search(r'^model_checkpoint_path:\s*"(.+)"', state.read_text(), re.MULTILINE)
            if m:
                prefix = Path(m.group(1))
                prefix = prefix if prefix.is_absolute() else folder / prefix
                if Path(f"{prefix}.index").is_file():
                    return str(prefix)
                # an archive made elsewhere may carry an absolute path: trust the file name
                local = folder / prefix.name
                if Path(f"{local}.index").is_file():
                    return str(local)
        indexes = sorted(folder.glob("*.index"))
        if len(indexes) == 1:
            return str(indexes[0].with_suffix(""))
        if len(indexes) > 1:
            raise AutomlImportError(f"{where}: {len(indexes)} checkpoints in {folder} and no "
                                    "`checkpoint` file saying which; pass the prefix")
    raise AutomlImportError(f"{where}: no TF checkpoint (`checkpoint` file or *.index) found")


def _local(uri: str, workdir: Path) -> Path:
    """A local path for a file, directory or checkpoint prefix, local or s3://."""
    if not storage.is_remote(uri):
        return Path(uri)
    try:
        return storage.sync_to_local(uri, workdir)
    except FileNotFoundError:  # a checkpoint prefix: fetch its folder, keep the prefix name
        parent = uri.rstrip("/").rsplit("/", 1)[0]
        return storage.sync_to_local(parent, workdir) / storage.basename(uri)


def open_source(uri: str, workdir: Path) -> _Source:
    """The weights at URI: a checkpoint folder or prefix, a .tar.gz holding one, or an .h5."""
    uri = str(uri)
    path = _local(uri, workdir)
    name = path.name.lower()
    if path.is_file() and name.endswith(".h5"):
        return _H5Source(path, uri)
    if path.is_file() and name.endswith(_TAR_SUFFIXES):
        target = workdir / "archive"
        try:
            with tarfile.open(path) as tar:
                tar.extractall(target, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise AutomlImportError(f"{uri}: not a readable tar archive ({exc})") from None
        return _CheckpointSource(_checkpoint_prefix(target, uri), uri)
    if path.is_dir():
        return _CheckpointSource(_checkpoint_prefix(path, uri), uri)
    if Path(f"{path}.index").is_file():
        return _CheckpointSource(str(path), uri)
    raise AutomlImportError(f"{uri}: no such checkpoint folder, prefix, .tar.gz or .h5")


@dataclass
class ImportReport:
    """What an import did: counts and the names it left alone."""

    source: str
    variables: int = 0
    ema_used: int = 0
    missing_allowed: list[str] = field(default_factory=list)
    unused_allowed: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = (f"{self.variables} variables from {self.source} "
                f"({self.ema_used} EMA shadows)")
        if self.missing_allowed:
            text += f"; kept initial values of {len(self.missing_allowed)} (--allow-missing)"
        if self.unused_allowed:
            text += f"; left {len(self.unused_allowed)} source variables unused"
        return text


def _first(names: list[str], what: str) -> str:
    more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
    return f"{what} {names[0]}{more}"


def import_weights(model, cfg, source: _Source, *, use_ema: bool = True,
                   allow_missing: str | None = None,
                   allow_unused: str | None = None) -> ImportReport:
    """Assign `source`'s weights to every variable of `model` (built for `cfg`).

    `allow_missing` (regex, searched in automl names) lets those model variables keep their
    initial values and those source variables go unused; `allow_unused` only the latter (a
    backbone import leaves a classifier's head behind)."""
    allowed = re.compile(allow_missing) if allow_missing else None
    unused_ok = re.compile(allow_unused) if allow_unused else None
    report = ImportReport(source.where)
    shapes = source.shapes
    assignments, missing, used, mismatched = [], [], set(), None
    for variable, names in automl_variable_map(model, cfg):
        arrays = []
        for name in names:
            key = name + EMA_SUFFIX if use_ema and name + EMA_SUFFIX in shapes else name
            if name not in shapes and key not in shapes:
                if allowed and allowed.search(name):
                    report.missing_allowed.append(name)
                else:
                    missing.append(name)
                continue
            used.update((name, name + EMA_SUFFIX))
            report.ema_used += key != name
            arrays.append((key, source.read(key)))
        if len(arrays) != len(names):
            continue
        value = arrays[0][1] if len(arrays) == 1 else np.stack([a for _, a in arrays])
        if tuple(value.shape) != tuple(variable.shape) and not mismatched:
            mismatched = (f"{source.where}: {arrays[0][0]} has shape {tuple(value.shape)}, the "
                          f"model's {variable.path} needs {tuple(variable.shape)} (another "
                          "variant or class count?)")
        assignments.append((variable, value))
    if missing:  # the most telling problem first: a whole other variant lacks names
        raise AutomlImportError(f"{source.where}: " + _first(
            missing, "lacks model variable") + " (another variant? --allow-missing REGEX for a "
            "deliberate partial import)")
    if mismatched:
        raise AutomlImportError(mismatched)
    unused = []
    for name in sorted(shapes):
        if name in used or _BOOKKEEPING.search(name):
            continue
        base = name.removesuffix(EMA_SUFFIX)
        if (allowed and allowed.search(base)) or (unused_ok and unused_ok.search(base)):
            report.unused_allowed.append(name)
        else:
            unused.append(name)
    if unused:
        raise AutomlImportError(f"{source.where}: " + _first(
            unused, "has variable") + " that no model variable takes (another variant?)")
    for variable, value in assignments:
        variable.assign(value.astype(variable.dtype))
    report.variables = len(assignments)
    log.info("imported %s", report.summary())
    return report


def load_automl_weights(model, cfg, uri: str, **options) -> ImportReport:
    """`import_weights` from a URI (see `open_source`), with a scratch folder for downloads."""
    with tempfile.TemporaryDirectory(prefix="effdet-automl-") as tmp:
        return import_weights(model, cfg, open_source(uri, Path(tmp)), **options)


def import_automl(name: str, weights: str, output: str, *, use_ema: bool = True,
                  allow_missing: str | None = None, image_size: int | None = None) -> dict:
    """Build `name`, import automl's `weights` into it and write a model artifact to `output`
    (detectors: automl's 90 COCO classes with its label map and post-processing settings;
    EfficientNets: the 1000-class ImageNet classifier). Returns a summary dict."""
    from efficientdet.data.coco_labels import NUM_CLASSES, coco_label_map
    from efficientdet.models import EfficientDetConfig, build_model, get_config
    from efficientdet.models.artifact import save_artifact

    cfg = get_config(name)
    detector = isinstance(cfg, EfficientDetConfig)
    classes = NUM_CLASSES if detector else cfg.num_classes
    size = int(image_size or cfg.image_size)
    model = build_model(cfg.name, classes, size)
    report = load_automl_weights(model, cfg, weights, use_ema=use_ema,
                                 allow_missing=allow_missing)
    meta = {
        "task": cfg.task, "model": cfg.name, "num_classes": classes, "image_size": size,
        "label_map": coco_label_map() if detector else None,
        "source": {"format": "automl", "weights": str(weights), "ema": report.ema_used > 0,
                   "variables": report.variables,
                   "missing_allowed": report.missing_allowed},
    }
    if detector:
        meta["postprocess"] = dict(AUTOML_POSTPROCESS)
    save_artifact(model, meta, output)
    return {"model": cfg.name, "num_classes": classes, "image_size": size,
            "summary": report.summary(), "output": str(output)}
