"""Distributed training: an MPIJob in a cluster, `horovodrun --gloo` elsewhere (a Model artifact)."""

# kfp 2.x reads typing.Optional[X] = None as an optional input; it rejects `X | None`.
# ruff: noqa: UP045

from typing import Optional

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output

from components.images import COMPONENT_IMAGE


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def train(task: str, recipe: str, train_data: Input[Dataset], val_data: Input[Dataset],
          workers: int, gpus_per_worker: int, launcher: str,
          train_image: str, worker_cpu: str, worker_memory: str, node_selector: str,
          s3_secret: str, mlflow_secret: str, cleanup: str, deadline_seconds: int,
          work_uri: str, init_from: str, kfp_run_id: str, kfp_task: str, model: Output[Model],
          metrics: Output[Metrics], summary: Output[Markdown],
          model_name: Optional[str] = None, image_size: Optional[int] = None,
          steps: Optional[int] = None, epochs: Optional[float] = None,
          batch_size: Optional[int] = None, amp: Optional[bool] = None,
          xla: Optional[bool] = None):
    """Ranks = workers x max(1, gpus_per_worker). Training settings left None keep the recipe's
    value (the recipe and the set values become one config document the ranks read);
    workers=0, gpus_per_worker=-1 and "" resources take the cluster's defaults.
    init_from: a backbone or whole-model URI (artifact, models:/NAME@ALIAS, checkpoint)."""
    from efficientdet.pipeline import runs
    from efficientdet.pipeline import steps as st
    from efficientdet.training.config import TrainOverrides
    from efficientdet.training.initialization import init_overrides

    train_uri = train_data.metadata.get("uri") or train_data.path
    val_uri = val_data.metadata.get("uri") or val_data.path
    with runs.step_context(kfp_run_id, kfp_task):
        out = st.output_dir(work_uri, kfp_run_id, kfp_task, model.path)
        overrides = TrainOverrides(
            task=task, model=model_name, image_size=image_size, steps=steps, epochs=epochs,
            batch_size=batch_size, amp=amp, xla=xla, train_data=train_uri,
            val_data=val_uri or None, **init_overrides(init_from, task))
        args = st.write_train_config(recipe=recipe, overrides=overrides, output=out)
        backend = st.make_backend(launcher, workers=workers, gpus_per_worker=gpus_per_worker,
                                  image=train_image, run_id=kfp_run_id, task=kfp_task,
                                  cpu=worker_cpu, memory=worker_memory, node_selector=node_selector,
                                  s3_secret=s3_secret, mlflow_secret=mlflow_secret,
                                  cleanup=cleanup, deadline_s=deadline_seconds)
        result, md = st.train(args, out, backend, data_uris=(train_uri, val_uri))
    model.metadata.update({"uri": result["model_uri"], "task": task,
                           "mlflow_run_id": result.get("mlflow_run_id") or ""})
    for key, value in result.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics.log_metric(key, value)
    st.write_text(summary.path, md)
