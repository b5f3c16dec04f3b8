"""EfficientDet and EfficientNet on Kubernetes: data, training, evaluation, export, pipelines."""

from efficientdet import _compat  # noqa: F401  (must run before TensorFlow is imported)

__version__ = "0.1.0"
