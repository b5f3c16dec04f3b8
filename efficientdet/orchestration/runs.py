"""The MLflow run layout of a pipeline run: one parent run per KFP run, one nested run per step.

Steps find (or make) the parent run by its `kfp.pipeline_run_id` tag, the same tag KFP's MLflow
plugin uses, and export `EFFDET_MLFLOW_PARENT_RUN_ID` so `efficientdet.tracking.step_run` nests
the step's run under it. When KFP's plugin injected `MLFLOW_RUN_ID`, the plugin owns the layout
and this module only sets the KFP identity env vars.

The parent is what the experiment table compares: steps roll their headline metrics up to it
(`roll_up`), it links the KFP run (``kfp.pipeline_run_url``, from the ConfigMap's
``EFFDET_KFP_UI_URL``), a failing step names itself on it (``effdet.failed_step``) and the
pipeline's exit handler closes it (`close_parent_run`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from efficientdet import tracking
from efficientdet.credentials import carries_credentials
from efficientdet.run_identity import run_name, run_tags

log = logging.getLogger(__name__)

ROLE_TAG = "effdet.role"
FAILED_STEP_TAG = "effdet.failed_step"
ERROR_TAG = "effdet.error"
NOTE_TAG = "mlflow.note.content"  # the run's description in the MLflow UI
KFP_UI_ENV = "EFFDET_KFP_UI_URL"  # the KFP UI, e.g. https://kubeflow.example.com/pipeline
# what the parent run carries so pipeline runs compare from the experiment table
HEADLINE_METRICS = ("AP", "AP50", "top1", "top5", "images_per_second", "train_time_s",
                    "params", "gmacs")
MAX_ERROR_CHARS = 500
# PipelineTaskFinalStatus.state -> the parent run's MLflow status
_FINAL_STATUS = {"SUCCEEDED": "FINISHED", "CANCELLED": "KILLED", "CANCELED": "KILLED"}


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


def _tracked() -> bool:
    """Tracking is on and the server answers."""
    return tracking.enabled() and tracking._preflight(os.environ["MLFLOW_TRACKING_URI"]) is None


def _experiment_of(experiment: str | None) -> str:
    return (experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME")
            or tracking.DEFAULT_EXPERIMENT)


def _find_parent(client, exp_id: str, run_id: str):
    found = client.search_runs(
        [exp_id], filter_string=f"tags.`kfp.pipeline_run_id` = '{run_id}' "
                                f"and tags.`{ROLE_TAG}` = 'pipeline'", max_results=1)
    return found[0] if found else None


def kfp_run_url(run_id: str, environ=None) -> str | None:
    """The KFP UI's page of RUN_ID, when the cluster names its UI (``EFFDET_KFP_UI_URL``)."""
    environ = os.environ if environ is None else environ
    ui = (environ.get(KFP_UI_ENV) or "").strip().rstrip("/")
    if not ui or not run_id or carries_credentials(ui):
        return None
    return f"{ui}/#/runs/details/{run_id}"


def ensure_parent_run(run_id: str, *, pipeline: str = "efficientdet", experiment: str | None = None,
                      tags: dict[str, str] | None = None) -> str | None:
    """The id of the parent run for KFP run RUN_ID, created on first use; None if tracking is
    off or the server does not answer (the pipeline goes on untracked)."""
    if not run_id or not _tracked():
        return None
    client = _client()
    exp_id = _experiment_id(client, _experiment_of(experiment))
    found = _find_parent(client, exp_id, run_id)
    if found:
        return found.info.run_id
    all_tags = {**run_tags(), "kfp.pipeline_run_id": run_id, ROLE_TAG: "pipeline",
                "effdet.pipeline": pipeline,
                **{k: v for k, v in tracking.kfp_tags().items() if k != "kfp.task_name"},
                **(tags or {})}
    url = all_tags.get("kfp.pipeline_run_url")
    if url:
        all_tags[NOTE_TAG] = f"Kubeflow Pipelines run: [{run_id}]({url})"
    run = client.create_run(exp_id, run_name=run_name(pipeline, kfp_run_id=run_id),
                            tags=all_tags)
    return run.info.run_id


def finish_parent_run(parent_id: str | None, status: str = "FINISHED") -> None:
    if parent_id:
        _client().set_terminated(parent_id, status=status)


def roll_up(metrics: dict, tags: dict[str, str] | None = None,
            parent_id: str | None = None) -> dict[str, float]:
    """Copies METRICS named in HEADLINE_METRICS (finite numbers) and TAGS to the parent run
    (PARENT_ID, else the step context's), so the experiment table compares pipeline runs.
    Returns what was logged; tracking off, no parent or a failing server: nothing (a warning)."""
    import math

    parent_id = parent_id or os.environ.get("EFFDET_MLFLOW_PARENT_RUN_ID")
    headline = {k: float(metrics[k]) for k in HEADLINE_METRICS
                if isinstance(metrics.get(k), (int, float)) and not isinstance(metrics[k], bool)
                and math.isfinite(metrics[k])}
    if not parent_id or not (headline or tags) or not tracking.enabled():
        return {}
    try:
        client = _client()
        for key, value in headline.items():
            client.log_metric(parent_id, key, value)
        for key, value in (tags or {}).items():
            client.set_tag(parent_id, key, str(value))
    except Exception as exc:  # noqa: BLE001 - tracking must never stop the work
        log.warning("could not roll metrics up to the pipeline's MLflow run %s: %s",
                    parent_id, exc)
        return {}
    return headline


