"""Run a whole pipeline on this machine under kfp.local's SubprocessRunner.

The components run as subprocesses of this interpreter's environment (use_venv=False); the
training step takes the local backend (horovodrun --gloo). One MLflow parent run is made here,
so every step's run nests under it exactly as in a cluster; kfp.local (2.17) runs the
pipeline's exit handler too, so its `close-run` task ends that run as in a cluster. The KFP
executor's chatter is left out of the console unless `EFFDET_VERBOSE` (`effdet -v`) is set
(`local_output`)."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

from efficientdet import console
from efficientdet.kfp_pipelines import ClusterOptions, build
from efficientdet.kfp_pipelines.local_output import quiet_executor


def run_local(task: str, params: dict, *, pipeline_root: str | Path,
              run_id: str | None = None) -> dict:
    """Returns {'run_id', 'parent_run_id', 'state', 'outputs': {task: {name: value/path}}}."""
    from kfp import local

    from efficientdet.orchestration import runs

    run_id = run_id or f"local-{uuid.uuid4().hex[:10]}"
    pipeline = build(task, ClusterOptions.local())
    params = {"launcher": "local", **params}
    _drop_unset_optional_inputs(pipeline, params)
    env = {
        # the subprocesses must find this interpreter (python3 on PATH) and its horovodrun
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "KFP_PIPELINE_RUN_ID": run_id,
    }
    saved = {k: os.environ.get(k) for k in (*env, "EFFDET_MLFLOW_PARENT_RUN_ID")}
    os.environ.update(env)
    parent = runs.ensure_parent_run(run_id, pipeline=pipeline.name,
                                    experiment=params.get("mlflow_experiment"),
                                    tags={"effdet.runner": "kfp.local"})
    if parent:
        os.environ["EFFDET_MLFLOW_PARENT_RUN_ID"] = parent
        _log_params(parent, params)
    state, error = "FAILED", None
    try:
        local.init(runner=local.SubprocessRunner(use_venv=False),
                   pipeline_root=str(pipeline_root), raise_on_error=True)
        with quiet_executor(enabled=not console.is_verbose()):
            pipeline(**params)
        state = "SUCCEEDED"
    except RuntimeError as exc:  # kfp.local: a task failed (its log is above)
        error = str(exc)
    finally:
        # the pipeline's close-run exit task ended the parent run; this is the fall-back for
        # a run kfp.local stopped before it (a run the exit task ended stays as it left it)
        if parent:
            runs.close_parent_run(run_id, state, error=error or "",
                                  experiment=params.get("mlflow_experiment"), if_running=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return {"run_id": run_id, "parent_run_id": parent, "state": state,
            "pipeline_root": str(pipeline_root), "error": error, "steps": step_runs(parent)}


def _drop_unset_optional_inputs(pipeline, params: dict) -> None:
    """Leaves the optional parameters that PARAMS does not set out of PIPELINE's (in-memory)
    spec, so each step gets its component's default, None. A KFP cluster does that itself;
    kfp.local (2.17) instead fails on an optional input that has no default value."""
    spec = pipeline.pipeline_spec
    inputs = spec.root.input_definitions.parameters
    unset = {name for name, p in inputs.items()
             if p.is_optional and not p.HasField("default_value") and name not in params}
    for name in unset:
        del inputs[name]
    _drop_from_dag(spec, spec.root.dag, unset)


def _drop_from_dag(spec, dag, unset: set[str]) -> None:
    """Removes the arguments bound to the UNSET inputs of DAG's component from its tasks,
    and so on down the nested DAGs (the exit handler's, a condition's)."""
    for task in dag.tasks.values():
        component = spec.components[task.component_ref.name]
        component_inputs = component.input_definitions.parameters
        dropped = set()
        for name, argument in list(task.inputs.parameters.items()):
            if argument.component_input_parameter in unset:
                del task.inputs.parameters[name]
                dropped.add(name)
                if name in component_inputs:
                    del component_inputs[name]
        if dropped and component.HasField("dag"):
            _drop_from_dag(spec, component.dag, dropped)


def step_runs(parent: str | None) -> dict[str, dict]:
    """{step: {"run_id", "metrics", "tags"}} of the nested runs under PARENT (newest per step)."""
    if not parent:
        return {}
    from mlflow import MlflowClient

    client = MlflowClient()
    exp = client.get_run(parent).info.experiment_id
    found = client.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'",
                               order_by=["attributes.start_time ASC"])
    out: dict[str, dict] = {}
    for run in found:
        step = run.data.tags.get("kfp.task_name") or run.data.tags.get("effdet.step") or run.info.run_name
        out[step] = {"run_id": run.info.run_id, "status": run.info.status,
                     "metrics": dict(run.data.metrics),
                     "tags": {k: v for k, v in run.data.tags.items() if k.startswith("effdet.")}}
    return out


def _log_params(parent: str, params: dict) -> None:
    from mlflow import MlflowClient

    from efficientdet import tracking

    client = MlflowClient()
    for key, value in tracking.clean_params(params).items():
        client.log_param(parent, key, value)
