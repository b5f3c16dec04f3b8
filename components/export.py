"""Export the model (SavedModel with pre/post-processing, ONNX, TF-TRT) with a parity check."""

from typing import Optional

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output

from efficientdet.kfp_components.images import COMPONENT_IMAGE


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def export(model: Input[Model], val_data: Input[Dataset], formats: str, max_ap_drop: float,
           kfp_run_id: str, kfp_task: str, exported: Output[Model], metrics: Output[Metrics],
           summary: Output[Markdown], work_uri: Optional[str] = None,
           mlflow_experiment: Optional[str] = None):
    """formats: comma-separated subset of saved_model,onnx,tf-trt. Each export is scored
    against the source model on val_data; an AP (top-1) drop above max_ap_drop fails."""
    from efficientdet.orchestration import pipeline_steps, runs

    with runs.step_context(kfp_run_id, kfp_task, experiment=mlflow_experiment):
        out = pipeline_steps.output_dir(work_uri, kfp_run_id, kfp_task, exported.path)
        result, md = pipeline_steps.export(
            model.metadata.get("uri") or model.path, out, formats=formats,
            data_uri=val_data.metadata.get("uri") or val_data.path, max_ap_drop=max_ap_drop)
    exported.metadata.update({"uri": out, "formats": formats})
    for key, value in result.items():
        metrics.log_metric(key, value)
    pipeline_steps.write_text(summary.path, md)
