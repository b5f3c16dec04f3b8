"""The served model as one TensorFlow module: uint8 images in, dataset answers out.

`Detector` wraps a pure EfficientDet: aspect-preserving resize + mean-colour pad to the model's
input size, the model, post-processing (NMS), boxes scaled back to ORIGINAL-image pixels and class
indices turned into the dataset's category ids (index + 1). `Classifier` wraps an EfficientNet
the same way (resize + pad, softmax). The same graph serves evaluation, predict, the exported
SavedModel and the ONNX file, so all of them agree by construction.
"""

from __future__ import annotations

import tensorflow as tf

from efficientdet.data.augment import pad_with_mean

DETECTION_OUTPUTS = ("boxes", "scores", "category_ids", "num_detections")


def image_hw(image_size) -> tuple[int, int]:
    if isinstance(image_size, (list, tuple)):
        return int(image_size[0]), int(image_size[1])
    return int(image_size), int(image_size)


def resize_and_pad(images: tf.Tensor, image_size) -> tuple[tf.Tensor, tf.Tensor]:
    """uint8/float images [N, H, W, 3] (one size) -> float32 [N, S_h, S_w, 3] in [0, 255] and the
    scale [N] that maps original pixels to input pixels (aspect kept, padded bottom/right with
    the mean colour, exactly as in training and evaluation). Images already of the input size
    are only cast: resizing to the same size is an identity, and skipping it saves ~3 ms of a
    D0 batch-1 call."""
    out_h, out_w = image_hw(image_size)
    shape = tf.shape(images)
    h = tf.cast(shape[1], tf.float32)
    w = tf.cast(shape[2], tf.float32)
    scale = tf.minimum(out_h / h, out_w / w)

    def fit():
        new_h = tf.minimum(tf.cast(tf.round(h * scale), tf.int32), out_h)
        new_w = tf.minimum(tf.cast(tf.round(w * scale), tf.int32), out_w)
        resized = tf.image.resize(tf.cast(images, tf.float32), tf.stack([new_h, new_w]),
                                  method="bilinear")
        return pad_with_mean(resized, out_h, out_w)

    same_size = tf.logical_and(tf.equal(shape[1], out_h), tf.equal(shape[2], out_w))
    padded = tf.cond(same_size, lambda: tf.cast(images, tf.float32), fit)
    return tf.reshape(padded, [-1, out_h, out_w, 3]), tf.fill([shape[0]], scale)


