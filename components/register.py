"""Register the model in the MLflow registry; alias it only when the metric passes."""

# kfp 2.x reads typing.Optional[X] = None as an optional input; it rejects `X | None`.

from typing import Optional

from kfp import dsl
from kfp.dsl import Input, Markdown, Metrics, Model, Output

from efficientdet.kfp_components.images import COMPONENT_IMAGE


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def register(model: Input[Model], exported: Input[Model], eval_metrics: Input[Metrics],
             registered_model_name: str, metric_name: str, threshold: float, alias: str,
             kfp_run_id: str, kfp_task: str, report: Output[Markdown],
             mlflow_experiment: Optional[str] = None) -> str:
    """Returns the alias set, or "" when the metric is below the threshold."""
    from efficientdet.orchestration import pipeline_steps, runs

    if metric_name not in eval_metrics.metadata:
        raise ValueError(f"metric {metric_name!r} not among the evaluation's metrics "
                         f"{sorted(eval_metrics.metadata)}")
    with runs.step_context(kfp_run_id, kfp_task, experiment=mlflow_experiment):
        result, md = pipeline_steps.register(
            model.metadata.get("uri") or model.path, name=registered_model_name,
            metric_name=metric_name, metric_value=float(eval_metrics.metadata[metric_name]),
            threshold=threshold, alias=alias,
            extra_dirs={"exported": exported.metadata.get("uri") or exported.path})
    pipeline_steps.write_text(report.path, md)
    return result["alias"] or ""
