"""Evaluate the trained model: COCO mAP (detection) or top-1/top-5 (classification)."""

from typing import Optional

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Markdown, Metrics, Model, Output

from efficientdet.kfp_components.images import COMPONENT_IMAGE


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def evaluate(model: Input[Model], val_data: Input[Dataset], kfp_run_id: str, kfp_task: str,
             metrics: Output[Metrics], report: Output[HTML], summary: Output[Markdown],
             batch_size: Optional[int] = None, work_uri: Optional[str] = None,
             mlflow_experiment: Optional[str] = None):
    """Scalars land in `metrics` (the UI's compare view) and in the step's MLflow run."""
    from efficientdet.orchestration import pipeline_steps, runs

    with runs.step_context(kfp_run_id, kfp_task, experiment=mlflow_experiment):
        out = pipeline_steps.output_dir(work_uri, kfp_run_id, kfp_task, report.path + ".d")
        result, md, html = pipeline_steps.evaluate(model.metadata.get("uri") or model.path,
                                          val_data.metadata.get("uri") or val_data.path, out,
                                          batch_size=batch_size)
    for key, value in result.items():
        metrics.log_metric(key, value)
    pipeline_steps.write_text(report.path, html)
    pipeline_steps.write_text(summary.path, md)
