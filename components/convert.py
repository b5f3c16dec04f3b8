"""Convert a COCO set or a class-per-folder tree into TFRecord shards (a Dataset artifact)."""

from typing import Optional

from kfp import dsl
from kfp.dsl import Dataset, Markdown, Metrics, Output

from efficientdet.kfp_components.images import COMPONENT_IMAGE


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def convert(task: str, source_uri: str, images_uri: str, kfp_run_id: str, kfp_task: str,
            dataset: Output[Dataset], metrics: Output[Metrics], report: Output[Markdown],
            num_shards: Optional[int] = None, work_uri: Optional[str] = None,
            mlflow_experiment: Optional[str] = None):
    """Detection: source_uri is the COCO annotations JSON and images_uri the image folder;
    classification: source_uri is the class-per-folder root."""
    from efficientdet.orchestration import pipeline_steps, runs

    with runs.step_context(kfp_run_id, kfp_task, experiment=mlflow_experiment):
        out = pipeline_steps.output_dir(work_uri, kfp_run_id, kfp_task, dataset.path)
        result, md = pipeline_steps.convert(task, source_uri, images_uri, out,
                                            num_shards=num_shards)
    dataset.metadata.update({"uri": out, "task": task, "source": source_uri})
    for key, value in pipeline_steps._flat_numbers(result).items():
        metrics.log_metric(key, value)
    pipeline_steps.write_text(report.path, md)
