"""The classification pipeline: convert (train, val folders) -> train -> evaluate -> export ->
register."""


from efficientdet.kfp_pipelines.chain import make_pipeline
from efficientdet.kfp_pipelines.options import ClusterOptions


def build(options: ClusterOptions):
    return make_pipeline(
        options, task="classification", name="efficientnet-classification",
        description="class folders -> TFRecords -> Horovod training (MPIJob) -> "
                    "top-1/top-5 -> SavedModel/ONNX/TF-TRT -> MLflow registry",
        data_params=("train_root_uri", "val_root_uri"),
        defaults={"recipe": "efficientnet-b0-imagenet", "registered_model_name": "efficientnet",
                  "metric_name": "top1", "threshold": 0.7},
        sources=lambda p, split: (p[f"{split}_root_uri"], ""))
