"""Data: TFRecord schema, robust image decoding, converters (COCO, ImageNet folders), synthetic
sets, conversion reports and the tf.data input pipelines.

Submodules are imported explicitly (`from efficientdet.data import schema`) so that light users
(converter workers, the CLI's --help) do not pull in TensorFlow.
"""
