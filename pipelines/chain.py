"""The steps after conversion, shared by both pipelines: train -> evaluate -> export -> register."""

from __future__ import annotations

from components.evaluate import evaluate
from components.export import export
from components.register import register
from components.train import train
from pipelines.options import ClusterOptions, configure, identity


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
        deadline_seconds=p["deadline_seconds"], work_uri=p["work_uri"], **identity()),
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
