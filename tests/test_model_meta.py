"""ModelMeta and LabelMap: round trips, the older forms on disk, and errors naming the input."""

from __future__ import annotations

import pytest

from efficientdet.data.label_map import LabelMap, LabelMapError
from efficientdet.models.model_meta import ModelMeta, ModelMetaError

CLASSES = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}]


def current() -> dict:
    return {"task": "detection", "model": "efficientdet-d0", "num_classes": 90,
            "image_size": 512, "label_map": {"task": "detection", "classes": CLASSES},
            "overrides": {"sync_bn": True}, "training": {"final_step": 3},
            "postprocess": {"nms": "soft"}, "format_version": 1}


def test_round_trip_keeps_every_field_and_unknown_keys():
    meta = ModelMeta.from_dict({**current(), "written_by": "a newer version"})
    assert meta.label_map.names == {1: "person", 3: "car"}
    assert meta.postprocess == {"nms": "soft"} and meta.is_detector
    assert meta.input_hw == (512, 512)
    out = meta.to_dict()
    assert out == {**current(), "written_by": "a newer version"}
    assert ModelMeta.from_dict(out) == meta
    assert meta.model_config().name == "efficientdet-d0"  # sync_bn is not a config field


@pytest.mark.parametrize("label_map", [
    CLASSES,  # the bare class list
    {"3": "car", "1": "person"},  # {id: name}, JSON string keys
    {"classes": CLASSES},  # no task
])
def test_older_label_map_forms_read_as_one(label_map):
    meta = ModelMeta.from_dict({**current(), "label_map": label_map})
    assert meta.label_map == LabelMap(((1, "person"), (3, "car")), "detection")
    assert meta.to_dict()["label_map"] == {"task": "detection", "classes": CLASSES}


def test_older_export_with_input_size_only():
    old = {k: v for k, v in current().items() if k != "image_size"}
    meta = ModelMeta.from_dict({**old, "input_size": [384, 384], "export": {"format": "onnx"}})
    assert meta.image_size == 384 and meta.export == {"format": "onnx"}
    assert "input_size" not in meta.to_dict()
    with pytest.raises(ModelMetaError, match="input_size must be \\[n, n\\]"):
        ModelMeta.from_dict({**old, "input_size": [384, 512]})


def test_export_label_map_is_always_complete():
    meta = ModelMeta("classification", "efficientnet-b0", 2, 224)
    assert meta.export_label_map == {"task": "classification", "classes": []}
    assert meta.class_names == {}
    assert "postprocess" not in meta.to_dict() and meta.to_dict()["label_map"] is None


@pytest.mark.parametrize(("change", "message"), [
    ({"num_classes": None}, "/m: model.json lacks num_classes"),
    ({"task": "segmentation"}, "task must be detection or classification"),
    ({"num_classes": "90"}, "num_classes must be a positive integer"),
    ({"image_size": True}, "image_size must be a positive integer"),
    ({"overrides": ["x"]}, "overrides must be an object"),
    ({"label_map": [{"name": "a"}]}, "/m label_map: class {'name': 'a'} has no \"id\""),
    ({"label_map": "coco"}, "not a label map"),
])
def test_bad_fields_are_named(change, message):
    with pytest.raises(ModelMetaError, match=message):
        ModelMeta.from_dict({**current(), **change}, where="/m")


def test_label_map_rules():
    assert LabelMap.from_json(CLASSES).num_classes("classification") == 2
    assert LabelMap.from_json(CLASSES).num_classes("detection") == 3
    with pytest.raises(LabelMapError, match="x: detection class ids must be integers >= 1"):
        LabelMap.from_json([{"id": 0}]).num_classes("detection", where="x")
    with pytest.raises(LabelMapError, match="lists no classes"):
        LabelMap.from_json({"classes": []}).num_classes("detection")
    with pytest.raises(LabelMapError, match="class ids repeat"):
        LabelMap.from_json([{"id": 1}, {"id": "1"}])
    with pytest.raises(LabelMapError, match="class id 'one' is not an integer"):
        LabelMap.from_json({"one": "a"})
