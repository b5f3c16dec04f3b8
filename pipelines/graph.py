"""The task graph both pipelines share: each split converted to TFRecords (convert-train,
convert-val), then train -> evaluate -> export (-> export-tftrt on a GPU when asked) ->
register, all inside an exit handler whose `close-run` task ends the MLflow parent run by how
the pipeline ended. The pipelines (detection.py, classification.py) are plain
`@dsl.pipeline` functions that wire their parameters into these helpers."""

from __future__ import annotations

import dataclasses
import inspect

from kfp import dsl
from kfp.dsl.python_component import PythonComponent

from efficientdet.kfp_components.close_run import close_run
from efficientdet.kfp_components.convert import convert
from efficientdet.kfp_components.evaluate import evaluate
from efficientdet.kfp_components.export import export, export_tftrt
from efficientdet.kfp_components.register import register
from efficientdet.kfp_components.train import train
from efficientdet.kfp_pipelines.options import ClusterOptions, configure, identity


def renamed(component: PythonComponent, name: str) -> PythonComponent:
    """COMPONENT under NAME. KFP names a task after its component (a second use becomes
    `convert-2`) and that task name is what kfp.local, `{{$.pipeline_task_name}}` (MPIJob and
    MLflow names) and the run graph show; a display name alone changes only the last."""
    return PythonComponent(dataclasses.replace(component.component_spec, name=name),
                           component.python_func)


def closing_parent_run(options: ClusterOptions, mlflow_experiment) -> dsl.ExitHandler:
    """`with closing_parent_run(...):` around every step: `close-run` runs after them, also
    when one failed, and ends the MLflow parent run FINISHED or FAILED (naming the step)."""
    closer = configure(
        close_run(kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, mlflow_experiment=mlflow_experiment),
        options, name="close-run", cache=False, retries=2)
    return dsl.ExitHandler(closer, name="steps")


def convert_split(options: ClusterOptions, *, task: str, split: str, source_uri,
                  images_uri, num_shards, work_uri, mlflow_experiment) -> dsl.PipelineTask:
    """The `convert-<split>` task; cached, as the same sources give the same shards."""
    return configure(
        renamed(convert, f"convert-{split}")(
            task=task, source_uri=source_uri, images_uri=images_uri, num_shards=num_shards,
            work_uri=work_uri, **identity(mlflow_experiment)),
        options, name=f"convert-{split}", resources="convert", cache=True, retries=2)


def train_to_register(options: ClusterOptions, *, task: str, train_data, val_data, recipe,
                      model_name, image_size, steps, epochs, batch_size, amp, xla, learning_rate,
                      ema_decay, eval_interval, init_from, workers, gpus_per_worker, launcher,
                      train_image, worker_cpu, worker_memory, node_selector, mpijob_cleanup,
                      deadline_seconds, eval_batch_size, export_formats, max_parity_drop,
                      registered_model_name, metric_name, threshold, alias, work_uri,
                      mlflow_experiment) -> dsl.PipelineTask:
    """Train on TRAIN_DATA, score on VAL_DATA, export with a parity check on VAL_DATA, register.
    Every other argument is the pipeline parameter of that name; returns the register task."""
    trained = configure(train(
        task=task, recipe=recipe, train_data=train_data, val_data=val_data,
        model_name=model_name, image_size=image_size, steps=steps, epochs=epochs,
        batch_size=batch_size, amp=amp, xla=xla, learning_rate=learning_rate,
        ema_decay=ema_decay, eval_interval=eval_interval, init_from=init_from, workers=workers,
        gpus_per_worker=gpus_per_worker, launcher=launcher, train_image=train_image,
        worker_cpu=worker_cpu, worker_memory=worker_memory, node_selector=node_selector,
        s3_secret=options.s3_secret or "", mlflow_secret=options.mlflow_secret or "",
        cleanup=mpijob_cleanup, deadline_seconds=deadline_seconds, work_uri=work_uri,
        **identity(mlflow_experiment)),
        options, name="train", cache=False, retries=1, controller=True)
    model = trained.outputs["model"]
    evaluated = configure(evaluate(
        model=model, val_data=val_data, batch_size=eval_batch_size, work_uri=work_uri,
        **identity(mlflow_experiment)), options, name="evaluate", cache=True, retries=1)
    exported = configure(export(
        model=model, val_data=val_data, formats=export_formats, max_ap_drop=max_parity_drop,
        work_uri=work_uri, **identity(mlflow_experiment)), options, name="export",
        cache=True, retries=1)
    with dsl.If(exported.outputs["Output"] == True,  # a KFP condition, not Python truth
                name="tf-trt-asked"):
        # no retries: a node without a GPU or TensorRT does not get one by trying again
        configure(export_tftrt(
            model=model, val_data=val_data, max_ap_drop=max_parity_drop, work_uri=work_uri,
            **identity(mlflow_experiment)),
            options, name="export-tftrt", cache=True, retries=0, gpu=True)
    return configure(register(
        model=model, exported=exported.outputs["exported"],
        eval_metrics=evaluated.outputs["metrics"], registered_model_name=registered_model_name,
        metric_name=metric_name, threshold=threshold, alias=alias, **identity(mlflow_experiment)),
        options, name="register", cache=False, retries=2)


def shared_parameters(pipeline_locals: dict) -> dict:
    """The pipeline parameters `train_to_register` takes, picked by name from the calling
    pipeline function's ``locals()`` (both pipelines declare them with the same names); one
    that is not declared fails the call as a missing argument."""
    own = {"options", "task", "train_data", "val_data"}
    names = [n for n in inspect.signature(train_to_register).parameters if n not in own]
    return {n: pipeline_locals[n] for n in names if n in pipeline_locals}
