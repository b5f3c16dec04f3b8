"""What each pipeline step does, as plain functions over paths and URIs.

The Kubeflow components in `components/` are shells that hand their artifact paths to these
functions, so a step runs the same in a cluster, under `kfp.local` and in a test. Each step
logs into its MLflow run (nested under the pipeline's parent run, see `runs`) and returns a
Markdown summary that links to that run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from pathlib import Path

from efficientdet import console, storage, tracking
from efficientdet.model_tasks import check_task
from efficientdet.orchestration import backends, runs
from efficientdet.run_identity import RunSubject, subject_tags
from efficientdet.training.config import TrainOverrides, load_config, write_config


class StepError(RuntimeError):
    """A step's input is unusable; the message names it."""


# Each step runs in a process of its own (the KFP executor) that every component starts by
# importing this module: it keeps the console as quiet as `effdet` does (EFFDET_VERBOSE=1, which
# `effdet -v pipeline run-local` passes down, brings the noise back).
console.configure()


def _check_task(task: str) -> None:
    try:
        check_task(task)
    except ValueError as exc:
        raise StepError(str(exc)) from None


def _table(rows: dict) -> str:
    lines = ["| | |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
              for k, v in rows.items()]
    return "\n".join(lines)


# -- convert ---------------------------------------------------------------------------------------
def convert(task: str, source: str, images: str, output: str, *, num_shards: int = 0) -> tuple[dict, str]:
    """Converts a COCO set (detection: SOURCE = annotations JSON, IMAGES = folder) or a
    class-per-folder tree (classification: SOURCE = root) into OUTPUT. Returns (report, markdown)."""
    _check_task(task)
    if not source:
        raise StepError("convert: the source URI is empty")
    with tracking.step_run("convert", params={"task": task, "source": source, "images": images,
                                              "output": output, "num_shards": num_shards},
                           subject=RunSubject(task=task)):
        if task == "detection":
            if not images:
                raise StepError("convert: detection needs the images URI")
            from efficientdet.data.convert_coco import convert_coco

            report = convert_coco(source, images, output, num_shards=num_shards or None,
                                  progress=False)
        else:
            from efficientdet.data.convert_imagenet import convert_imagenet

            report = convert_imagenet(source, output, num_shards=num_shards or None, progress=False)
        tracking.set_subject("convert", RunSubject(task=task, dataset=output))
        scalars = {k: v for k, v in _flat_numbers(report).items()}
        tracking.log_metrics(scalars)
        tracking.log_dict(report, "conversion_report.json")
        run_id = tracking.active_run_id()
    md = (f"## Conversion ({task})\n\nSource `{source}` -> `{output}`\n\n{_table(scalars)}\n\n"
          f"{runs.run_reference(run_id)}\n")
    return report, md


