"""Conversion reports: every input image and annotation is counted exactly once.

`ConversionReport` collects outcomes while a converter runs and checks that the counts add up
(`input == written + skipped` for images, `input == written + dropped` for annotations) before
writing ``report.json``. Problems are listed with the input they concern, so nothing bad is
silently lost.
"""

from __future__ import annotations

from collections import Counter

MAX_LISTED_PROBLEMS = 10_000


class ConversionError(Exception):
    """Bad input that stops a conversion (malformed annotations, or any skip under --strict)."""


class ConversionReport:
    def __init__(self, task: str, *, inputs: dict, output: str):
        self.task = task
        self.inputs = dict(inputs)
        self.output = output
        self.images_input = 0
        self.images_written = 0
        self.negatives = 0
        self.skipped: Counter = Counter()
        self.converted: Counter = Counter()
        self.anns_input = 0
        self.anns_written = 0
        self.anns_clipped = 0
        self.anns_crowd = 0
        self.dropped: Counter = Counter()
        self.per_class: Counter = Counter()
        self.problems: list[dict] = []
        self.problems_not_listed = 0
        self.notes: list[str] = []

    def _problem(self, kind: str, action: str, name: str, reason: str, detail: str = "") -> None:
        if len(self.problems) < MAX_LISTED_PROBLEMS:
            entry = {"kind": kind, "input": name, "action": action, "reason": reason}
            if detail:
                entry["detail"] = detail
            self.problems.append(entry)
        else:
            self.problems_not_listed += 1

    def image_written(self, conversions=(), negative: bool = False) -> None:
        self.images_written += 1
        self.negatives += int(negative)
        self.converted.update(conversions)

    def image_skipped(self, name: str, reason: str, detail: str = "") -> None:
        self.skipped[reason] += 1
        self._problem("image", "skipped", name, reason, detail)

    def worker_skipped(self, name: str, result: dict, strict: bool = False) -> None:
        """A worker result ``{"status": "skipped", "reason", "detail"}`` for image ``name``: counted
        as skipped, or a `ConversionError` under ``strict`` (--strict)."""
        if strict:
            raise ConversionError(f"--strict: {name}: skipped "
                                  f"({result['reason']}: {result['detail']})")
        self.image_skipped(name, result["reason"], result["detail"])

    def annotation_written(self, class_key, clipped: bool = False, crowd: bool = False,
                           name: str = "") -> None:
        self.anns_written += 1
        self.per_class[str(class_key)] += 1
        self.anns_crowd += int(crowd)
        if clipped:
            self.anns_clipped += 1
            self._problem("annotation", "clipped", name, "outside_image_clipped")

    def annotation_dropped(self, name: str, reason: str, detail: str = "") -> None:
        self.dropped[reason] += 1
        self._problem("annotation", "dropped", name, reason, detail)

    @property
    def images_skipped(self) -> int:
        return sum(self.skipped.values())

    @property
    def anns_dropped(self) -> int:
        return sum(self.dropped.values())

    def check(self) -> None:
        """Raise if any input was lost or counted twice (a converter bug, never user error)."""
        if self.images_written + self.images_skipped != self.images_input:
            raise AssertionError(
                f"image counts do not add up: {self.images_written} written + "
                f"{self.images_skipped} skipped != {self.images_input} input")
        if self.anns_written + self.anns_dropped != self.anns_input:
            raise AssertionError(
                f"annotation counts do not add up: {self.anns_written} written + "
                f"{self.anns_dropped} dropped != {self.anns_input} input")

    def to_dict(self, **extra) -> dict:
        out = {
            "task": self.task,
            "inputs": self.inputs,
            "output": self.output,
            "images": {
                "input": self.images_input,
                "written": self.images_written,
                "skipped": self.images_skipped,
                "skipped_by_reason": dict(sorted(self.skipped.items())),
                "negatives": self.negatives,
                "converted": dict(sorted(self.converted.items())),
            },
        }
        if self.task == "detection":
            out["annotations"] = {
                "input": self.anns_input,
                "written": self.anns_written,
                "dropped": self.anns_dropped,
                "dropped_by_reason": dict(sorted(self.dropped.items())),
                "clipped": self.anns_clipped,
                "crowd": self.anns_crowd,
                "per_category": dict(sorted(self.per_class.items(), key=lambda kv: int(kv[0]))),
            }
        else:
            out["images"]["per_class"] = dict(sorted(self.per_class.items(),
                                                     key=lambda kv: int(kv[0])))
        out["problems"] = self.problems
        out["problems_not_listed"] = self.problems_not_listed
        out["notes"] = self.notes
        out.update(extra)
        return out

    def summary(self) -> str:
        """A few human lines for the console."""
        first = (f"images: {self.images_input} input, {self.images_written} written "
                 f"({self.negatives} without objects), {self.images_skipped} skipped")
        lines = [first]
        for reason, n in sorted(self.skipped.items()):
            lines.append(f"  skipped {reason}: {n}")
        if self.converted:
            lines.append("  converted: " + ", ".join(f"{k} {v}" for k, v in
                                                     sorted(self.converted.items())))
        if self.task == "detection":
            lines.append(f"annotations: {self.anns_input} input, {self.anns_written} written "
                         f"({self.anns_clipped} clipped), {self.anns_dropped} dropped")
            for reason, n in sorted(self.dropped.items()):
                lines.append(f"  dropped {reason}: {n}")
        return "\n".join(lines)
