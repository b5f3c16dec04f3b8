"""Class ids and names: the one reader of ``label_map.json`` and of the label map in ``model.json``.

Converters write ``{"task": ..., "classes": [{"id": 1, "name": "person"}, ...]}``; older model
artifacts and hand-written files also hold the bare class list or an ``{id: name}`` mapping, so
`LabelMap.from_json` accepts those three shapes and everything else sees one type.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from efficientdet.model_tasks import TASKS


class LabelMapError(ValueError):
    """A label map that cannot be understood; the message names where it came from."""


def _class_id(value, where: str) -> int:
    if isinstance(value, bool):
        raise LabelMapError(f"{where}: class id {value!r} is not an integer")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise LabelMapError(f"{where}: class id {value!r} is not an integer") from None


@dataclass(frozen=True)
class LabelMap:
    """Classes as ``(id, name)`` pairs in file order; ``task`` when the file says it."""

    classes: tuple[tuple[int, str], ...]
    task: str | None = None

    @classmethod
    def from_json(cls, value, *, task: str | None = None, where: str = "label map") -> LabelMap:
        """A label map from any of its JSON shapes: ``{"classes": [...], "task"?}``, the bare
        ``[{"id", "name"}, ...]`` list, or ``{"<id>": "<name>"}``. ``task`` fills in a missing
        task; ``where`` (a file or URI) goes into error messages."""
        if isinstance(value, Mapping) and "classes" in value:
            entries, task = value["classes"], value.get("task") or task
        elif isinstance(value, Mapping):  # {id: name}: JSON keys are strings, order by id
            entries = sorted(({"id": _class_id(k, where), "name": v} for k, v in value.items()),
                             key=lambda entry: entry["id"])
        elif isinstance(value, list):
            entries = value
        else:
            raise LabelMapError(f"{where}: not a label map (expected {{\"classes\": [...]}}, "
                                f"got {type(value).__name__})")
        if not isinstance(entries, list):
            raise LabelMapError(f"{where}: not a label map (\"classes\" must be a list)")
        if task is not None and task not in TASKS:
            raise LabelMapError(f"{where}: task must be one of {TASKS}, got {task!r}")
        classes = []
        for entry in entries:
            if not isinstance(entry, Mapping) or "id" not in entry:
                raise LabelMapError(f"{where}: class {entry!r} has no \"id\"")
            class_id = _class_id(entry["id"], where)
            classes.append((class_id, str(entry.get("name", class_id))))
        ids = [i for i, _ in classes]
        if len(set(ids)) != len(ids):
            raise LabelMapError(f"{where}: class ids repeat")
        return cls(tuple(classes), task)

    def to_dict(self) -> dict:
        """The ``label_map.json`` form (task first when known)."""
        out: dict = {"task": self.task} if self.task else {}
        out["classes"] = [{"id": i, "name": n} for i, n in self.classes]
        return out

    @property
    def names(self) -> dict[int, str]:
        """Class name by id."""
        return dict(self.classes)

    def num_classes(self, task: str, where: str = "label map") -> int:
        """Output width a model needs: detection predicts ``category_id - 1`` (so the largest
        id, ids >= 1), classification one logit per listed class."""
        if not self.classes:
            raise LabelMapError(f"{where}: the label map lists no classes")
        if task == "detection":
            if min(i for i, _ in self.classes) < 1:
                raise LabelMapError(f"{where}: detection class ids must be integers >= 1")
            return max(i for i, _ in self.classes)
        if task == "classification":
            return len(self.classes)
        raise LabelMapError(f"{where}: unknown task {task!r} (one of {TASKS})")
