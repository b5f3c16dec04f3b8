"""TF-TRT conversion of an exported SavedModel (FP32/FP16/INT8), for the NGC TensorFlow image.

pip TensorFlow has no TensorRT; conversion only works where TF was built with TensorRT and its
libraries load (nvcr.io/nvidia/tensorflow:25.02-tf2-py3 on an NVIDIA GPU). Elsewhere this fails
early with a message naming what is missing.
"""

from __future__ import annotations

import numpy as np

PRECISIONS = ("fp32", "fp16", "int8")
WHERE_IT_RUNS = ("TF-TRT export runs in the NVIDIA NGC image nvcr.io/nvidia/tensorflow:25.02-tf2-py3 "
                 "(TF 2.17 + TensorRT 10.8) on a machine with an NVIDIA GPU; use --format "
                 "saved_model or onnx elsewhere")


class TensorRTUnavailable(RuntimeError):
    """TensorRT cannot be used in this environment."""


def tensorrt_status() -> tuple[bool, str]:
    """(usable, reason) for TF-TRT in this process."""
    import tensorflow as tf

    if not tf.sysconfig.get_build_info().get("is_tensorrt_build", False):
        return False, (f"this TensorFlow {tf.__version__} was built without TensorRT "
                       f"(tf.sysconfig.get_build_info()['is_tensorrt_build'] is False)")
    try:
        from tensorflow.compiler.tf2tensorrt import _pywrap_py_utils as trt_utils
    except ImportError as exc:
        return False, f"TensorFlow's TensorRT bindings do not import ({exc})"
    if not trt_utils.is_tensorrt_enabled():
        return False, "TensorFlow reports TensorRT as disabled"
    if tuple(trt_utils.get_loaded_tensorrt_version()) == (0, 0, 0):
        return False, "the TensorRT libraries (libnvinfer) could not be loaded"
    if not tf.config.list_physical_devices("GPU"):
        return False, "no NVIDIA GPU is visible to TensorFlow"
    return True, "ok"


def require_tensorrt() -> None:
    ok, reason = tensorrt_status()
    if not ok:
        raise TensorRTUnavailable(f"TF-TRT is not available: {reason}. {WHERE_IT_RUNS}.")


def calibration_batches(data_uri: str, image_size, num_batches: int = 8, batch_size: int = 4):
    """INT8 calibration input: uint8 images from TFRecords resized to the model's input size
    (the serving graph resizes again; same-size batches feed `serving_default`)."""
    import tensorflow as tf

    from efficientdet.data.dataset import ConvertedDataset
    from efficientdet.evaluation.evaluate import _records

    h, w = image_size
    batch = []
    with ConvertedDataset.open(data_uri) as dataset:
        label_map = dataset.label_map
        task = label_map.task if label_map and label_map.task else "detection"
        for ex in _records(dataset.local_shards(), task, num_batches * batch_size):
            img = tf.image.resize(ex["image"], (h, w))
            batch.append(tf.cast(tf.round(img), tf.uint8).numpy())
            if len(batch) == batch_size:
                yield (tf.constant(np.stack(batch)),)
                batch = []
    if batch:
        yield (tf.constant(np.stack(batch)),)


def convert_tftrt(saved_model_dir: str, output_dir: str, *, precision: str = "fp16",
                  calibration_data: str | None = None, image_size=(512, 512),
                  max_batch_size: int = 8) -> str:
    """Convert `serving_default` of an exported SavedModel with TrtGraphConverterV2."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "int8" and not calibration_data:
        raise ValueError("--precision int8 needs --calibration-data URI (TFRecords)")
    require_tensorrt()
    import tensorflow as tf
    from tensorflow.python.compiler.tensorrt import trt_convert as trt

    mode = {"fp32": trt.TrtPrecisionMode.FP32, "fp16": trt.TrtPrecisionMode.FP16,
            "int8": trt.TrtPrecisionMode.INT8}[precision]
    converter = trt.TrtGraphConverterV2(
        input_saved_model_dir=str(saved_model_dir),
        input_saved_model_signature_key="serving_default",
        precision_mode=mode,
        use_calibration=precision == "int8",
        maximum_cached_engines=4,
        minimum_segment_size=3,
    )
    if precision == "int8":
        converter.convert(calibration_input_fn=lambda: calibration_batches(
            calibration_data, image_size))
    else:
        converter.convert()

    def build_inputs():
        for b in sorted({1, max_batch_size}):
            yield (tf.zeros([b, image_size[0], image_size[1], 3], tf.uint8),)

    converter.build(input_fn=build_inputs)
    converter.save(str(output_dir))
    from efficientdet.export.saved_model import write_sidecars
    from efficientdet.models.artifact import read_meta

    meta = read_meta(str(saved_model_dir))
    write_sidecars(output_dir, meta.replace(export={
        **(meta.export or {}), "format": "tf-trt", "precision": precision,
        "signatures": ["serving_default"]}))
    return str(output_dir)
