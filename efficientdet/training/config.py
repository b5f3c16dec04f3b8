"""Training configuration: a YAML recipe, dotted ``--set`` overrides, validated against one schema.

The schema below is both the list of keys a recipe may set and their defaults, so a typo in a
recipe or an override fails before anything is built, with the key named. Bundled recipes
(``efficientdet/configs/*.yaml``) are addressable by name.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from efficientdet import validation as v

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


class _Loader(yaml.SafeLoader):
    """YAML 1.1 safe loading that also reads exponent floats without a dot (4e-5) as numbers,
    as a person writing a learning rate or weight decay expects."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)

_ANY = object()  # a free-form mapping (model overrides): not validated key by key

# key -> (default, allowed types). Nested dicts are sections.
SCHEMA: dict[str, Any] = {
    "task": ("detection", (str,)),
    "model": ("efficientdet-d0", (str,)),
    "num_classes": (None, (int, type(None))),  # None: from the training data's label_map.json
    "image_size": (None, (int, type(None))),  # None: the variant's native input size
    "model_overrides": ({}, _ANY),  # passed to models.build_model (e.g. dropout_rate)
    "seed": (0, (int,)),
    "output": ("runs/train", (str,)),
    "data": {
        "train": (None, (str, type(None))),  # converted dataset dir (or shard glob), local or s3
        "val": (None, (str, type(None))),
        "num_examples": (None, (int, type(None))),  # None: count the training records
        "batch_size": (8, (int,)),  # per rank
        "cache_dir": (None, (str, type(None))),  # where s3 shards are copied
        # Same seed, same run: fixed input order and augmentation, deterministic kernels.
        "deterministic": (False, (bool,)),
        "randaugment": (None, (dict, list, type(None))),  # classification: {num_layers, magnitude}
    },
    "init": {  # pretrained weights (see training.initialization)
        "backbone": (None, (str, type(None))),  # keras.applications .h5, automl ckpt, artifact
        "model": (None, (str, type(None))),  # a whole model artifact (e.g. imported automl D0)
        "freeze": (None, (str, type(None))),  # regex over "layer/variable" names held fixed
        "freeze_steps": (None, (int, type(None))),  # None: the whole run
    },
    "train": {
        "steps": (None, (int, type(None))),  # total steps; None: epochs * steps_per_epoch
        "epochs": (1.0, (int, float)),
        "log_every": (10, (int,)),
        "throughput_warmup_steps": (2, (int,)),
    },
    "optimizer": {
        "lr": (0.08, (int, float)),  # per reference_batch images, scaled by the global batch
        "reference_batch": (64, (int,)),
        "momentum": (0.9, (int, float)),
        "nesterov": (False, (bool,)),
        "warmup_epochs": (1.0, (int, float)),
        "warmup_steps": (None, (int, type(None))),  # overrides warmup_epochs when set
        "warmup_start_factor": (0.1, (int, float)),  # lr at step 0 = factor * peak lr
        "weight_decay": (4e-5, (int, float)),  # L2: wd * sum(w^2) / 2 over kernels
        "clip_norm": (10.0, (int, float, type(None))),  # global norm; None or 0: off
        # Clip each gradient tensor to clip_norm before the global norm, as automl does.
        "clip_per_tensor": (True, (bool,)),
        "label_smoothing": (0.0, (int, float)),
        "ema_decay": (0.9998, (int, float)),  # 0: no EMA
    },
    "precision": {
        "amp": (False, (bool,)),  # mixed_float16 + loss scaling on GPU, mixed_bfloat16 on CPU
        "xla": (False, (bool,)),  # jit_compile the forward/backward step
    },
    "checkpoint": {
        "dir": (None, (str, type(None))),  # None: <output>/checkpoints
        "every_steps": (100, (int,)),
        "keep": (3, (int,)),
        "resume": (True, (bool,)),
    },
    "logging": {
        "dllogger_file": (None, (str, type(None))),  # None: <output>/dllogger.json (rank 0)
        "dllogger_stdout": (True, (bool,)),
        "mlflow": (True, (bool,)),
        "system_metrics": (True, (bool,)),
    },
}

TASKS = ("detection", "classification")

