"""What a model is trained for. One list, read by the training config, the pipeline steps, the
pipeline definitions and the CLI."""

from __future__ import annotations

TASKS = ("detection", "classification")


def check_task(value: str, what: str = "task") -> str:
    """VALUE when it is one of TASKS; else a ValueError naming WHAT and the choices."""
    if value not in TASKS:
        raise ValueError(f"{what} {value!r}: use one of {', '.join(TASKS)}")
    return value
