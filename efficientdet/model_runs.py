"""The MLflow run that `effdet evaluate` and `effdet export` log into.

A model knows the run that trained it (``training.mlflow_run_id`` in its model.json, kept by
exports too). When tracking is on and that run exists on the tracking server, the command
logs into it, so a model's AP, report and export sizes sit beside its training curves; the
run's status is left as it was. Otherwise the command gets a run of its own, named
``evaluate <variant>`` / ``export <variant>``. Tracking off: nothing is logged (the helpers of
`efficientdet.tracking` are no-ops). Metric names are the pipeline steps' (``AP``, ``AP50``,
``top1``, ``AP/<class>``; ``export/<format>/...``), so both paths compare alike.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from efficientdet import storage, tracking
from efficientdet.credentials import carries_credentials

log = logging.getLogger(__name__)
_METRIC_NAME_UNSAFE = re.compile(r"[^\w\-./ ]")  # what MLflow refuses in a metric name


def model_meta(model_uri: str):
    """The `ModelMeta` of an artifact, SavedModel dir or .onnx file (its folder), or None."""
    from efficientdet.models.artifact import read_meta

    uri = str(model_uri)
    folder = uri.rsplit("/", 1)[0] if uri.endswith(".onnx") else uri
    try:
        return read_meta(folder or ".")
    except Exception:  # noqa: BLE001 - no model.json: the command reports the model itself
        return None


def _training_run(run_id: str):
    """The training run on this tracking server, or None (server silent, another server,
    deleted run)."""
    uri = os.environ["MLFLOW_TRACKING_URI"]
    if carries_credentials(uri) or tracking._preflight(uri) is not None:
        return None  # step_run then names the reason once
    import mlflow

    try:
        mlflow.set_tracking_uri(uri)
        return mlflow.get_run(run_id)
    except Exception:  # noqa: BLE001 - MlflowException RESOURCE_DOES_NOT_EXIST, ...
        return None


@contextlib.contextmanager
def _resumed(run) -> Iterator[Any]:
    """Logs into the training RUN and puts its status back as it was (FINISHED, FAILED or
    still RUNNING); its tags other than ``effdet.<verb>.*`` stay untouched."""
    import mlflow

    try:
        mlflow.set_experiment(experiment_id=run.info.experiment_id)
        active = mlflow.start_run(run_id=run.info.run_id)
    except Exception as exc:  # noqa: BLE001 - tracking never stops the work
        log.warning("MLflow: could not log into run %s, the work goes on (%s)",
                    run.info.run_id, exc)
        yield None
        return
    tracking.reset_warning_state()
    try:
        yield active
    finally:
        try:
            status = run.info.status or "FINISHED"
            mlflow.end_run(status="FINISHED" if status == "RUNNING" else status)
            if status == "RUNNING":  # still training elsewhere: leave it running
                mlflow.MlflowClient().update_run(run.info.run_id, status="RUNNING")
        except Exception as exc:  # noqa: BLE001
            log.warning("MLflow: could not close run %s (%s)", run.info.run_id, exc)


@contextlib.contextmanager
def model_run(verb: str, model_uri: str) -> Iterator[Any]:
    """The active MLflow run for VERB on MODEL_URI (see the module doc), or None."""
    if not tracking.enabled():
        yield None
        return
    meta = model_meta(model_uri)
    training_id = (meta.training.get("mlflow_run_id") if meta else None) or None
    training = _training_run(training_id) if training_id else None
    if training is not None:
        with _resumed(training) as run:
            tracking.set_tags({f"effdet.{verb}.model_uri": model_uri})
            yield run
        return
    with tracking.step_run(verb) as run:
        if run is not None:
            tracking.set_tags({"mlflow.runName": f"{verb} {meta.model}" if meta else verb,
                               "effdet.model_uri": model_uri,
                               **({"effdet.training_run_id": training_id} if training_id
                                  else {})})
        yield run


def _finite(values: dict | None, prefix: str = "") -> dict[str, float]:
    """PREFIX + name -> value for the finite numbers of VALUES (names made MLflow-safe)."""
    return {prefix + _METRIC_NAME_UNSAFE.sub("_", str(k)): float(v)
            for k, v in (values or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def log_evaluation(result: dict, data_uri: str, output_dir: str | None) -> None:
    """Metrics (and per-class AP / accuracy) of an evaluation, its data and its report files."""
    tracking.log_metrics({**_finite(result.get("metrics")),
                          **_finite(result.get("per_class_ap"), "AP/"),
                          **_finite(result.get("per_class_accuracy"), "accuracy/")})
    tracking.set_tags({"effdet.evaluate.data": data_uri})
    if output_dir and not storage.is_remote(output_dir) and Path(output_dir).is_dir():
        tracking.log_artifacts(output_dir, "evaluation")


def _size_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def log_export(report: dict, output_uri: str, seconds: float) -> None:
    """The export's format, where it went, its size (local outputs), time and parity."""
    fmt = report["format"]
    metrics = {f"export/{fmt}/seconds": seconds}
    if not storage.is_remote(output_uri) and os.path.exists(output_uri):
        metrics[f"export/{fmt}/size_mb"] = _size_bytes(Path(output_uri)) / 1e6
    parity = report.get("parity") or {}
    if parity:
        metrics.update({f"export/{fmt}/source_{parity['metric']}": parity["source"],
                        f"export/{fmt}/exported_{parity['metric']}": parity["exported"],
                        f"export/{fmt}/parity_drop": parity["drop"]})
    tracking.log_metrics(metrics)
    tracking.set_tags({f"effdet.export.{fmt}": output_uri})
    tracking.log_dict(report, f"export/{fmt}_report.json")