def _error_text(error: str) -> str:
    """The first line of an error, bounded, without URIs that carry credentials."""
    lines = (error or "").strip().splitlines()
    words = lines[0].split() if lines else []
    return " ".join(w for w in words if not carries_credentials(w))[:MAX_ERROR_CHARS]


def _failed_step_run(client, parent) -> str | None:
    """The task name of a FAILED step run under PARENT (a step that failed inside its run)."""
    found = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' "
                      "and attributes.status = 'FAILED'",
        order_by=["attributes.start_time DESC"], max_results=1)
    if not found:
        return None
    tags = found[0].data.tags
    return tags.get("kfp.task_name") or tags.get("effdet.step")


def close_parent_run(run_id: str, state: str, *, error: str = "",
                     experiment: str | None = None, if_running: bool = False) -> str | None:
    """Ends the parent run of KFP run RUN_ID by the pipeline's final STATE (KFP's
    PipelineTaskFinalStatus.state: SUCCEEDED -> FINISHED, CANCELLED -> KILLED, else FAILED).
    A failed run keeps (or gets, from its FAILED step runs) ``effdet.failed_step`` and the
    error's first line as ``effdet.error``; a succeeded one loses a failed step a retry made
    good. IF_RUNNING: leave a run someone already ended alone. Returns the MLflow status set,
    or None when there is no parent (tracking off, no step ever started)."""
    run_id = pipeline_run_id(run_id)
    if not run_id or not _tracked():
        return None
    try:
        return _close(_client(), run_id, state, error, experiment, if_running)
    except Exception as exc:  # noqa: BLE001 - the exit task must not fail the pipeline itself
        log.warning("could not close the MLflow run of pipeline run %s: %s", run_id, exc)
        return None


def _close(client, run_id: str, state: str, error: str, experiment: str | None,
           if_running: bool) -> str | None:
    exp = client.get_experiment_by_name(_experiment_of(experiment))
    parent = _find_parent(client, exp.experiment_id, run_id) if exp else None
    if parent is None or (if_running and parent.info.status != "RUNNING"):
        return None
    status = _FINAL_STATUS.get(str(state).upper(), "FAILED")
    pid = parent.info.run_id
    if status == "FINISHED":
        for tag in (FAILED_STEP_TAG, ERROR_TAG):
            if tag in parent.data.tags:
                client.delete_tag(pid, tag)
    else:
        failed = parent.data.tags.get(FAILED_STEP_TAG) or _failed_step_run(client, parent)
        if failed:
            client.set_tag(pid, FAILED_STEP_TAG, failed)
        if _error_text(error) and ERROR_TAG not in parent.data.tags:
            client.set_tag(pid, ERROR_TAG, _error_text(error))
    client.set_terminated(pid, status=status)
    return status


def pipeline_run_id(given: str) -> str:
    """The KFP run id a step belongs to: run-local names the run itself (``KFP_PIPELINE_RUN_ID``,
    its parent run is made before kfp.local starts), else GIVEN (the pipeline's placeholder)."""
    return os.environ.get("KFP_PIPELINE_RUN_ID") or given


def _mark_failed_step(parent_id: str, task: str, error: BaseException) -> None:
    """The failing step names itself on the parent (the exit handler only knows that the
    pipeline failed)."""
    try:
        client = _client()
        client.set_tag(parent_id, FAILED_STEP_TAG, task)
        text = _error_text(f"{task}: {error.__class__.__name__}: {error}")
        client.set_tag(parent_id, ERROR_TAG, text)
    except Exception as exc:  # noqa: BLE001 - the step's own error is what matters
        log.warning("could not record the failed step on MLflow run %s: %s", parent_id, exc)


@contextlib.contextmanager
def step_context(run_id: str, task: str, *, pipeline: str = "efficientdet",
                 experiment: str | None = None) -> Iterator[str | None]:
    """Sets the KFP identity and the parent run in os.environ for one step; yields the parent
    run id (None when KFP's plugin owns the run, or tracking is off). EXPERIMENT (the
    pipeline's mlflow_experiment) replaces MLFLOW_EXPERIMENT_NAME for the step and the ranks
    it starts; None keeps the environment's."""
    run_id = pipeline_run_id(run_id)
    env = kfp_env(run_id, task, run_url=os.environ.get("KFP_PIPELINE_RUN_URL")
                  or kfp_run_url(run_id) or "")
    if experiment:
        env["MLFLOW_EXPERIMENT_NAME"] = experiment
    if not os.environ.get("MLFLOW_RUN_ID") and not os.environ.get("EFFDET_MLFLOW_PARENT_RUN_ID"):
        parent = ensure_parent_run(run_id, pipeline=pipeline, experiment=experiment,
                                   tags={k: v for k, v in tracking.kfp_tags(env).items()
                                         if k != "kfp.task_name"})
        if parent:
            env["EFFDET_MLFLOW_PARENT_RUN_ID"] = parent
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    parent = os.environ.get("EFFDET_MLFLOW_PARENT_RUN_ID")
    try:
        yield parent
    except BaseException as exc:
        if parent and not isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
            _mark_failed_step(parent, task, exc)
        raise
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
