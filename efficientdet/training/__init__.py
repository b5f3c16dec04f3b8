"""Training: the Trainer and its hooks, Horovod glue, schedules, EMA, checkpoints, logging.

``train(config) -> summary`` (`loop`: the `Trainer` with the standard hooks) is the API the CLI
and the pipeline call; ``load_config`` reads a recipe or a written config document (a file, a
bundled name or an s3:// URI) with ``key=value`` overrides into a validated `TrainConfig`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from efficientdet.training.config import TrainConfig


def train(config: TrainConfig) -> dict:
    from efficientdet.training.loop import train as _train

    return _train(config)


def load_config(source: str, sets: list[str] | None = None) -> TrainConfig:
    from efficientdet.training.config import load_config as _load

    return _load(source, sets)


__all__ = ["load_config", "train"]
