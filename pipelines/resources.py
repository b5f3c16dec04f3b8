"""CPU and memory of every pipeline step, in one table fixed at compile time.

The train step is a controller (it writes the config, creates and follows the MPIJob), so it
asks for little; GPUs go to the MPIJob's workers (cluster settings) and to `export-tftrt`.
No CPU limits by default: a throttled step is slower, never safer; memory limits stop one step
from starving its node."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from typing import Optional

from efficientdet import validation as v


@dataclass(frozen=True)
class StepResources:
    cpu: str
    memory: str
    cpu_limit: Optional[str] = None
    memory_limit: Optional[str] = None

    def __post_init__(self):
        for item in fields(self):
            value = getattr(self, item.name)
            if value is not None:
                v.check(value, v.Quantity, f"step resources {item.name}")


# keyed by the pipeline's task names
DEFAULT_STEP_RESOURCES: dict[str, StepResources] = {
    "convert": StepResources("2", "4Gi", memory_limit="8Gi"),
    "train": StepResources("500m", "1Gi", memory_limit="4Gi"),
    "evaluate": StepResources("4", "8Gi", memory_limit="16Gi"),
    "export": StepResources("4", "8Gi", memory_limit="16Gi"),
    "export-tftrt": StepResources("4", "16Gi", memory_limit="32Gi"),
    "register": StepResources("1", "2Gi", memory_limit="4Gi"),
    "close-run": StepResources("100m", "512Mi", memory_limit="1Gi"),
}


def with_overrides(text: str, base: dict[str, StepResources] | None = None,
                   what: str = "--step-resources") -> dict[str, StepResources]:
    """BASE (default: the defaults) with a JSON object's entries merged in, e.g.
    '{"evaluate": {"cpu": "8", "memory": "32Gi"}}'; ValueError naming WHAT on bad input."""
    table = dict(DEFAULT_STEP_RESOURCES if base is None else base)
    if not text.strip():
        return table
    try:
        given = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what}: not JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(given, dict):  # bad user input, reported like the others: ValueError
        raise ValueError(  # noqa: TRY004
            f"{what}: expected a JSON object {{step: {{cpu, memory, ...}}}}")
    keys = {item.name for item in fields(StepResources)}
    for step, values in given.items():
        if step not in table:
            raise ValueError(f"{what}: unknown step {step!r} (steps: {', '.join(table)})")
        if not isinstance(values, dict) or not set(values) <= keys:
            raise ValueError(f"{what} {step}: expected an object with keys among "
                             f"{', '.join(sorted(keys))}, got {values!r}")
        try:
            table[step] = replace(table[step], **{k: None if val is None else str(val)
                                                  for k, val in values.items()})
        except ValueError as exc:
            raise ValueError(f"{what} {step}: {exc}") from None
    return table
