"""Start training from pretrained weights: the config's ``init`` section.

``init.model``: a whole model artifact of the same task (e.g. automl's COCO D0 imported with
`effdet models import`): every variable is copied by layer and name; when the class count
differs, the class head's last layer keeps its fresh initialisation (focal-loss prior bias for
detectors) and everything else is loaded. ``init.backbone``: the EfficientNet backbone only,
from a keras.applications file, an automl EfficientNet/EfficientDet checkpoint (folder, prefix,
.tar.gz or .h5), or an artifact of this project. Both accept ``models:/NAME@ALIAS`` (MLflow).
``init.freeze`` (regex over "layer/variable" names) holds matching variables for ``init.freeze_steps``
steps (all steps when unset), as automl's ``var_freeze_expr``.
"""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path

from efficientdet import storage
from efficientdet.training.config import ConfigError, TrainConfig

log = logging.getLogger(__name__)

MLFLOW_SCHEME = "models:/"
# The last layer of each task's head: re-initialised when the class count changes.
CLASS_LAYERS = {"detection": "class_net_predict", "classification": "predictions"}


def is_registry_uri(uri: str) -> bool:
    return str(uri).startswith(MLFLOW_SCHEME)


def local_copy(uri: str, workdir: str | None = None) -> Path:
    """A local path for a file/folder URI, an s3:// object or prefix, or an MLflow registry
    URI ``models:/NAME@ALIAS`` / ``models:/NAME/VERSION`` (the training artifact inside the
    registered MLflow model)."""
    uri = str(uri)
    if is_registry_uri(uri):
        import mlflow

        from efficientdet.export.mlflow_model import training_artifact_in

        try:
            local = Path(mlflow.artifacts.download_artifacts(
                artifact_uri=uri, dst_path=workdir or tempfile.mkdtemp(prefix="effdet-init-")))
        except Exception as exc:  # noqa: BLE001 - MlflowException: unknown name/alias/server
            raise ConfigError(f"{uri}: cannot fetch from the MLflow registry "
                              f"({str(exc).splitlines()[0]})") from None
        try:
            return training_artifact_in(local)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if storage.is_remote(uri):
        return storage.sync_to_local(uri, workdir)
    return Path(uri)


def artifact_task(path: Path) -> str | None:
    """The task of the model artifact at a local path, or None when it is not one."""
    from efficientdet.models.artifact import META_FILE, read_meta

    if not (path.is_dir() and (path / META_FILE).is_file()):
        return None
    return read_meta(str(path)).task


def check_init(config: TrainConfig) -> None:
    """Fail before anything is built when an ``init`` path does not exist (a recipe that names
    pretrained weights never trains from scratch by surprise)."""
    init = config.init
    for key in ("model", "backbone"):
        uri = getattr(init, key)
        if not uri or is_registry_uri(uri) or storage.is_remote(uri):
            continue
        path = Path(uri)
        if not (path.exists() or Path(f"{path}.index").is_file()):
            hint = (" (an automl EfficientNet ImageNet checkpoint folder, a keras.applications "
                    "EfficientNet .h5, or a classifier artifact; pass it with --init-backbone "
                    "PATH, or --set init.backbone=null to train from scratch)"
                    if key == "backbone" else
                    " (a model artifact, e.g. from `effdet models import`; pass it with "
                    "--init-model PATH, or --set init.model=null)")
            raise ConfigError(f"config key 'init.{key}': {uri} does not exist{hint}")
    if init.freeze:
        try:
            re.compile(init.freeze)
        except re.error as exc:
            raise ConfigError(f"config key 'init.freeze': not a regex ({exc})") from None


def _named_variables(model) -> dict[str, object]:
    """{"layer/variable": variable} over the model and its nested backbone (unique names)."""
    import keras

    out = {}
    for layer in model.layers:
        inner = layer.layers if isinstance(layer, keras.Model) else [layer]
        for sub in inner:
            for v in sub.weights:
                out[f"{sub.name}/{v.path.rsplit('/', 1)[-1]}"] = v
    return out


def load_model_init(model, config: TrainConfig, uri: str) -> dict:
    """Copy an artifact's weights into `model`; returns {"loaded": n, "reinitialised": [...]}."""
    from efficientdet.models.artifact import load_artifact

    with tempfile.TemporaryDirectory(prefix="effdet-init-") as tmp:
        local = local_copy(uri, tmp)
        task = artifact_task(local)
        if task is None:
            raise ConfigError(f"config key 'init.model': {uri} is not a model artifact "
                              "(model.json + model.weights.h5)")
        if task != config.task:
            raise ConfigError(f"config key 'init.model': {uri} is a {task} model, this run "
                              f"trains {config.task} (use init.backbone for a backbone)")
        source, meta = load_artifact(str(local))
    if meta.model != config.model:
        raise ConfigError(f"config key 'init.model': {uri} is {meta.model}, this run "
                          f"trains {config.model}")
    head = CLASS_LAYERS[task]
    theirs = _named_variables(source)
    ours = _named_variables(model)
    missing = [k for k in ours if k not in theirs]
    if missing:
        raise ConfigError(f"config key 'init.model': {uri} has no variable {missing[0]}")
    head_keys = [k for k in ours if k.split("/")[0] == head]
    # a class head that changes width keeps its fresh initialisation, as a whole layer
    new_head = any(tuple(theirs[k].shape) != tuple(ours[k].shape) for k in head_keys)
    reinit = head_keys if new_head else []
    pairs = []
    for key, variable in ours.items():
        if key in reinit:
            continue
        value = theirs[key]
        if tuple(value.shape) != tuple(variable.shape):
            raise ConfigError(f"config key 'init.model': {uri} variable {key} has shape "
                              f"{tuple(value.shape)}, the model needs {tuple(variable.shape)}")
        pairs.append((variable, value))
    for variable, value in pairs:
        variable.assign(value)
    log.info("init.model %s: loaded %d variables; re-initialised %s (%d -> %d classes)",
             uri, len(pairs), ", ".join(reinit) or "nothing", meta.num_classes,
             int(config.num_classes))
    return {"source": str(uri), "loaded": len(pairs), "reinitialised": reinit,
            "source_classes": meta.num_classes}


