"""Training configuration: a recipe plus overrides, validated once into a typed `TrainConfig`.

The section dataclasses below are both the list of keys a recipe may set and their defaults, so
a typo in a recipe or an override fails before anything is built, with the key named. A config
is built in one place (`build_config`): defaults <- recipe <- ``--set a.b=value`` strings <-
`TrainOverrides` (typed, None = keep the recipe). The result is written as one YAML document
(`write_config`) that the trainer loads back unchanged (`load_config`), so a value set in the
pipeline UI arrives as that value and an unset one leaves the recipe alone. Bundled recipes
(``efficientdet/configs/*.yaml``) are addressable by name.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from efficientdet import key_value, storage
from efficientdet import validation as v
from efficientdet.model_tasks import TASKS

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


class ConfigError(ValueError):
    """A recipe or an override is invalid; the message names the key."""


class _Loader(yaml.SafeLoader):
    """YAML 1.1 safe loading that also reads exponent floats without a dot (4e-5) as numbers,
    as a person writing a learning rate or weight decay expects."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def _setting(default: Any, rule: Any):
    """A config key: its default and the value rule (`efficientdet.validation`) it must meet
    beyond its annotated type."""
    return field(default=default, metadata={"rule": rule})


# -- the schema: one dataclass per section -------------------------------------------------------
@dataclass(frozen=True)
class DataConfig:
    train: str | None = None  # converted dataset dir (or shard glob), local or s3
    val: str | None = None
    num_examples: int | None = _setting(None, v.PositiveInt | None)  # None: count the records
    batch_size: int = _setting(8, v.PositiveInt)  # per rank
    cache_dir: str | None = None  # where s3 shards are copied
    # Same seed, same run: fixed input order and augmentation, deterministic kernels.
    deterministic: bool = False
    randaugment: dict | list | None = None  # classification: {num_layers, magnitude}


@dataclass(frozen=True)
class InitConfig:
    """Pretrained weights (see `training.initialization`)."""

    backbone: str | None = None  # keras.applications .h5, automl checkpoint, artifact
    model: str | None = None  # a whole model artifact (e.g. imported automl D0)
    freeze: str | None = None  # regex over "layer/variable" names held fixed
    freeze_steps: int | None = _setting(None, v.NonNegativeInt | None)  # None: the whole run


@dataclass(frozen=True)
class TrainSchedule:
    steps: int | None = _setting(None, v.PositiveInt | None)  # None: epochs * steps_per_epoch
    epochs: float = _setting(1.0, v.PositiveNumber)
    log_every: int = _setting(10, v.PositiveInt)
    throughput_warmup_steps: int = _setting(2, v.NonNegativeInt)
    # The last fraction of the steps trains with BN on its moving statistics (frozen), so the
    # network settles on the normalisation it is evaluated with (small batches or feature
    # maps: docs/performance.md). 0: off.
    frozen_bn_fraction: float = _setting(0.0, v.Fraction)


@dataclass(frozen=True)
class OptimizerConfig:
    lr: float = _setting(0.08, v.PositiveNumber)  # per reference_batch images, scaled
    reference_batch: int = _setting(64, v.PositiveInt)
    momentum: float = _setting(0.9, v.Fraction)
    nesterov: bool = False
    warmup_epochs: float = _setting(1.0, v.NonNegativeNumber)
    warmup_steps: int | None = _setting(None, v.NonNegativeInt | None)  # over warmup_epochs
    warmup_start_factor: float = _setting(0.1, v.Probability)  # lr at step 0 = factor * peak
    lr_decay: str = _setting("cosine", Literal["cosine", "automl_cosine"])  # training.schedules
    weight_decay: float = _setting(4e-5, v.NonNegativeNumber)  # L2: wd * sum(w^2) / 2, kernels
    clip_norm: float | None = _setting(10.0, v.NonNegativeNumber | None)  # None or 0: off
    # Clip each gradient tensor to clip_norm before the global norm, as automl does.
    clip_per_tensor: bool = True
    label_smoothing: float = _setting(0.0, v.Fraction)
    ema_decay: float = _setting(0.9998, v.Fraction)  # 0: no EMA


@dataclass(frozen=True)
class PrecisionConfig:
    amp: bool = False  # mixed_float16 + loss scaling on GPU, mixed_bfloat16 on CPU
    xla: bool = False  # jit_compile the forward/backward step