def _flat_numbers(d: dict, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            out[key] = float(v)
        elif isinstance(v, dict) and len(v) <= 20 and not prefix:
            out.update({kk: vv for kk, vv in _flat_numbers(v, key + ".").items()})
    return out


# -- train ---------------------------------------------------------------------------------------
TRAIN_CONFIG_FILE = "train-config.yaml"


def write_train_config(*, recipe: str, overrides: TrainOverrides, output: str) -> list[str]:
    """Resolves RECIPE + OVERRIDES (None fields keep the recipe's values) into one validated
    config with OUTPUT as its output, writes it to OUTPUT/train-config.yaml and returns the
    `effdet train` arguments that train from that document. The ranks read exactly the values
    resolved here: nothing the UI left unset can replace a recipe value on the way."""
    config = load_config(recipe, overrides=dataclasses.replace(overrides, output=output))
    return ["--config", write_config(config, storage.join(output, TRAIN_CONFIG_FILE))]


def train(args: list[str], output: str, backend: backends.Backend,
          data_uris: tuple[str, ...] = ()) -> tuple[dict, str]:
    """Runs training through BACKEND (ranks in an MPIJob or horovodrun) and reads the summary
    the chief wrote to OUTPUT/summary.json. Returns (summary, markdown); the summary also holds
    the last evaluation's ``val_*`` metrics and ``best_<metric>`` at its top level (the step's
    KFP metrics) when the run evaluated during training."""
    if isinstance(backend, backends.MPIJobBackend):
        for uri in (output, *data_uris):
            if not storage.is_remote(uri):
                raise StepError(f"{uri}: MPIJob ranks run in other pods and cannot see this "
                                "path; set the pipeline's work_uri to an s3:// prefix")
    backend.run(args, env=backends.forwarded_env())
    summary_uri = storage.join(output, "summary.json")
    if not storage.exists(summary_uri):
        raise StepError(f"training ended but wrote no {summary_uri}")
    summary = json.loads(storage.read_text(summary_uri))
    summary.update(_evaluation_scalars(summary))
    runs.roll_up(summary, tags=subject_tags(RunSubject(
        task=summary.get("task"), variant=summary.get("model"),
        dataset=data_uris[0] if data_uris else None)))
    scalars = {k: v for k, v in summary.items() if isinstance(v, (int, float))
               and not isinstance(v, bool)}
    losses = summary.get("losses") or {}
    scalars.update({f"loss/{k}": v for k, v in losses.items() if isinstance(v, (int, float))})
    md = (f"## Training\n\nModel `{summary.get('model_uri')}` from {summary.get('world_size')} "
          f"rank(s)\n\n{_table(scalars)}\n\n{runs.run_reference(summary.get('mlflow_run_id'))}\n")
    return summary, md


def _evaluation_scalars(summary: dict) -> dict[str, float]:
    """``val_*`` of the summary's last evaluation during training and ``best_<metric>``."""
    scalars = {k: v for k, v in (summary.get("evaluation") or {}).items()
               if k.startswith("val_") and isinstance(v, (int, float))}
    best = summary.get("best") or {}
    if best.get("metric") and isinstance(best.get("value"), (int, float)):
        scalars[f"best_{best['metric']}"] = best["value"]
    return scalars


# -- register ------------------------------------------------------------------------------------
def register(model_uri: str, *, name: str, metric_name: str, metric_value: float,
             threshold: float, alias: str = "champion", extra_dirs: dict[str, str] | None = None,
             ) -> tuple[dict, str]:
    """Logs the model as an MLflow pyfunc model (over its SavedModel, with the training
    artifact inside; `export.mlflow_model`) into the step's run, registers a new version under
    NAME and sets ALIAS on it only when METRIC_VALUE >= THRESHOLD. EXTRA_DIRS are logged as run
    artifacts by name; an ``exported`` folder's ``saved_model`` is the one the pyfunc model
    serves (else one is exported from the artifact here). Returns (result, markdown)."""
    if not name:
        raise StepError("register: the registered model name is empty")
    if not tracking.enabled():
        raise StepError("register: MLflow tracking is off (set MLFLOW_TRACKING_URI)")
    passed = metric_value >= threshold
    result = {"name": name, "metric": metric_name, "value": metric_value,
              "threshold": threshold, "passed": passed, "alias": None, "version": None}
    with tracking.step_run("register", params={"model_uri": model_uri, "name": name,
                                               "metric": metric_name, "threshold": threshold,
                                               "alias": alias},
                           subject=model_subject(model_uri)) as run, \
            tempfile.TemporaryDirectory(prefix="effdet-register-") as downloads:
        if run is None:
            raise StepError("register: the MLflow server does not answer")
        import mlflow
        from mlflow import MlflowClient

        from efficientdet.export.mlflow_model import log_pyfunc_model
        from efficientdet.models.artifact import read_meta

        local = storage.sync_to_local(model_uri, downloads)
        if not (Path(local) / "model.json").is_file():
            raise StepError(f"register: {model_uri} holds no model.json (not a model artifact)")
        meta = read_meta(str(local))
        extra = {sub: _local_dir(path, downloads) for sub, path in (extra_dirs or {}).items()
                 if path}
        saved_model = _saved_model(local, extra.get("exported"), downloads)
        info = log_pyfunc_model(local, saved_model, meta)
        for sub, path in extra.items():
            _log_extra(mlflow, Path(path), sub, skip=saved_model)
        mlflow.log_metric(metric_name.replace("@", "_"), metric_value)
        client = MlflowClient()
        try:
            client.get_registered_model(name)
        except Exception:  # noqa: BLE001 - MlflowException RESOURCE_DOES_NOT_EXIST
            client.create_registered_model(name, description="EfficientDet/EfficientNet models "
                                                              "registered by the pipeline")
        version = client.create_model_version(
            name, source=info.model_uri, run_id=run.info.run_id, model_id=info.model_id,
            tags={metric_name: str(metric_value), "threshold": str(threshold),
                  **tracking.kfp_tags()})
        result["version"] = version.version
        if passed:
            client.set_registered_model_alias(name, alias, version.version)
            result["alias"] = alias
        mlflow.set_tags({"effdet.registered_model": name,
                         "effdet.registered_version": version.version,
                         "effdet.alias": result["alias"] or ""})
        run_id = run.info.run_id
    verdict = (f"passed ({metric_value:.4f} >= {threshold}): alias `{alias}` set"
               if passed else f"below threshold ({metric_value:.4f} < {threshold}): no alias")
    md = (f"## Registration\n\n`{name}` version {result['version']}, {metric_name} {verdict}\n\n"
          f"`models:/{name}/{result['version']}` (MLflow pyfunc: "
          f"`mlflow.pyfunc.load_model`, `mlflow models serve`)\n\n{runs.run_reference(run_id)}\n")
    return result, md


def _local_dir(uri: str, downloads: str) -> Path:
    return Path(storage.sync_to_local(uri, downloads)) if storage.is_remote(uri) else Path(uri)


def _saved_model(artifact: Path, exported: Path | None, downloads: str) -> Path:
    """The export step's SavedModel (EXPORTED/saved_model), else one exported from the
    artifact into DOWNLOADS (the export step made only ONNX)."""
    if exported is not None and (exported / "saved_model" / "saved_model.pb").is_file():
        return exported / "saved_model"
    from efficientdet.export.saved_model import export_saved_model
    from efficientdet.models.artifact import load_artifact

    model, meta = load_artifact(str(artifact))
    return Path(export_saved_model(model, meta, str(Path(downloads) / "saved_model")))


def _log_extra(mlflow, path: Path, sub: str, *, skip: Path) -> None:
    """PATH (file or folder) as run artifacts under SUB, leaving out SKIP (the SavedModel the
    registered model already holds: no second upload)."""
    if path.is_file():
        mlflow.log_artifact(str(path), sub)
    elif path.is_dir():
        for child in sorted(path.iterdir()):
            if child.resolve() == skip.resolve():
                continue
            if child.is_dir():
                mlflow.log_artifacts(str(child), f"{sub}/{child.name}")
            else:
                mlflow.log_artifact(str(child), sub)


def write_text(path: str, text: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)


def output_dir(work_uri: str, run_id: str, task: str, artifact_path: str) -> str:
    """Where a step writes: under WORK_URI (s3://, needed when other pods write it, e.g. MPIJob
    ranks) or else the step's own artifact directory."""
    if work_uri:
        return storage.join(work_uri, run_id, task)
    os.makedirs(artifact_path, exist_ok=True)
    return artifact_path


def model_subject(model_uri: str, data_uri: str | None = None) -> RunSubject:
    """Task and variant of the model artifact at MODEL_URI (its model.json), for the run's
    name and tags; an unreadable one gives none (the step itself reports it)."""
    from efficientdet.models.artifact import read_meta

    try:
        meta = read_meta(model_uri)
    except Exception:  # noqa: BLE001 - the step's own reading names the problem
        return RunSubject(dataset=data_uri or None)
    return RunSubject(task=meta.task, variant=meta.model, dataset=data_uri or None)


# -- evaluate / export -------------------------------------------------------------------------------
def _scalars(d: dict) -> dict[str, float]:
    """Finite numbers only (KFP's Metrics and the compare view take no NaN)."""
    return {k: float(v) for k, v in d.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def evaluate(model_uri: str, data_uri: str, output: str, *, batch_size: int = 0,
             ) -> tuple[dict[str, float], str, str]:
    """Evaluates MODEL_URI on DATA_URI (the package's evaluate_model). Returns (scalars,
    markdown, html)."""
    from efficientdet.evaluation.evaluate import evaluate_model

    with tracking.step_run("evaluate", params={"model_uri": model_uri, "data": data_uri,
                                               "batch_size": batch_size or 8},
                           subject=model_subject(model_uri, data_uri)):
        result = evaluate_model(model_uri, data_uri, batch_size=batch_size or 8,
                                output_dir=output)
        scalars = _scalars(result.get("metrics", {}))
        per_class = {f"AP/{name}": v for name, v in (result.get("per_class_ap") or {}).items()
                     if isinstance(v, (int, float))}
        tracking.log_metrics({**scalars, **per_class})
        runs.roll_up(scalars)
        if not storage.is_remote(output) and Path(output).is_dir():
            tracking.log_artifacts(output, "evaluation")
        run_id = tracking.active_run_id()
    html_files = sorted(Path(output).glob("*.html")) if not storage.is_remote(output) else []
    html = html_files[0].read_text() if html_files else (
        "<html><body><h2>Evaluation</h2><table>"
        + "".join(f"<tr><td>{k}</td><td>{v:.4f}</td></tr>" for k, v in scalars.items())
        + "</table></body></html>")
    md = f"## Evaluation\n\n`{model_uri}` on `{data_uri}`\n\n{_table(scalars)}\n\n" \
         f"{runs.run_reference(run_id)}\n"
    return scalars, md, html


FORMAT_ALIASES = {"savedmodel": "saved_model", "saved_model": "saved_model", "onnx": "onnx",
                  "tftrt": "tf-trt", "tf-trt": "tf-trt"}


def parse_formats(formats: str) -> list[str]:
    wanted = []
    for name in (f.strip().lower() for f in formats.split(",") if f.strip()):
        if name not in FORMAT_ALIASES:
            raise StepError(f"export formats {formats!r}: unknown {name!r} "
                            f"(use saved_model, onnx, tf-trt)")
        wanted.append(FORMAT_ALIASES[name])
    if not wanted:
        raise StepError("export: formats is empty")
    return list(dict.fromkeys(wanted))


GPU_FORMATS = ("tf-trt",)


def split_formats(formats: str) -> tuple[str, bool]:
    """(the formats the CPU export step makes, whether a GPU format was asked). TF-TRT needs a
    GPU and the training image, so the pipeline runs it as its own step (export-tftrt); when
    only it is asked, the CPU step still makes the SavedModel that gets registered."""
    wanted = parse_formats(formats)
    cpu = [name for name in wanted if name not in GPU_FORMATS] or ["saved_model"]
    return ",".join(cpu), any(name in GPU_FORMATS for name in wanted)


def export(model_uri: str, output: str, *, formats: str = "saved_model,onnx",
           data_uri: str = "", max_ap_drop: float = 0.01) -> tuple[dict, str]:
    """Exports MODEL_URI to OUTPUT/<format> for each of FORMATS; with DATA_URI each export is
    scored against the source model (parity) and a drop above MAX_AP_DROP fails the step.
    Returns (scalars, markdown)."""
    from efficientdet.export import export_model

    wanted = parse_formats(formats)
    scalars: dict[str, float] = {}
    rows = []
    with tracking.step_run("export", params={"model_uri": model_uri, "formats": ",".join(wanted),
                                             "parity_data": data_uri, "max_ap_drop": max_ap_drop},
                           subject=model_subject(model_uri)):
        failed = []
        for fmt in wanted:
            target = storage.join(output, fmt)
            report = export_model(model_uri, target, fmt=fmt, data_uri=data_uri or None,
                                  max_ap_drop=max_ap_drop)
            tracking.log_dict(report, f"export/{fmt}_report.json")
            parity = report.get("parity") or {}
            if parity:
                scalars.update({f"{fmt}/source_{parity['metric']}": parity["source"],
                                f"{fmt}/exported_{parity['metric']}": parity["exported"],
                                f"{fmt}/parity_drop": parity["drop"]})
                if not parity["passed"]:
                    failed.append(f"{fmt}: {parity['metric']} drop {parity['drop']:.4f} > "
                                  f"{max_ap_drop}")
            rows.append(f"| {fmt} | `{target}` | "
                        + (f"{parity['metric']} {parity['source']:.4f} -> {parity['exported']:.4f}"
                           f" ({'ok' if parity['passed'] else 'FAILED'})" if parity else "not checked")
                        + " |")
        scalars = _scalars(scalars)
        tracking.log_metrics(scalars)
        run_id = tracking.active_run_id()
    if failed:
        raise StepError("export parity check failed: " + "; ".join(failed))
    md = ("## Export\n\n| format | where | parity |\n|---|---|---|\n" + "\n".join(rows)
          + f"\n\n{runs.run_reference(run_id)}\n")
    return scalars, md
