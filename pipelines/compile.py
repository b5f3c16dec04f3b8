"""Compile a pipeline to the IR YAML that the KFP UI and API take."""

from __future__ import annotations

from pathlib import Path

from kfp import compiler

from efficientdet.kfp_pipelines import ClusterOptions, build


def compile_pipeline(task: str, output: str | Path, options: ClusterOptions | None = None) -> Path:
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build(task, options), str(output))
    return output
