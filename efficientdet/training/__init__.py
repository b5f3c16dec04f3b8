"""Training: the loop (``loop.train``), Horovod glue, schedules, EMA, checkpoints, logging.

``train(config) -> summary`` is the API the CLI and the pipeline call; ``load_config`` reads a
recipe (a file or a bundled name) with ``key=value`` overrides.
"""

from __future__ import annotations


def train(config: dict) -> dict:
    from efficientdet.training.loop import train as _train

    return _train(config)


def load_config(name_or_path: str, overrides: list[str] | None = None) -> dict:
    from efficientdet.training.config import load_config as _load

    return _load(name_or_path, overrides)


__all__ = ["load_config", "train"]