@dataclass(frozen=True)
class CheckpointConfig:
    dir: str | None = None  # None: <output>/checkpoints
    every_steps: int = _setting(100, v.PositiveInt)
    keep: int = _setting(3, v.PositiveInt)
    resume: bool = True


@dataclass(frozen=True)
class EvaluationConfig:
    """Evaluation of the in-memory model on ``data.val`` during training (rank 0), so a run
    shows validation loss and AP (or top-1) over steps and keeps its best weights."""

    every_steps: int | None = _setting(None, v.NonNegativeInt | None)  # None or 0: off
    max_images: int | None = _setting(None, v.PositiveInt | None)  # None: the whole val set


@dataclass(frozen=True)
class LoggingConfig:
    dllogger_file: str | None = None  # None: <output>/dllogger.json (rank 0)
    dllogger_stdout: bool = False  # True: the DLLL lines also on stdout (`--dllogger-stdout`)
    mlflow: bool = True
    mlflow_checkpoints: bool = False  # upload the last checkpoint (optimizer state: large)
    system_metrics: bool = True


@dataclass(frozen=True)
class TrainConfig:
    """A validated training run. Build it with `build_config` / `load_config`, never by hand:
    those check every key, type and value rule."""

    task: str = "detection"
    model: str = "efficientdet-d0"
    num_classes: int | None = _setting(None, v.PositiveInt | None)  # None: from label_map.json
    image_size: int | None = _setting(None, v.PositiveInt | None)  # None: the variant's size
    model_overrides: dict[str, Any] = field(default_factory=dict)  # models.build_model keywords
    seed: int = 0
    output: str = "runs/train"
    data: DataConfig = field(default_factory=DataConfig)
    init: InitConfig = field(default_factory=InitConfig)
    train: TrainSchedule = field(default_factory=TrainSchedule)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def to_dict(self) -> dict:
        """Plain nested dicts and values (a deep copy): what a recipe file holds."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Defaults <- DATA (a whole or partial recipe), validated."""
        return build_config(data)

    def flatten(self) -> dict[str, Any]:
        """``{"optimizer.lr": 0.08, ...}`` (MLflow params, dllogger metadata)."""
        return flatten(self.to_dict())

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# -- typed overrides: what the pipeline UI and the CLI flags set ---------------------------------
def _key(dotted: str):
    return field(default=None, metadata={"key": dotted})


@dataclass(frozen=True)
class TrainOverrides:
    """Settings that replace the recipe's values; None keeps the recipe's value (so a recipe's
    ``xla: true`` survives a run that does not mention xla). Setting ``epochs`` without
    ``steps`` trains for epochs (drops the recipe's step count); setting ``init_model`` without
    ``init_backbone`` drops the recipe's backbone (a whole model already holds one)."""

    task: str | None = _key("task")
    model: str | None = _key("model")
    image_size: int | None = _key("image_size")
    steps: int | None = _key("train.steps")
    epochs: float | None = _key("train.epochs")
    batch_size: int | None = _key("data.batch_size")
    amp: bool | None = _key("precision.amp")
    xla: bool | None = _key("precision.xla")
    lr: float | None = _key("optimizer.lr")
    ema_decay: float | None = _key("optimizer.ema_decay")
    eval_every: int | None = _key("evaluation.every_steps")
    init_backbone: str | None = _key("init.backbone")
    init_model: str | None = _key("init.model")
    train_data: str | None = _key("data.train")
    val_data: str | None = _key("data.val")
    output: str | None = _key("output")

    def dotted(self) -> dict[str, Any]:
        """The config keys these overrides set, ``{"precision.xla": False, ...}``."""
        out = {f.metadata["key"]: getattr(self, f.name) for f in dataclasses.fields(self)
               if getattr(self, f.name) is not None}
        if self.epochs is not None and self.steps is None:
            out["train.steps"] = None
        if self.init_model is not None and self.init_backbone is None:
            out["init.backbone"] = None
        return out


# -- building ------------------------------------------------------------------------------------
def build_config(user: dict | None = None, sets: list[str] | None = None,
                 overrides: TrainOverrides | None = None) -> TrainConfig:
    """Defaults <- USER (a recipe mapping) <- SETS (``key=value`` strings, in order) <-
    OVERRIDES; validated. The one place a `TrainConfig` is made."""
    user = {} if user is None else user
    if not isinstance(user, dict):
        raise ConfigError("a training config must be a mapping at the top level")
    _check_types(user, TrainConfig)
    data = _merge(TrainConfig().to_dict(), user)
    for text in sets or []:
        set_dotted(data, *parse_override(text))
    for key, value in (overrides.dotted() if overrides else {}).items():
        set_dotted(data, key, value)
    _check_types(data, TrainConfig)
    config = _construct(TrainConfig, data)
    _check_values(config)
    return config


