"""The COCO 2017 detection categories: 80 names on ids 1-90 with gaps, as COCO's JSON numbers
them and as models trained on it (e.g. google/automl's) emit them (class index + 1)."""

from __future__ import annotations

_UNUSED_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)
NUM_CLASSES = 90  # the class head's width: ids 1..90, the unused ones never trained


def coco_categories() -> list[dict]:
    """[{"id": 1, "name": "person"}, ...]: the 80 used ids in order."""
    ids = [i for i in range(1, NUM_CLASSES + 1) if i not in _UNUSED_IDS]
    return [{"id": i, "name": n} for i, n in zip(ids, _NAMES, strict=True)]


def coco_label_map() -> dict:
    """A detection dataset's label_map.json for COCO (what `effdet convert coco` writes)."""
    return {"task": "detection", "classes": coco_categories()}
