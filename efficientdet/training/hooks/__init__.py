"""Trainer hooks: each side concern of a training run as one small class (see `base.Hook`)."""

from efficientdet.training.hooks.base import Hook

__all__ = ["Hook"]
