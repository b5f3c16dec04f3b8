"""MLflow tracking that never stops the work: one run per pipeline step, shared run layout.

Run selection (the contract in docs/architecture.md):
- ``MLFLOW_RUN_ID`` set (KFP's MLflow plugin made the run) -> log into that run;
- else ``EFFDET_MLFLOW_PARENT_RUN_ID`` set -> a nested run under it;
- else a top-level run in ``MLFLOW_EXPERIMENT_NAME`` (default ``efficientdet``).
Tracking is off when ``EFFDET_TRACKING=off`` or no ``MLFLOW_TRACKING_URI`` is set. When the
server does not answer (or a later call fails), a warning is printed once and the work goes on;
the ``log_*`` helpers here are then no-ops.

Runs carry the KFP plugin's tag keys when known, read from ``KFP_PIPELINE_RUN_ID``,
``KFP_PIPELINE_RUN_URL``, ``KFP_PIPELINE_ID``, ``KFP_PIPELINE_VERSION_ID``, ``KFP_TASK_NAME``,
and are named and tagged by `efficientdet.run_identity` (what ran, on what, with what).
"""

from __future__ import annotations

import contextlib
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

from efficientdet.credentials import carries_credentials
from efficientdet.run_identity import RunSubject, run_name, run_tags

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "efficientdet"
KFP_TAG_ENV = {
    "kfp.pipeline_run_id": "KFP_PIPELINE_RUN_ID",
    "kfp.pipeline_run_url": "KFP_PIPELINE_RUN_URL",
    "kfp.pipeline_id": "KFP_PIPELINE_ID",
    "kfp.pipeline_version_id": "KFP_PIPELINE_VERSION_ID",
    "kfp.task_name": "KFP_TASK_NAME",
}
_SECRET_WORDS = ("password", "secret", "token", "access_key", "credential", "apikey", "api_key")
MAX_PARAM_CHARS = 6000
PREFLIGHT_TIMEOUT_S = 5.0

_state = {"warned": False, "broken": False}


def _warn_once(message: str) -> None:
    _state["broken"] = True
    if not _state["warned"]:
        _state["warned"] = True
        log.warning("MLflow tracking disabled, the work goes on: %s", message)


def reset_warning_state() -> None:
    """Forget an earlier failure (a new step in the same process may try again)."""
    _state["warned"] = False
    _state["broken"] = False


def enabled() -> bool:
    if os.environ.get("EFFDET_TRACKING", "").strip().lower() in ("off", "0", "false", "no"):
        return False
    return bool(os.environ.get("MLFLOW_TRACKING_URI"))


def kfp_tags(environ=None) -> dict[str, str]:
    environ = os.environ if environ is None else environ
    return {tag: environ[env] for tag, env in KFP_TAG_ENV.items() if environ.get(env)}


def is_secret_key(key: str) -> bool:
    low = key.lower()
    return any(word in low for word in _SECRET_WORDS)


def clean_params(params: dict[str, Any]) -> dict[str, str]:
    """Params as MLflow takes them: strings, bounded length, nothing secret-looking."""
    out = {}
    for key, value in params.items():
        text = "null" if value is None else str(value)
        if is_secret_key(key) or carries_credentials(text):
            continue
        out[key] = text[:MAX_PARAM_CHARS]
    return out


def _preflight(uri: str) -> str | None:
    """None when the server answers, else the reason. Only HTTP(S) stores need a check."""
    if not uri.startswith(("http://", "https://")):
        return None
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=PREFLIGHT_TIMEOUT_S):
            return None
    except urllib.error.HTTPError:
        return None  # it answers (a proxy may not route /health)
    except OSError as exc:
        return f"{uri} does not answer ({exc.__class__.__name__}: {exc})"


