"""The MLflow run layout of a pipeline run: one parent run per KFP run, one nested run per step.

Steps find (or make) the parent run by its `kfp.pipeline_run_id` tag, the same tag KFP's MLflow
plugin uses, and export `EFFDET_MLFLOW_PARENT_RUN_ID` so `efficientdet.tracking.step_run` nests
the step's run under it. When KFP's plugin injected `MLFLOW_RUN_ID`, the plugin owns the layout
and this module only sets the KFP identity env vars.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from efficientdet import tracking

ROLE_TAG = "effdet.role"


def kfp_env(run_id: str, task: str, *, run_url: str = "", pipeline_id: str = "",
            pipeline_version_id: str = "") -> dict[str, str]:
    """The env vars `tracking` reads to tag runs with the KFP plugin's keys."""
    env = {"KFP_PIPELINE_RUN_ID": run_id, "KFP_TASK_NAME": task, "KFP_PIPELINE_RUN_URL": run_url,
           "KFP_PIPELINE_ID": pipeline_id, "KFP_PIPELINE_VERSION_ID": pipeline_version_id}
    return {k: v for k, v in env.items() if v}


def _client():
    from mlflow import MlflowClient

    return MlflowClient()


def _experiment_id(client, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp else client.create_experiment(name)


def ensure_parent_run(run_id: str, *, pipeline: str = "efficientdet", experiment: str | None = None,
                      tags: dict[str, str] | None = None) -> str | None:
    """The id of the parent run for KFP run RUN_ID, created on first use; None if tracking is
    off or the server does not answer (the pipeline goes on untracked)."""
    if not tracking.enabled() or not run_id:
        return None
    if tracking._preflight(os.environ["MLFLOW_TRACKING_URI"]) is not None:
        return None
    client = _client()
    exp_id = _experiment_id(client, experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME")
                            or tracking.DEFAULT_EXPERIMENT)
    found = client.search_runs(
        [exp_id], filter_string=f"tags.`kfp.pipeline_run_id` = '{run_id}' "
                                f"and tags.`{ROLE_TAG}` = 'pipeline'", max_results=1)
    if found:
        return found[0].info.run_id
    all_tags = {"kfp.pipeline_run_id": run_id, ROLE_TAG: "pipeline", "effdet.pipeline": pipeline,
                **{k: v for k, v in tracking.kfp_tags().items() if k != "kfp.task_name"},
                **(tags or {})}
    run = client.create_run(exp_id, run_name=f"{pipeline} {run_id}", tags=all_tags)
    return run.info.run_id


def finish_parent_run(parent_id: str | None, status: str = "FINISHED") -> None:
    if parent_id:
        _client().set_terminated(parent_id, status=status)


@contextlib.contextmanager
def step_context(run_id: str, task: str, *, pipeline: str = "efficientdet",
                 experiment: str | None = None) -> Iterator[str | None]:
    """Sets the KFP identity and the parent run in os.environ for one step; yields the parent
    run id (None when KFP's plugin owns the run, or tracking is off). EXPERIMENT (the
    pipeline's mlflow_experiment) replaces MLFLOW_EXPERIMENT_NAME for the step and the ranks
    it starts; None keeps the environment's."""
    # run-local names the run itself (its parent run is made before kfp.local starts)
    run_id = os.environ.get("KFP_PIPELINE_RUN_ID") or run_id
    env = kfp_env(run_id, task)
    if experiment:
        env["MLFLOW_EXPERIMENT_NAME"] = experiment
    if not os.environ.get("MLFLOW_RUN_ID") and not os.environ.get("EFFDET_MLFLOW_PARENT_RUN_ID"):
        parent = ensure_parent_run(run_id, pipeline=pipeline, experiment=experiment)
        if parent:
            env["EFFDET_MLFLOW_PARENT_RUN_ID"] = parent
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield os.environ.get("EFFDET_MLFLOW_PARENT_RUN_ID")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def find_step_run(parent_id: str | None, task: str) -> str | None:
    """The newest nested run of TASK under PARENT_ID (MLFLOW_RUN_ID when KFP's plugin runs it)."""
    if os.environ.get("MLFLOW_RUN_ID"):
        return os.environ["MLFLOW_RUN_ID"]
    if not parent_id:
        return None
    client = _client()
    parent = client.get_run(parent_id)
    found = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}' and tags.`kfp.task_name` = '{task}'",
        order_by=["attributes.start_time DESC"], max_results=1)
    return found[0].info.run_id if found else None


def run_url(run_id: str | None) -> str | None:
    """A link to the run in the MLflow UI (for the step's Markdown output), when there is a UI."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not run_id or not uri.startswith(("http://", "https://")):
        return None
    exp_id = _client().get_run(run_id).info.experiment_id
    return f"{uri.rstrip('/')}/#/experiments/{exp_id}/runs/{run_id}"


def run_reference(run_id: str | None) -> str:
    """Markdown naming the MLflow run: a link when there is a UI, the id otherwise."""
    if not run_id:
        return "MLflow: not tracked"
    url = run_url(run_id)
    return f"MLflow run: [{run_id}]({url})" if url else f"MLflow run: `{run_id}`"
