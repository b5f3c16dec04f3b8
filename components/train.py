"""Distributed training: an MPIJob in a cluster, `horovodrun --gloo` elsewhere (a Model artifact)."""

# kfp 2.x reads typing.Optional[X] = None as an optional input; it rejects `X | None`.

from typing import Optional

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output

from efficientdet.kfp_components.images import COMPONENT_IMAGE


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def train(task: str, recipe: str, train_data: Input[Dataset], val_data: Input[Dataset],
          launcher: str, s3_secret: str, mlflow_secret: str, cleanup: str, kfp_run_id: str,
          kfp_task: str, model: Output[Model], metrics: Output[Metrics],
          summary: Output[Markdown], model_name: Optional[str] = None,
          image_size: Optional[int] = None, steps: Optional[int] = None,
          epochs: Optional[float] = None, batch_size: Optional[int] = None,
          amp: Optional[bool] = None, xla: Optional[bool] = None,
          init_from: Optional[str] = None, workers: Optional[int] = None,
          gpus_per_worker: Optional[int] = None, train_image: Optional[str] = None,
          worker_cpu: Optional[str] = None, worker_memory: Optional[str] = None,
          node_selector: Optional[str] = None, deadline_seconds: Optional[int] = None,
          learning_rate: Optional[float] = None, ema_decay: Optional[float] = None,
          eval_interval: Optional[int] = None,
          work_uri: Optional[str] = None, mlflow_experiment: Optional[str] = None):
    """Ranks = workers x max(1, gpus_per_worker). Training settings left None keep the
    recipe's value (the recipe and the set values become one config document the ranks
    read); cluster settings left None take the cluster's defaults.
    init_from: a backbone or whole-model URI (artifact, models:/NAME@ALIAS, checkpoint)."""
    from efficientdet.orchestration import pipeline_steps, runs
    from efficientdet.orchestration.backends import backend_for
    from efficientdet.orchestration.cluster_settings import ClusterSettings
    from efficientdet.training.config import TrainOverrides
    from efficientdet.training.initialization import init_overrides

    train_uri = train_data.metadata.get("uri") or train_data.path
    val_uri = val_data.metadata.get("uri") or val_data.path
    with runs.step_context(kfp_run_id, kfp_task, experiment=mlflow_experiment):
        out = pipeline_steps.output_dir(work_uri, kfp_run_id, kfp_task, model.path)
        overrides = TrainOverrides(
            task=task, model=model_name, image_size=image_size, steps=steps, epochs=epochs,
            batch_size=batch_size, amp=amp, xla=xla, lr=learning_rate, ema_decay=ema_decay,
            eval_every=eval_interval, train_data=train_uri,
            val_data=val_uri or None, **init_overrides(init_from, task))
        args = pipeline_steps.write_train_config(recipe=recipe, overrides=overrides, output=out)
        cluster = ClusterSettings.from_env().with_step_parameters(
            workers=workers, gpus_per_worker=gpus_per_worker, train_image=train_image,
            worker_cpu=worker_cpu, worker_memory=worker_memory, node_selector=node_selector,
            s3_secret=s3_secret)
        backend = backend_for(launcher, cluster, run_id=kfp_run_id, kfp_task=kfp_task,
                              mlflow_secret=mlflow_secret, cleanup=cleanup,
                              deadline_s=deadline_seconds)
        result, md = pipeline_steps.train(args, out, backend, data_uris=(train_uri, val_uri))
    model.metadata.update({"uri": result["model_uri"], "task": task,
                           "mlflow_run_id": result.get("mlflow_run_id") or ""})
    for key, value in result.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics.log_metric(key, value)
    pipeline_steps.write_text(summary.path, md)
