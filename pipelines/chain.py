"""What both pipelines share: the parameters after the task's data URIs, the two conversion
steps, and the steps after conversion (train -> evaluate -> export -> register)."""

# kfp 2.x reads typing.Optional[X] = None as an optional input; it rejects `X | None`.
# ruff: noqa: UP045

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Optional

from kfp import dsl

from components.convert import convert
from components.evaluate import evaluate
from components.export import export
from components.register import register
from components.train import train
from pipelines.options import ClusterOptions, configure, identity

TASK_GIVES = object()  # a default each task's pipeline supplies

# (name, type, default) after the data URIs, in signature order. Training settings default to
# None: unset, the recipe's value is kept.
SHARED_PARAMS: tuple[tuple[str, object, object], ...] = (
    ("recipe", str, TASK_GIVES),
    ("model_name", Optional[str], None),
    ("image_size", Optional[int], None),
    ("steps", Optional[int], None),
    ("epochs", Optional[float], None),
    ("batch_size", Optional[int], None),
    ("workers", int, 0),
    ("gpus_per_worker", int, -1),
    ("amp", Optional[bool], None),
    ("xla", Optional[bool], None),
    ("launcher", str, "auto"),
    ("train_image", str, ""),
    ("worker_cpu", str, ""),
    ("worker_memory", str, ""),
    ("node_selector", str, ""),
    ("mpijob_cleanup", str, "delete-on-success"),
    ("deadline_seconds", int, 0),
    ("num_shards", int, 0),
    ("eval_batch_size", int, 0),
    ("export_formats", str, "saved_model,onnx"),
    ("max_parity_drop", float, 0.01),
    ("registered_model_name", str, TASK_GIVES),
    ("metric_name", str, TASK_GIVES),
    ("threshold", float, TASK_GIVES),
    ("alias", str, "champion"),
    ("work_uri", str, ""),
    ("init_from", str, ""),  # pretrained backbone or whole model: URI, models:/NAME@ALIAS
)


def pipeline_signature(data_params: tuple[str, ...], defaults: dict) -> inspect.Signature:
    """Required str DATA_PARAMS, then SHARED_PARAMS with the task's DEFAULTS filled in."""
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    missing = [n for n, _, d in SHARED_PARAMS if d is TASK_GIVES and n not in defaults]
    unknown = set(defaults) - {n for n, _, _ in SHARED_PARAMS}
    if missing or unknown:
        raise ValueError(f"pipeline defaults: missing {missing}, unknown {sorted(unknown)}")
    params = [inspect.Parameter(n, kind, annotation=str) for n in data_params]
    params += [inspect.Parameter(n, kind, annotation=t, default=defaults.get(n, d))
               for n, t, d in SHARED_PARAMS]
    return inspect.Signature(params)


def make_pipeline(options: ClusterOptions, *, task: str, name: str, description: str,
                  data_params: tuple[str, ...], defaults: dict,
                  sources: Callable[[dict, str], tuple]):
    """The KFP pipeline `<task>_pipeline` for TASK: parameters DATA_PARAMS + SHARED_PARAMS (KFP
    reads the signature); SOURCES(p, split) gives (source_uri, images_uri) of the "train"/"val"
    convert step."""
    signature = pipeline_signature(data_params, defaults)

    def pipeline_func(*args):
        p = dict(zip(signature.parameters, args))
        datasets = {}
        for split in ("train", "val"):
            source_uri, images_uri = sources(p, split)
            datasets[split] = configure(
                convert(task=task, source_uri=source_uri, images_uri=images_uri,
                        num_shards=p["num_shards"], work_uri=p["work_uri"], **identity()),
                options, name=f"convert-{split}", cache=True, retries=2)
        train_to_register(options, task=task, train_ds=datasets["train"].outputs["dataset"],
                          val_ds=datasets["val"].outputs["dataset"], p=p)

    pipeline_func.__signature__ = signature
    pipeline_func.__annotations__ = {n: prm.annotation for n, prm in signature.parameters.items()}
    pipeline_func.__name__ = pipeline_func.__qualname__ = f"{task}_pipeline"
    return dsl.pipeline(name=name, description=description)(pipeline_func)


def train_to_register(options: ClusterOptions, *, task: str, train_ds, val_ds, p: dict):
    """P holds the pipeline's parameters (channels); returns the register task."""
    trained = configure(train(
        task=task, recipe=p["recipe"], train_data=train_ds, val_data=val_ds,
        model_name=p["model_name"], image_size=p["image_size"], steps=p["steps"],
        epochs=p["epochs"], batch_size=p["batch_size"], workers=p["workers"],
        gpus_per_worker=p["gpus_per_worker"], amp=p["amp"], xla=p["xla"], launcher=p["launcher"],
        train_image=p["train_image"], worker_cpu=p["worker_cpu"], worker_memory=p["worker_memory"],
        node_selector=p["node_selector"], s3_secret=options.s3_secret or "",
        mlflow_secret=options.mlflow_secret or "", cleanup=p["mpijob_cleanup"],
        deadline_seconds=p["deadline_seconds"], work_uri=p["work_uri"],
        init_from=p["init_from"], **identity()),
        options, name="train", cache=False, retries=1, gpu=True)
    evaluated = configure(evaluate(
        model=trained.outputs["model"], val_data=val_ds, batch_size=p["eval_batch_size"],
        work_uri=p["work_uri"], **identity()), options, name="evaluate", cache=True, retries=1)
    exported = configure(export(
        model=trained.outputs["model"], val_data=val_ds, formats=p["export_formats"],
        max_ap_drop=p["max_parity_drop"], work_uri=p["work_uri"],
        **identity()), options, name="export", cache=True, retries=1)
    registered = configure(register(
        model=trained.outputs["model"], exported=exported.outputs["exported"],
        eval_metrics=evaluated.outputs["metrics"],
        registered_model_name=p["registered_model_name"], metric_name=p["metric_name"],
        threshold=p["threshold"], alias=p["alias"], **identity()),
        options, name="register", cache=False, retries=2)
    return registered
