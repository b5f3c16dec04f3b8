"""The detection pipeline: convert (train, val) -> train -> evaluate -> export -> register."""

from efficientdet.kfp_pipelines.chain import make_pipeline
from efficientdet.kfp_pipelines.options import ClusterOptions


def build(options: ClusterOptions):
    return make_pipeline(
        options, task="detection", name="efficientdet-detection",
        description="COCO -> TFRecords -> Horovod training (MPIJob) -> COCO mAP -> "
                    "SavedModel/ONNX/TF-TRT -> MLflow registry",
        data_params=("train_annotations_uri", "train_images_uri", "val_annotations_uri",
                     "val_images_uri"),
        defaults={"recipe": "efficientdet-d0-coco", "registered_model_name": "efficientdet",
                  "metric_name": "AP", "threshold": 0.3},
        sources=lambda p, split: (p[f"{split}_annotations_uri"], p[f"{split}_images_uri"]))
