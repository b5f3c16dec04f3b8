"""The classification pipeline: class folders (train, val) -> TFRecords -> train -> evaluate ->
export -> register. `build(options)` returns it with the cluster options fixed at compile time."""

from typing import Optional

from kfp import dsl

from efficientdet.kfp_pipelines.graph import (
    closing_parent_run,
    convert_split,
    shared_parameters,
    train_to_register,
)
from efficientdet.kfp_pipelines.options import ClusterOptions


def build(options: ClusterOptions):
    """The `efficientnet-classification` pipeline, its steps configured by OPTIONS."""

    @dsl.pipeline(name="efficientnet-classification",
                  description="class folders -> TFRecords -> Horovod training (MPIJob) -> "
                              "top-1/top-5 -> SavedModel/ONNX/TF-TRT -> MLflow registry")
    def classification_pipeline(
        train_root_uri: str,
        val_root_uri: str,
        recipe: str = "efficientnet-b0-imagenet",
        model_name: Optional[str] = None,
        image_size: Optional[int] = None,
        steps: Optional[int] = None,
        epochs: Optional[float] = None,
        batch_size: Optional[int] = None,
        amp: Optional[bool] = None,
        xla: Optional[bool] = None,
        learning_rate: Optional[float] = None,
        ema_decay: Optional[float] = None,
        eval_interval: Optional[int] = None,
        init_from: Optional[str] = None,
        workers: Optional[int] = None,
        gpus_per_worker: Optional[int] = None,
        launcher: str = "auto",
        train_image: Optional[str] = None,
        worker_cpu: Optional[str] = None,
        worker_memory: Optional[str] = None,
        node_selector: Optional[str] = None,
        mpijob_cleanup: str = "delete-on-success",
        deadline_seconds: Optional[int] = None,
        num_shards: Optional[int] = None,
        eval_batch_size: Optional[int] = None,
        export_formats: str = "saved_model,onnx",
        max_parity_drop: float = 0.01,
        registered_model_name: str = "efficientnet",
        metric_name: str = "top1",
        threshold: float = 0.7,
        alias: str = "champion",
        work_uri: Optional[str] = None,
        mlflow_experiment: Optional[str] = None,
    ):
        """Train EfficientNet on class-per-folder images and register it when it scores well
        enough.

        Optional settings left empty keep the recipe's value (training) or the cluster's
        default (resources, from the effdet-pipeline-env ConfigMap).

        Args:
            train_root_uri: Training split: one sub-folder of images per class (s3:// or path).
            val_root_uri: Validation split, with the same class folders.
            recipe: Training recipe: a name in efficientdet/configs or a YAML URI.
            model_name: Model to train, e.g. efficientnet-b1; empty keeps the recipe's.
            image_size: Square input size in pixels; empty keeps the recipe's.
            steps: Training steps; takes precedence over epochs.
            epochs: Training epochs, used when steps is empty.
            batch_size: Global batch size; empty keeps the recipe's.
            amp: Mixed precision (float16); empty keeps the recipe's.
            xla: XLA compilation of the training step; empty keeps the recipe's.
            learning_rate: Peak learning rate per the recipe's reference batch (scaled with
                the batch size); empty keeps the recipe's.
            ema_decay: Decay of the weights' moving average, in [0, 1), 0 turns EMA off; empty
                keeps the recipe's.
            eval_interval: Evaluate on the validation split every this many training steps and
                at the end (validation loss and top-1 as MLflow metrics; the best weights kept
                in best/); 0 turns it off; empty keeps the recipe's.
            init_from: Backbone or model to start from: URI, models:/NAME@ALIAS, checkpoint.
            workers: MPIJob workers (pods); empty takes the cluster's default.
            gpus_per_worker: GPUs per worker, 0 for CPU ranks; empty takes the cluster's default.
            launcher: Where ranks run: auto (MPIJob in a cluster), mpijob or local.
            train_image: Image of the MPIJob's ranks; empty takes EFFDET_TRAIN_IMAGE.
            worker_cpu: CPU request of each worker, e.g. 8; empty takes the cluster's default.
            worker_memory: Memory of each worker, e.g. 32Gi; empty takes the cluster's default.
            node_selector: Worker node selector, key=value[,key=value].
            mpijob_cleanup: The finished MPIJob: delete, keep or delete-on-success.
            deadline_seconds: Training deadline (activeDeadlineSeconds); empty means none.
            num_shards: TFRecord shards per split; empty sizes them from the data.
            eval_batch_size: Evaluation batch size; empty means 8.
            export_formats: Comma-separated subset of saved_model, onnx, tf-trt.
            max_parity_drop: Largest top-1 drop an export may show against the trained model.
            registered_model_name: MLflow registered model to add the version to.
            metric_name: Evaluation metric the alias depends on (top1, top5).
            threshold: Lowest metric value that moves the alias to the new version.
            alias: MLflow alias set on a version that passes the threshold.
            work_uri: s3:// prefix for data and models (MPIJob ranks run in other pods).
            mlflow_experiment: MLflow experiment of the run's parent and step runs; empty takes
                the cluster's MLFLOW_EXPERIMENT_NAME, else efficientdet.
        """
        with closing_parent_run(options, mlflow_experiment):
            data = {split: convert_split(options, task="classification", split=split,
                                         source_uri=root, images_uri="", num_shards=num_shards,
                                         work_uri=work_uri,
                                         mlflow_experiment=mlflow_experiment).outputs["dataset"]
                    for split, root in (("train", train_root_uri), ("val", val_root_uri))}
            train_to_register(options, task="classification", train_data=data["train"],
                              val_data=data["val"], **shared_parameters(locals()))

    return classification_pipeline