def is_automl_h5(path: Path) -> bool:
    """automl's Keras .h5 scopes weight names by its model (``efficientnet-b0/...``);
    keras.applications and this project's files do not."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            group = f.get("model_weights", f)
            for raw in group.attrs.get("layer_names", []):
                name = raw.decode() if isinstance(raw, bytes) else str(raw)
                for w in group[name].attrs.get("weight_names", []):
                    w = w.decode() if isinstance(w, bytes) else str(w)
                    return w.startswith("efficientnet-")
    except OSError:
        return False
    return False


def load_backbone_init(model, config: TrainConfig, uri: str) -> dict:
    """Backbone weights from any supported source; returns {"loaded": n, "kind": ...}."""
    from efficientdet.models import backbone_config, get_config
    from efficientdet.models.automl_import import load_automl_weights
    from efficientdet.models.weights import find_backbone, load_backbone_weights

    backbone = find_backbone(model)
    bb_cfg = backbone_config(get_config(config.model))
    with tempfile.TemporaryDirectory(prefix="effdet-init-") as tmp:
        local = local_copy(uri, tmp)
        automl = (local.is_dir() and artifact_task(local) is None) or (
            not local.exists() and Path(f"{local}.index").is_file()) or (
            local.is_file() and (local.name.endswith((".tar.gz", ".tgz", ".tar"))
                                 or (local.suffix == ".h5" and is_automl_h5(local))))
        if automl:
            # everything outside the stem and blocks (a classifier's head, a detector's
            # BiFPN and heads) is expected to stay behind
            report = load_automl_weights(
                backbone, bb_cfg, str(local),
                allow_unused=rf"^(?!{re.escape(bb_cfg.name)}/(stem|blocks_\d+)/)")
            result = {"loaded": report.variables, "kind": "automl checkpoint"}
        else:
            layers = load_backbone_weights(model, local)
            result = {"loaded": len(backbone.weights), "layers": layers,
                      "kind": "artifact" if local.is_dir() else "weights file"}
    log.info("init.backbone %s: loaded %d backbone variables (%s)", uri, result["loaded"],
             result["kind"])
    return {"source": str(uri), **result}


def apply_init(model, config: TrainConfig) -> dict:
    """Load ``init.model`` or ``init.backbone`` (not both) into a freshly built model."""
    init = config.init
    if init.model and init.backbone:
        raise ConfigError("config keys 'init.model' and 'init.backbone' exclude each other "
                          "(a whole model already holds a backbone)")
    try:
        if init.model:
            return {"model": load_model_init(model, config, init.model)}
        if init.backbone:
            return {"backbone": load_backbone_init(model, config, init.backbone)}
    except ConfigError:
        raise
    except ValueError as exc:  # weights that do not fit: one line naming file and variable
        key = "init.model" if init.model else "init.backbone"
        raise ConfigError(f"config key '{key}': {str(exc).splitlines()[0]}") from exc
    return {}


def frozen_mask(model, variables, config: TrainConfig) -> list[bool]:
    """Which of `variables` ``init.freeze`` holds: the regex is searched in "layer/variable"
    names (``stem_conv/kernel``, ``block2a_dwconv/kernel``, ``class_net_predict/bias``)."""
    pattern = config.init.freeze
    if not pattern:
        return [False] * len(variables)
    rx = re.compile(pattern)
    names = {id(v): key for key, v in _named_variables(model).items()}
    return [bool(rx.search(names.get(id(v), v.path))) for v in variables]


def init_overrides(uri: str, task: str) -> dict[str, str]:
    """The `TrainOverrides` fields that start a `task` run from URI: a model artifact (or
    registered model) of the same task -> ``init_model``, anything else -> ``init_backbone``;
    no URI -> none (the recipe's ``init`` stays)."""
    if not uri:
        return {}
    with tempfile.TemporaryDirectory(prefix="effdet-init-") as tmp:
        try:
            local = local_copy(uri, tmp)
        except FileNotFoundError:
            local = Path(uri)  # a checkpoint prefix; check_init reports what is missing
        same_task = artifact_task(local) == task
    return {"init_model": uri} if same_task else {"init_backbone": uri}
