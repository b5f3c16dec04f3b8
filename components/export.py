"""Export the model (SavedModel with pre/post-processing, ONNX; TF-TRT as its own GPU step)
with a parity check."""

from typing import Optional

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output

from efficientdet.kfp_components.images import COMPONENT_IMAGE, TRAIN_IMAGE


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def export(model: Input[Model], val_data: Input[Dataset], formats: str, max_ap_drop: float,
           kfp_run_id: str, kfp_task: str, exported: Output[Model], metrics: Output[Metrics],
           summary: Output[Markdown], work_uri: Optional[str] = None,
           mlflow_experiment: Optional[str] = None) -> bool:
    """formats: comma-separated subset of saved_model,onnx,tf-trt. Makes the CPU formats (the
    SavedModel when only tf-trt is asked); each export is scored against the source model on
    val_data and an AP (top-1) drop above max_ap_drop fails. Returns whether tf-trt was asked:
    the export-tftrt step (GPU, training image) then makes it."""
    from efficientdet.orchestration import pipeline_steps, runs

    cpu_formats, tftrt = pipeline_steps.split_formats(formats)
    with runs.step_context(kfp_run_id, kfp_task, experiment=mlflow_experiment):
        out = pipeline_steps.output_dir(work_uri, kfp_run_id, kfp_task, exported.path)
        result, md = pipeline_steps.export(
            model.metadata.get("uri") or model.path, out, formats=cpu_formats,
            data_uri=val_data.metadata.get("uri") or val_data.path, max_ap_drop=max_ap_drop)
    exported.metadata.update({"uri": out, "formats": cpu_formats})
    for key, value in result.items():
        metrics.log_metric(key, value)
    pipeline_steps.write_text(summary.path, md)
    return tftrt


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def export_tftrt(model: Input[Model], val_data: Input[Dataset], max_ap_drop: float,
                 kfp_run_id: str, kfp_task: str, exported: Output[Model],
                 metrics: Output[Metrics], summary: Output[Markdown],
                 work_uri: Optional[str] = None, mlflow_experiment: Optional[str] = None):
    """The TF-TRT export with its parity check, on a GPU with the training image (TensorRT);
    fails at once, naming what is missing, where no GPU or TensorRT is visible."""
    from efficientdet.orchestration import pipeline_steps, runs

    with runs.step_context(kfp_run_id, kfp_task, experiment=mlflow_experiment):
        out = pipeline_steps.output_dir(work_uri, kfp_run_id, kfp_task, exported.path)
        result, md = pipeline_steps.export(
            model.metadata.get("uri") or model.path, out, formats="tf-trt",
            data_uri=val_data.metadata.get("uri") or val_data.path, max_ap_drop=max_ap_drop)
    exported.metadata.update({"uri": out, "formats": "tf-trt"})
    for key, value in result.items():
        metrics.log_metric(key, value)
    pipeline_steps.write_text(summary.path, md)