def decode_and_pad(encoded: tf.Tensor, image_size) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Encoded images string [N] (any sizes) -> padded float [N, S, S, 3], scales [N] and
    original sizes [N, 2] (height, width)."""
    out_h, out_w = image_hw(image_size)

    def one(data):
        image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
        padded, scale = resize_and_pad(image[None], (out_h, out_w))
        return padded[0], scale[0], tf.shape(image)[:2]

    return tf.map_fn(one, encoded, fn_output_signature=(
        tf.TensorSpec([out_h, out_w, 3], tf.float32), tf.TensorSpec([], tf.float32),
        tf.TensorSpec([2], tf.int32)))


def network(model, image_size, *, frozen: bool = False):
    """The model's inference call, images [B, S_h, S_w, 3] float32 -> its outputs.

    FROZEN bakes the current weights into the graph as constants: grappler then folds batch
    norm into the convolutions and oneDNN reorders each filter once instead of per call (D0 at
    batch 1: ~0.75x the time). For serving and one-off evaluation only: later weight changes
    are not seen. The caller must not keep the model tracked beside it, or a SavedModel stores
    every weight twice."""
    if not frozen:
        return lambda images: model(images, training=False)
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    from efficientdet.console import native_stderr_quiet

    h, w = image_hw(image_size)
    traced = tf.function(lambda images: model(images, training=False)).get_concrete_function(
        tf.TensorSpec([None, h, w, 3], tf.float32))
    structure = traced.structured_outputs
    with native_stderr_quiet():
        constant = convert_variables_to_constants_v2(traced)
    return lambda images: tf.nest.pack_sequence_as(structure, constant(images))


class Detector(tf.Module):
    """EfficientDet with pre/post-processing; outputs carry original pixels and category ids.
    `frozen`: the network's weights become graph constants (see `network`)."""

    def __init__(self, model, *, image_size, num_classes: int, anchors, nms: str = "hard",
                 max_detections: int = 100, score_threshold: float = 0.001,
                 iou_threshold: float = 0.5, pre_nms_topk: int = 5000,
                 soft_nms_sigma: float = 0.25, frozen: bool = False, name: str = "detector",
                 **nms_extra):
        super().__init__(name=name)
        from efficientdet.detection.postprocess import METHODS

        if nms not in METHODS:
            raise ValueError(f"nms must be one of {', '.join(METHODS)}, got {nms!r}")
        if not frozen:
            self.model = model  # tracked: a SavedModel keeps the variables
        self.network = network(model, image_size, frozen=frozen)
        self.image_size = image_hw(image_size)
        self.num_classes = int(num_classes)
        self.nms = nms
        self.max_detections = int(max_detections)
        self.anchors = anchors  # detection.anchors.Anchors: boxes clipped to the input image
        self.nms_options = {"method": nms, "max_detections": int(max_detections),
                            "score_threshold": float(score_threshold),
                            "iou_threshold": float(iou_threshold),
                            "pre_nms_topk": int(pre_nms_topk),
                            "soft_nms_sigma": float(soft_nms_sigma),
                            **nms_extra}  # candidates, clip_before_nms, ... (postprocess())

    def detect_padded(self, images: tf.Tensor, scales: tf.Tensor, sizes: tf.Tensor) -> dict:
        """Model input batch [B, S, S, 3] float, scales [B], original (h, w) [B, 2] -> outputs."""
        from efficientdet.detection.anchors import flatten_outputs
        from efficientdet.detection.postprocess import postprocess

        outputs = self.network(images)
        cls_flat, box_flat = flatten_outputs(outputs, self.num_classes)
        boxes, scores, classes, num = postprocess(cls_flat, box_flat, self.anchors,
                                                  image_scales=scales, image_sizes=sizes,
                                                  **self.nms_options)
        valid = tf.range(tf.shape(scores)[1])[None, :] < num[:, None]
        return {
            "boxes": boxes,
            "scores": tf.where(valid, scores, 0.0),
            "category_ids": tf.where(valid, classes + 1, 0),
            "num_detections": num,
        }

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def serve_images(self, images):
        padded, scales = resize_and_pad(images, self.image_size)
        shape = tf.shape(images)
        sizes = tf.tile(shape[1:3][None], [shape[0], 1])
        return self.detect_padded(padded, scales, sizes)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve_bytes(self, image_bytes):
        padded, scales, sizes = decode_and_pad(image_bytes, self.image_size)
        return self.detect_padded(padded, scales, sizes)


class Classifier(tf.Module):
    """EfficientNet with resize + pad and softmax: probabilities [N, K] and the top-k.
    `frozen` as for `Detector`."""

    def __init__(self, model, *, image_size, top_k: int = 5, frozen: bool = False,
                 name: str = "classifier"):
        super().__init__(name=name)
        if not frozen:
            self.model = model
        self.network = network(model, image_size, frozen=frozen)
        self.image_size = image_hw(image_size)
        self.top_k = int(top_k)

    def classify_padded(self, images: tf.Tensor) -> dict:
        logits = tf.cast(self.network(images), tf.float32)
        probs = tf.nn.softmax(logits, axis=-1)
        k = tf.minimum(self.top_k, tf.shape(probs)[-1])
        top = tf.math.top_k(probs, k=k)
        return {"probabilities": probs, "top_scores": top.values,
                "top_classes": tf.cast(top.indices, tf.int32)}

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def serve_images(self, images):
        padded, _ = resize_and_pad(images, self.image_size)
        return self.classify_padded(padded)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve_bytes(self, image_bytes):
        padded, _, _ = decode_and_pad(image_bytes, self.image_size)
        return self.classify_padded(padded)
