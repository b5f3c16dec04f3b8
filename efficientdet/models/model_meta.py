"""What a trained model is, in one type: the ``model.json`` of artifacts and of exports.

Training, ``effdet models import``, export, evaluation and inference all read and write
`ModelMeta`, so a field has one name and one type everywhere. `ModelMeta.from_dict` still reads
the forms older files on disk hold: exports that carried ``input_size: [h, w]`` and label maps as
a bare class list or an ``{id: name}`` mapping.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from efficientdet.data.label_map import TASKS, LabelMap, LabelMapError

FORMAT_VERSION = 1
# keys that are fields; anything else in a model.json is kept in `extra`, untouched
_SECTIONS = ("overrides", "training", "postprocess", "source", "export")


class ModelMetaError(ValueError):
    """A ``model.json`` that does not describe a model; the message names where it came from."""


def _positive_int(meta: Mapping, key: str, where: str) -> int:
    value = meta[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelMetaError(f"{where}: model.json {key} must be a positive integer, "
                             f"got {value!r}")
    return value


def _image_size(meta: Mapping, where: str) -> int:
    """``image_size``, or the ``input_size: [h, w]`` older exports wrote instead."""
    if meta.get("image_size") is None and meta.get("input_size") is not None:
        size = meta["input_size"]
        if not (isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]):
            raise ModelMetaError(f"{where}: model.json input_size must be [n, n], got {size!r}")
        return _positive_int({"input_size": size[0]}, "input_size", where)
    return _positive_int(meta, "image_size", where)


@dataclass(frozen=True)
class ModelMeta:
    """How to rebuild and call a model: ``task`` and ``model`` variant, output ``num_classes``,
    square input ``image_size`` (uint8 RGB 0-255 in; the model normalises internally), the
    dataset's ``label_map``, ``build_model`` ``overrides``, a ``training`` summary, detector
    ``postprocess`` defaults, where imported weights came from (``source``), how an export is
    called (``export``) and unknown keys of newer writers (``extra``)."""

    task: str
    model: str
    num_classes: int
    image_size: int
    label_map: LabelMap | None = None
    overrides: Mapping = field(default_factory=dict)
    training: Mapping = field(default_factory=dict)
    postprocess: Mapping | None = None
    source: Mapping | None = None
    export: Mapping | None = None
    extra: Mapping = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        if self.task not in TASKS:
            raise ModelMetaError(f"model.json task must be detection or classification, "
                                 f"got {self.task!r}")

    @classmethod
    def from_dict(cls, meta, where: str = "model.json") -> ModelMeta:
        """Parse a ``model.json`` object (current or older form); ``where`` names its source."""
        if not isinstance(meta, Mapping):
            raise ModelMetaError(f"{where}: model.json must hold a JSON object")
        missing = [k for k in ("task", "model", "num_classes") if meta.get(k) is None]
        if meta.get("image_size") is None and meta.get("input_size") is None:
            missing.append("image_size")
        if missing:
            raise ModelMetaError(f"{where}: model.json lacks {', '.join(missing)}")
        if meta["task"] not in TASKS:
            raise ModelMetaError(f"{where}: model.json task must be detection or "
                                 f"classification, got {meta['task']!r}")
        label_map = None
        if meta.get("label_map") is not None:
            try:
                label_map = LabelMap.from_json(meta["label_map"], task=meta["task"],
                                               where=f"{where} label_map")
            except LabelMapError as exc:
                raise ModelMetaError(str(exc)) from None
        sections = {}
        for key in _SECTIONS:
            value = meta.get(key)
            if value is not None and not isinstance(value, Mapping):
                raise ModelMetaError(f"{where}: model.json {key} must be an object, "
                                     f"got {type(value).__name__}")
            if value is not None or key in ("overrides", "training"):
                sections[key] = dict(value or {})
        known = {f.name for f in dataclasses.fields(cls)} | {"input_size"}
        return cls(task=meta["task"], model=str(meta["model"]),
                   num_classes=_positive_int(meta, "num_classes", where),
                   image_size=_image_size(meta, where), label_map=label_map,
                   extra={k: v for k, v in meta.items() if k not in known},
                   format_version=int(meta.get("format_version") or FORMAT_VERSION), **sections)

    def to_dict(self) -> dict:
        """The ``model.json`` object (sections that are not set are left out)."""
        out = dict(self.extra)
        out.update(task=self.task, model=self.model, num_classes=self.num_classes,
                   image_size=self.image_size,
                   label_map=self.label_map.to_dict() if self.label_map else None,
                   overrides=dict(self.overrides), training=dict(self.training),
                   format_version=self.format_version)
        for key in ("postprocess", "source", "export"):
            if getattr(self, key) is not None:
                out[key] = dict(getattr(self, key))
        return out

    def replace(self, **changes) -> ModelMeta:
        return dataclasses.replace(self, **changes)

    @property
    def is_detector(self) -> bool:
        return self.task == "detection"

    @property
    def input_hw(self) -> tuple[int, int]:
        return (self.image_size, self.image_size)

    @property
    def class_names(self) -> dict[int, str]:
        """Class name by id (empty when the model has no label map)."""
        return self.label_map.names if self.label_map else {}

    @property
    def export_label_map(self) -> dict:
        """The ``label_map.json`` written beside an export (always with task and classes)."""
        classes = self.label_map.classes if self.label_map else ()
        return LabelMap(classes, self.task).to_dict()

    def model_config(self):
        """The model config the weights were built with (variant + overrides; ``sync_bn``
        changes training only, not the config)."""
        from efficientdet.models.configs import get_config

        return get_config(self.model, **{k: v for k, v in self.overrides.items()
                                         if k != "sync_bn"})