# Value rules per key, checked after the types of SCHEMA (a key without a rule takes any value
# of its type). Numbers are finite; a learning rate of -0.1 or 0 epochs is refused up front.
RULES: dict[str, Any] = {
    "num_classes": v.PositiveInt | None,
    "image_size": v.PositiveInt | None,
    "data.num_examples": v.PositiveInt | None,
    "data.batch_size": v.PositiveInt,
    "train.steps": v.PositiveInt | None,
    "train.epochs": v.PositiveNumber,
    "train.log_every": v.PositiveInt,
    "train.throughput_warmup_steps": v.NonNegativeInt,
    "optimizer.lr": v.PositiveNumber,
    "optimizer.reference_batch": v.PositiveInt,
    "optimizer.momentum": v.Fraction,
    "optimizer.warmup_epochs": v.NonNegativeNumber,
    "optimizer.warmup_steps": v.NonNegativeInt | None,
    "optimizer.warmup_start_factor": v.Probability,
    "optimizer.weight_decay": v.NonNegativeNumber,
    "optimizer.clip_norm": v.NonNegativeNumber | None,
    "optimizer.label_smoothing": v.Fraction,
    "optimizer.ema_decay": v.Fraction,
    "checkpoint.every_steps": v.PositiveInt,
    "checkpoint.keep": v.PositiveInt,
    "init.freeze_steps": v.NonNegativeInt | None,
}


class ConfigError(ValueError):
    """A recipe or an override is invalid; the message names the key."""


def defaults(schema: dict | None = None) -> dict:
    schema = SCHEMA if schema is None else schema
    out = {}
    for key, spec in schema.items():
        out[key] = defaults(spec) if isinstance(spec, dict) else copy.deepcopy(spec[0])
    return out


def bundled_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_config_path(name_or_path: str) -> Path:
    """A file path, or the name of a bundled recipe (with or without ``.yaml``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    bundled = CONFIG_DIR / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
    if path.parent == Path(".") and bundled.is_file():
        return bundled
    raise ConfigError(
        f"config {name_or_path!r}: no such file and no bundled config of that name "
        f"(bundled: {', '.join(bundled_configs())})")


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=value`` -> ("a.b", value parsed as YAML, so numbers, booleans and null work)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r}: expected key=value")
    try:
        value = yaml.load(raw, Loader=_Loader) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return key, value


def set_dotted(config: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = config
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {key!r}: {'.'.join(parts[:i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def _merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _validate(config: dict, schema: dict, prefix: str = "") -> None:
    for key, value in config.items():
        name = f"{prefix}{key}"
        if key not in schema:
            known = ", ".join(f"{prefix}{k}" for k in schema)
            raise ConfigError(f"unknown config key {name!r} (known here: {known})")
        spec = schema[key]
        if isinstance(spec, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {name!r} must be a section (a mapping)")
            _validate(value, spec, f"{name}.")
            continue
        _, types = spec
        if types is _ANY:
            if not isinstance(value, dict):
                raise ConfigError(f"config key {name!r} must be a mapping")
            continue
        # bool is an int in Python: do not let `true` pass for a number or a number for a bool
        if isinstance(value, bool) and bool not in types:
            raise ConfigError(f"config key {name!r} must be {_names(types)}, got {value!r}")
        if not isinstance(value, types):
            raise ConfigError(f"config key {name!r} must be {_names(types)}, got {value!r}")


def _names(types: tuple) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def _check_values(config: dict) -> None:
    if config["task"] not in TASKS:
        raise ConfigError(f"config key 'task' must be one of {TASKS}, got {config['task']!r}")
    flat = flatten(config)
    for name, rule in RULES.items():
        try:
            v.check(flat[name], rule, f"config key {name!r}")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if config["data"]["train"] is None:
        raise ConfigError("config key 'data.train' is required (a converted dataset directory)")


def build_config(user: dict | None = None, overrides: list[str] | None = None) -> dict:
    """Defaults <- user dict <- ``key=value`` overrides; validated. Returns a new dict."""
    user = user or {}
    if not isinstance(user, dict):
        raise ConfigError("a training config must be a mapping at the top level")
    _validate(user, SCHEMA)
    config = _merge(defaults(), user)
    for text in overrides or []:
        key, value = parse_override(text)
        probe: dict = {}
        set_dotted(probe, key, value)
        _validate(probe, SCHEMA)
        set_dotted(config, key, value)
    _check_values(config)
    return config


def load_config(name_or_path: str, overrides: list[str] | None = None) -> dict:
    """Read a recipe file (or bundled name), apply overrides, validate."""
    path = resolve_config_path(name_or_path)
    try:
        user = yaml.load(path.read_text(), Loader=_Loader) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path}: not valid YAML ({exc})") from exc
    try:
        return build_config(user, overrides)
    except ConfigError as exc:
        raise ConfigError(f"config {path}: {exc}") from exc


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (for MLflow params and dllogger metadata)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out