def apply_overrides(config: TrainConfig, overrides: TrainOverrides) -> TrainConfig:
    """CONFIG with OVERRIDES applied (None fields keep CONFIG's values), validated."""
    return build_config(config.to_dict(), overrides=overrides)


def load_config(source: str, sets: list[str] | None = None,
                overrides: TrainOverrides | None = None) -> TrainConfig:
    """A recipe or a written config document (bundled name, local file or s3:// URI), with
    SETS and OVERRIDES applied, validated."""
    text, where = _read_source(source)
    try:
        user = yaml.load(text, Loader=_Loader) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {where}: not valid YAML ({exc})") from exc
    try:
        return build_config(user, sets, overrides)
    except ConfigError as exc:
        raise ConfigError(f"config {where}: {exc}") from exc


def write_config(config: TrainConfig, uri: str) -> str:
    """Write CONFIG as a YAML document to URI (local path or s3://); returns URI."""
    storage.write_text(uri, "# effdet train config (resolved; load with --config)\n"
                       + config.to_yaml())
    return str(uri)


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


def _read_source(source: str) -> tuple[str, str]:
    if storage.is_remote(source):
        try:
            return storage.read_text(source), source
        except FileNotFoundError as exc:
            raise ConfigError(f"config {source!r}: no such object") from exc
    path = resolve_config_path(source)
    return path.read_text(), str(path)


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=value`` -> ("a.b", value parsed as YAML, so numbers, booleans and null work)."""
    try:
        key, raw = key_value.parse_pair(text, "override", "key=value")
    except key_value.KeyValueError as exc:
        raise ConfigError(str(exc)) from None
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
    node[parts[-1]] = copy.deepcopy(value)


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


# -- validation against the dataclasses ------------------------------------------------------------
def _merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _allowed(hint) -> tuple[type, ...]:
    """The runtime types a value of annotation HINT may have (an int is a float here)."""
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    out: list[type] = []
    for arg in args:
        base = typing.get_origin(arg) or arg
        out += [int, float] if base is float else [base]
    return tuple(out)


def _names(allowed: tuple) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in allowed)


def _check_types(data: dict, cls, prefix: str = "") -> None:
    hints = _hints(cls)
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key not in hints:
            known = ", ".join(f"{prefix}{k}" for k in hints)
            raise ConfigError(f"unknown config key {name!r} (known here: {known})")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {name!r} must be a section (a mapping)")
            _check_types(value, hint, f"{name}.")
            continue
        allowed = _allowed(hint)
        if allowed == (dict,):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {name!r} must be a mapping")
            continue
        # bool is an int in Python: do not let `true` pass for a number or a number for a bool
        if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
            raise ConfigError(f"config key {name!r} must be {_names(allowed)}, got {value!r}")


def _construct(cls, data: dict):
    hints = _hints(cls)
    return cls(**{k: _construct(hints[k], value) if dataclasses.is_dataclass(hints[k]) else value
                  for k, value in data.items()})


def _rules(obj, prefix: str = ""):
    """(dotted name, value, rule) of every key of OBJ that has a value rule."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _rules(value, f"{prefix}{f.name}.")
        elif f.metadata.get("rule") is not None:
            yield f"{prefix}{f.name}", value, f.metadata["rule"]


def _check_values(config: TrainConfig) -> None:
    if config.task not in TASKS:
        raise ConfigError(f"config key 'task' must be one of {TASKS}, got {config.task!r}")
    for name, value, rule in _rules(config):
        try:
            v.check(value, rule, f"config key {name!r}")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if config.data.train is None:
        raise ConfigError("config key 'data.train' is required (a converted dataset directory)")
    if config.evaluation.every_steps and config.data.val is None:
        raise ConfigError(
            f"config key 'evaluation.every_steps' is {config.evaluation.every_steps} but "
            "'data.val' is not set: evaluating during training needs a validation set "
            "(set data.val, or evaluation.every_steps=0 to turn evaluation off)")
