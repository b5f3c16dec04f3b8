"""Kubeflow pipeline definitions (detection, classification) and how to compile, submit and run
them locally. `build(task, options)` returns the pipeline function for one task."""

from __future__ import annotations

from efficientdet.kfp_pipelines.options import ClusterOptions
from efficientdet.model_tasks import TASKS


def build(task: str, options: ClusterOptions | None = None):
    options = options or ClusterOptions()
    if task == "detection":
        from efficientdet.kfp_pipelines.detection import build as _build
    elif task == "classification":
        from efficientdet.kfp_pipelines.classification import build as _build
    else:
        raise ValueError(f"pipeline {task!r}: use one of {', '.join(TASKS)}")
    return _build(options)


__all__ = ["TASKS", "ClusterOptions", "build"]