@contextlib.contextmanager
def step_run(step: str, *, params: dict | None = None, tags: dict | None = None,
             subject: RunSubject | None = None, log_system_metrics: bool = False,
             ) -> Iterator[Any]:
    """Context manager yielding the active ``mlflow`` run, or None when tracking is off or the
    server does not answer. The run ends (FINISHED/FAILED) when the block ends. SUBJECT (task,
    variant, dataset) names and tags the run (`run_identity`)."""
    if not enabled():
        yield None
        return
    uri = os.environ["MLFLOW_TRACKING_URI"]
    reason = ("MLFLOW_TRACKING_URI carries credentials (user:password@): set "
              "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD (the MLflow Secret) instead"
              if carries_credentials(uri) else _preflight(uri))
    if reason is not None:
        _warn_once(reason)
        yield None
        return
    # A server that dies mid-run must not stall training for minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    try:
        import mlflow

        # The environment is the source of truth: a URI set earlier in this process
        # (mlflow.set_tracking_uri) must not send this run to another store.
        mlflow.set_tracking_uri(uri)
        name = run_name(os.environ.get("KFP_TASK_NAME") or step, subject,
                        kfp_run_id=os.environ.get("KFP_PIPELINE_RUN_ID"))
        run = _start(mlflow, name, log_system_metrics)
    except Exception as exc:  # noqa: BLE001 - tracking must never stop the work
        _warn_once(f"could not start a run at {uri} ({exc.__class__.__name__}: {exc})")
        yield None
        return
    _state["broken"] = False
    all_tags = {"effdet.step": step, **run_tags(subject), **kfp_tags(), **(tags or {})}
    set_tags(all_tags)
    if params:
        log_params(params)
    status = "FINISHED"
    try:
        yield run
    except BaseException:
        status = "FAILED"
        raise
    finally:
        try:
            mlflow.end_run(status=status)
        except Exception as exc:  # noqa: BLE001
            _warn_once(f"could not end run ({exc.__class__.__name__}: {exc})")


def _start(mlflow, name: str, log_system_metrics: bool):
    system = bool(log_system_metrics) and _has_psutil()
    if os.environ.get("MLFLOW_RUN_ID"):
        # the given run decides the experiment (an earlier step may have set another one)
        existing = mlflow.get_run(os.environ["MLFLOW_RUN_ID"])
        mlflow.set_experiment(experiment_id=existing.info.experiment_id)
        return mlflow.start_run(run_id=existing.info.run_id, log_system_metrics=system)
    experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    parent = os.environ.get("EFFDET_MLFLOW_PARENT_RUN_ID")
    if parent:
        # the nested run goes into the parent's experiment
        parent_run = mlflow.get_run(parent)
        mlflow.set_experiment(experiment_id=parent_run.info.experiment_id)
        return mlflow.start_run(run_name=name, nested=True, parent_run_id=parent,
                                experiment_id=parent_run.info.experiment_id,
                                log_system_metrics=system)
    if not os.environ.get("MLFLOW_EXPERIMENT_ID"):
        mlflow.set_experiment(experiment)
    return mlflow.start_run(run_name=name, log_system_metrics=system)


def _has_psutil() -> bool:
    try:
        import psutil  # noqa: F401
    except ImportError:
        return False
    return True


def _active():
    if _state["broken"] or not enabled():
        return None
    try:
        import mlflow
    except ImportError:
        return None
    return mlflow if mlflow.active_run() is not None else None


def _safe(what: str, fn, *args, **kwargs) -> bool:
    mlflow = _active()
    if mlflow is None:
        return False
    try:
        fn(mlflow, *args, **kwargs)
        return True
    except Exception as exc:  # noqa: BLE001
        _warn_once(f"{what} failed ({exc.__class__.__name__}: {exc})")
        return False


def log_params(params: dict) -> bool:
    return _safe("log_params", lambda m: m.log_params(clean_params(params)))


def set_tags(tags: dict) -> bool:
    return _safe("set_tags", lambda m: m.set_tags({k: str(v) for k, v in tags.items()}))


def set_subject(step: str, subject: RunSubject) -> bool:
    """Names and tags the active run after SUBJECT once it is known (a conversion's dataset
    exists only when it is done)."""
    name = run_name(os.environ.get("KFP_TASK_NAME") or step, subject,
                    kfp_run_id=os.environ.get("KFP_PIPELINE_RUN_ID"))
    return set_tags({**run_tags(subject), "mlflow.runName": name})


def log_metrics(metrics: dict, step: int | None = None) -> bool:
    clean = {k: float(v) for k, v in metrics.items() if v is not None}
    return _safe("log_metrics", lambda m: m.log_metrics(clean, step=step))


def log_artifact(path: str, artifact_path: str | None = None) -> bool:
    return _safe("log_artifact", lambda m: m.log_artifact(str(path), artifact_path))


def log_artifacts(local_dir: str, artifact_path: str | None = None) -> bool:
    return _safe("log_artifacts", lambda m: m.log_artifacts(str(local_dir), artifact_path))


def log_dict(data: dict, artifact_file: str) -> bool:
    return _safe("log_dict", lambda m: m.log_dict(data, artifact_file))


def active_run_id() -> str | None:
    mlflow = _active()
    if mlflow is None:
        return None
    return mlflow.active_run().info.run_id
