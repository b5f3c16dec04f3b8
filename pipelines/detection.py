"""The detection pipeline: convert (train, val) -> train -> evaluate -> export -> register."""

from kfp import dsl

from components.convert import convert
from pipelines.chain import train_to_register
from pipelines.options import ClusterOptions, configure, identity


def build(options: ClusterOptions):
    @dsl.pipeline(name="efficientdet-detection",
                  description="COCO -> TFRecords -> Horovod training (MPIJob) -> COCO mAP -> "
                              "SavedModel/ONNX/TF-TRT -> MLflow registry")
    def detection_pipeline(
        train_annotations_uri: str,
        train_images_uri: str,
        val_annotations_uri: str,
        val_images_uri: str,
        recipe: str = "efficientdet-d0-coco",
        model_name: str = "",
        image_size: int = 0,
        steps: int = 0,
        epochs: float = 0.0,
        batch_size: int = 0,
        workers: int = 0,
        gpus_per_worker: int = -1,
        amp: bool = True,
        xla: bool = False,
        launcher: str = "auto",
        train_image: str = "",
        worker_cpu: str = "",
        worker_memory: str = "",
        node_selector: str = "",
        mpijob_cleanup: str = "delete-on-success",
        deadline_seconds: int = 0,
        num_shards: int = 0,
        eval_batch_size: int = 0,
        export_formats: str = "saved_model,onnx",
        max_parity_drop: float = 0.01,
        registered_model_name: str = "efficientdet",
        metric_name: str = "AP",
        threshold: float = 0.3,
        alias: str = "champion",
        work_uri: str = "",
    ):
        p = dict(locals())
        train_ds = configure(convert(task="detection", source_uri=train_annotations_uri,
                                     images_uri=train_images_uri, num_shards=num_shards,
                                     work_uri=work_uri, **identity()),
                             options, name="convert-train", cache=True, retries=2)
        val_ds = configure(convert(task="detection", source_uri=val_annotations_uri,
                                   images_uri=val_images_uri, num_shards=num_shards,
                                   work_uri=work_uri, **identity()),
                           options, name="convert-val", cache=True, retries=2)
        train_to_register(options, task="detection", train_ds=train_ds.outputs["dataset"],
                          val_ds=val_ds.outputs["dataset"], p=p)

    return detection_pipeline
