"""Unit tests of the training pieces (config, schedule, EMA, dllogger, throughput, Horovod
detection) and the small synthetic TFRecord sets the training tests share."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# --- shared helpers: tiny converted datasets (TFRecords + label_map.json) --------------------

def write_detection_set(out: Path, *, images: int = 16, classes: int = 3, image_size: int = 128,
                        shards: int = 2, seed: int = 0) -> Path:
    """A converted detection dataset directory made from the synthetic shapes generator."""
    import tensorflow as tf

    from efficientdet.data.schema import detection_example
    from efficientdet.data.synthetic import categories, make_detection_image

    out.mkdir(parents=True, exist_ok=True)
    cats = categories(classes)
    names = {c["id"]: c["name"] for c in cats}
    writers = [tf.io.TFRecordWriter(str(out / f"data-{i:05d}-of-{shards:05d}.tfrecord"))
               for i in range(shards)]
    for i in range(images):
        data, width, height, objects = make_detection_image(seed, i, classes, image_size)
        boxes, ids, areas = [], [], []
        for obj in objects:
            x, y, w, h = obj["bbox"]
            boxes.append([y / height, x / width, (y + h) / height, (x + w) / width])
            ids.append(obj["category_id"])
            areas.append(obj["area"])
        ex = detection_example(encoded=data, height=height, width=width, image_id=i + 1,
                               filename=f"{i:06d}.jpg", boxes=boxes, category_ids=ids,
                               category_names=[names[c].encode() for c in ids],
                               is_crowd=[0] * len(ids), areas=areas)
        writers[i % shards].write(ex.SerializeToString())
    for w in writers:
        w.close()
    (out / "label_map.json").write_text(json.dumps({"task": "detection", "classes": cats}))
    (out / "report.json").write_text("{}")  # marks a complete dataset
    return out


def write_classification_set(out: Path, *, per_class: int = 8, classes: int = 3,
                             image_size: int = 48) -> Path:
    import tensorflow as tf
    from PIL import Image

    from efficientdet.data.schema import classification_example

    rng = np.random.default_rng(0)
    out.mkdir(parents=True, exist_ok=True)
    colours = [(220, 40, 40), (40, 200, 60), (40, 80, 220), (230, 200, 30)]
    with tf.io.TFRecordWriter(str(out / "data-00000-of-00001.tfrecord")) as w:
        for c in range(classes):
            for i in range(per_class):
                arr = (rng.uniform(0, 60, (image_size, image_size, 3))
                       + np.array(colours[c]) * 0.7).clip(0, 255).astype(np.uint8)
                buf = io.BytesIO()
                Image.fromarray(arr).save(buf, format="JPEG")
                ex = classification_example(encoded=buf.getvalue(), height=image_size,
                                            width=image_size, filename=f"{c}_{i}.jpg",
                                            label=c, text=f"class{c}")
                w.write(ex.SerializeToString())
    (out / "label_map.json").write_text(json.dumps(
        {"task": "classification", "classes": [{"id": c, "name": f"class{c}"}
                                               for c in range(classes)]}))
    (out / "report.json").write_text("{}")
    return out


# --- config --------------------------------------------------------------------------------

from efficientdet.training import config as cfg


def test_defaults_overrides_and_types():
    c = cfg.build_config({"data": {"train": "d"}},
                         ["train.steps=5", "optimizer.lr=0.2", "precision.amp=true",
                          "model_overrides.drop_connect_rate=0.1", "checkpoint.dir=null"])
    assert isinstance(c, cfg.TrainConfig)
    assert c.train.steps == 5 and c.optimizer.lr == 0.2
    assert c.precision.amp is True and c.checkpoint.dir is None
    assert c.model_overrides == {"drop_connect_rate": 0.1}
    assert c.optimizer.momentum == 0.9  # untouched default


def test_exponent_floats_without_a_dot_are_numbers(tmp_path):
    """YAML 1.1 reads 4e-5 as a string; a weight decay written that way must still work."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: {train: d}\noptimizer: {weight_decay: 5e-5}\n")
    c = cfg.load_config(str(recipe), ["optimizer.lr=8E-2", "output=1e5x"])
    assert c.optimizer.weight_decay == 5e-5 and c.optimizer.lr == 0.08
    assert c.output == "1e5x"


@pytest.mark.parametrize("user,overrides,needle", [
    ({"data": {"train": "d"}, "optimiser": {}}, [], "'optimiser'"),
    ({"data": {"train": "d"}}, ["train.stepz=3"], "'train.stepz'"),
    ({"data": {"train": "d"}}, ["train.steps=many"], "'train.steps'"),
    ({"data": {"train": "d"}}, ["precision.amp=1"], "'precision.amp'"),
    ({"data": {"train": "d"}}, ["task=segmentation"], "'task'"),
    ({"data": {"train": "d"}}, ["data.batch_size=0"], "'data.batch_size'"),
    ({"data": {"train": "d"}}, ["nonsense"], "key=value"),
    ({}, [], "'data.train'"),
    ({"data": {"train": "d"}}, ["optimizer.lr=-0.1"], "'optimizer.lr': input should be greater"),
    ({"data": {"train": "d"}}, ["optimizer.lr=.nan"], "'optimizer.lr': input should be a finite"),
    ({"data": {"train": "d"}}, ["train.epochs=0"], "'train.epochs': input should be greater"),
    ({"data": {"train": "d"}}, ["image_size=0"], "'image_size'"),
    ({"data": {"train": "d"}}, ["image_size=-512"], "'image_size'"),
    ({"data": {"train": "d"}}, ["num_classes=0"], "'num_classes'"),
    ({"data": {"train": "d"}}, ["optimizer.momentum=1.5"], "'optimizer.momentum'"),
    ({"data": {"train": "d"}}, ["optimizer.warmup_start_factor=2"], "warmup_start_factor"),
    ({"data": {"train": "d"}}, ["train.steps=1.0"], "'train.steps'"),
    ({"data": {"train": "d"}}, ["checkpoint.keep=true"], "'checkpoint.keep'"),
])
def test_bad_config_names_the_key(user, overrides, needle):
    with pytest.raises(cfg.ConfigError, match=needle.replace(".", r"\.")):
        cfg.build_config(user, overrides)


def test_bundled_configs_load_by_name():
    names = cfg.bundled_configs()
    for required in ("efficientdet-d0-coco", "efficientnet-b0-imagenet", "synth-detection",
                     "synth-classification"):
        assert required in names
    for name in names:
        c = cfg.load_config(name)
        assert c.task in cfg.TASKS
    d0 = cfg.load_config("efficientdet-d0-coco", ["data.batch_size=16"])
    assert d0.optimizer.lr == 0.08 and d0.optimizer.reference_batch == 64
    assert d0.optimizer.ema_decay == 0.9998 and d0.optimizer.clip_norm == 10.0
    assert d0.optimizer.weight_decay == 4e-5 and d0.train.epochs == 300
    assert d0.data.batch_size == 16
    with pytest.raises(cfg.ConfigError, match="no-such-recipe"):
        cfg.load_config("no-such-recipe")


def test_config_file_error_names_file(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("data: {train: x}\ntrain: {log_evry: 3}\n")
    with pytest.raises(cfg.ConfigError, match=r"r\.yaml.*'train\.log_evry'"):
        cfg.load_config(str(p))


def test_flatten():
    assert cfg.flatten({"a": {"b": 1, "c": {"d": None}}, "e": {}}) == {
        "a.b": 1, "a.c.d": None, "e": {}}


def test_config_round_trips_through_dict_and_yaml_document(tmp_path):
    c = cfg.load_config("efficientdet-d0-coco", ["data.randaugment={num_layers: 2}"])
    assert cfg.TrainConfig.from_dict(c.to_dict()) == c
    uri = cfg.write_config(c, str(tmp_path / "run" / "train-config.yaml"))
    assert cfg.load_config(uri) == c  # exponent floats (4e-5) and nulls survive the document
    flat = c.flatten()
    assert flat["optimizer.weight_decay"] == 4e-5 and flat["precision.xla"] is True
    assert flat["data.randaugment.num_layers"] == 2 and flat["model_overrides"] == {}


def test_config_document_loads_from_storage_uri(monkeypatch):
    documents = {}
    monkeypatch.setattr(cfg.storage, "write_text", lambda uri, text: documents.update({uri: text}))
    monkeypatch.setattr(cfg.storage, "read_text", lambda uri: documents[uri])
    c = cfg.load_config("synth-detection", ["train.steps=7"])
    cfg.write_config(c, "s3://bucket/run/train-config.yaml")
    assert cfg.load_config("s3://bucket/run/train-config.yaml").train.steps == 7


def test_overrides_none_keeps_the_recipe():
    d0 = cfg.load_config("efficientdet-d0-coco")
    kept = cfg.apply_overrides(d0, cfg.TrainOverrides())
    assert kept == d0 and kept.precision.xla is True and kept.precision.amp is True
    off = cfg.apply_overrides(d0, cfg.TrainOverrides(xla=False, amp=False))
    assert off.precision == cfg.PrecisionConfig(amp=False, xla=False)
    changed = cfg.apply_overrides(d0, cfg.TrainOverrides(
        model="efficientdet-d1", image_size=640, batch_size=4, lr=0.01, ema_decay=0.0,
        train_data="s3://b/train", val_data="s3://b/val", output="s3://b/out", task="detection"))
    assert (changed.model, changed.image_size, changed.data.batch_size) == (
        "efficientdet-d1", 640, 4)
    assert (changed.optimizer.lr, changed.optimizer.ema_decay) == (0.01, 0.0)
    assert (changed.data.train, changed.data.val, changed.output) == (
        "s3://b/train", "s3://b/val", "s3://b/out")
    assert changed.train == d0.train and changed.init == d0.init


def test_overrides_epochs_replace_steps_and_init_model_drops_backbone():
    synth = cfg.load_config("synth-detection")
    assert synth.train.steps == 600
    by_epochs = cfg.apply_overrides(synth, cfg.TrainOverrides(epochs=3))
    assert by_epochs.train.steps is None and by_epochs.train.epochs == 3
    by_steps = cfg.apply_overrides(synth, cfg.TrainOverrides(epochs=3, steps=9))
    assert by_steps.train.steps == 9
    d0 = cfg.load_config("efficientdet-d0-coco")
    whole = cfg.apply_overrides(d0, cfg.TrainOverrides(init_model="m"))
    assert whole.init.model == "m" and whole.init.backbone is None


def test_bad_override_value_names_the_config_key():
    synth = cfg.load_config("synth-detection")
    with pytest.raises(cfg.ConfigError, match=r"'train\.steps'"):
        cfg.apply_overrides(synth, cfg.TrainOverrides(steps=0))
    with pytest.raises(cfg.ConfigError, match=r"'precision\.xla'"):
        cfg.apply_overrides(synth, cfg.TrainOverrides(xla="yes"))


def test_evaluation_interval_needs_a_validation_set():
    synth = cfg.load_config("synth-detection")
    assert synth.evaluation.every_steps is None  # bundled recipes: off
    with pytest.raises(cfg.ConfigError, match=r"'evaluation\.every_steps' is 50 but "
                                              r"'data\.val' is not set"):
        cfg.apply_overrides(synth, cfg.TrainOverrides(eval_every=50))
    on = cfg.apply_overrides(synth, cfg.TrainOverrides(eval_every=50, val_data="s3://b/val"))
    assert (on.evaluation.every_steps, on.data.val) == (50, "s3://b/val")
    assert cfg.apply_overrides(on, cfg.TrainOverrides(eval_every=0)).evaluation.every_steps == 0
    assert cfg.apply_overrides(synth, cfg.TrainOverrides(eval_every=0)).data.val is None
    with pytest.raises(cfg.ConfigError, match=r"'evaluation\.every_steps'"):
        cfg.apply_overrides(on, cfg.TrainOverrides(eval_every=-1))
    with pytest.raises(cfg.ConfigError, match=r"'evaluation\.max_images'"):
        cfg.load_config("synth-detection", ["evaluation.max_images=0"])


def test_config_is_immutable():
    c = cfg.load_config("synth-detection")
    with pytest.raises(AttributeError):
        c.precision.xla = True


# --- schedule ------------------------------------------------------------------------------

def test_lr_scaling_and_warmup_cosine():
    from efficientdet.training.schedules import WarmupCosine, scaled_lr, warmup_cosine

    assert scaled_lr(0.08, 512, 64) == pytest.approx(0.64)
    kw = {"peak_lr": 0.64, "total_steps": 100, "warmup_steps": 10, "warmup_start_factor": 0.1}
    assert warmup_cosine(0, **kw) == pytest.approx(0.064)
    assert warmup_cosine(5, **kw) == pytest.approx(0.064 + 0.5 * (0.64 - 0.064))
    assert warmup_cosine(10, **kw) == pytest.approx(0.64)
    assert warmup_cosine(55, **kw) == pytest.approx(0.32)
    assert warmup_cosine(100, **kw) == pytest.approx(0.0, abs=1e-9)
    sched = WarmupCosine(**kw)
    for step in (0, 3, 10, 37, 99, 100, 150):
        assert float(sched(step)) == pytest.approx(warmup_cosine(min(step, 100), **kw),
                                                   rel=1e-5, abs=1e-7)
    no_warmup = WarmupCosine(1.0, 10, 0)
    assert float(no_warmup(0)) == pytest.approx(1.0)


def test_automl_cosine_counts_its_phase_from_step_0():
    """google/automl's CosineLrSchedule: 0.5 * peak * (1 + cos(pi * step / (total - warmup)))
    after warm-up, so it is below the peak when warm-up ends, 0 at total - warmup, then rises."""
    import math

    from efficientdet.training.schedules import WarmupCosine, warmup_cosine

    kw = {"peak_lr": 0.08, "total_steps": 400, "warmup_steps": 50, "warmup_start_factor": 0.1,
          "decay": "automl_cosine"}
    assert warmup_cosine(49, **kw) == pytest.approx(0.008 + 0.072 * 49 / 50)
    assert warmup_cosine(50, **kw) == pytest.approx(0.04 * (1 + math.cos(math.pi * 50 / 350)))
    assert warmup_cosine(350, **kw) == pytest.approx(0.0, abs=1e-9)
    assert warmup_cosine(399, **kw) > warmup_cosine(350, **kw)
    sched = WarmupCosine(**kw)
    for step in (0, 49, 50, 200, 350, 399):
        assert float(sched(step)) == pytest.approx(warmup_cosine(step, **kw), rel=1e-5, abs=1e-7)
    with pytest.raises(ValueError, match="lr decay"):
        WarmupCosine(0.1, 10, 1, decay="step")


# --- EMA -----------------------------------------------------------------------------------

def test_ema_warmup_update_and_swap():
    import tensorflow as tf

    from efficientdet.training.ema import ExponentialMovingAverage, ema_decay

    assert ema_decay(0.9998, 0) == pytest.approx(0.1)
    assert ema_decay(0.9998, 10**7) == 0.9998
    v = tf.Variable([0.0, 10.0])
    ema = ExponentialMovingAverage([v], decay=0.9)
    expected = np.array([0.0, 10.0])
    for n, new in enumerate([[1.0, 0.0], [2.0, 4.0], [3.0, 3.0]]):
        v.assign(new)
        ema.update()
        d = min(0.9, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * np.array(new)
    np.testing.assert_allclose(ema.shadows[0].numpy(), expected, rtol=1e-6)
    assert int(ema.num_updates.numpy()) == 3
    with ema.swapped():
        np.testing.assert_allclose(v.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(v.numpy(), [3.0, 3.0])
    v.assign([7.0, 8.0])
    ema.restart()  # train.frozen_bn_fraction's switch: average again from here
    np.testing.assert_allclose(ema.shadows[0].numpy(), [7.0, 8.0])
    assert int(ema.num_updates.numpy()) == 0


# --- dllogger, throughput, horovod detection -------------------------------------------------

def test_dllogger_lines(tmp_path):
    from efficientdet.training.dllogger import DLLogger, parse_line

    buf = io.StringIO()
    dl = DLLogger(tmp_path / "dl.json", buf)
    dl.parameters({"lr": 0.1})
    dl.log(7, {"loss": np.float32(1.5), "bad": float("nan")})
    dl.log([], {"images_per_second": 3.0})
    dl.close()
    lines = buf.getvalue().splitlines()
    assert lines == (tmp_path / "dl.json").read_text().splitlines()
    assert all(line.startswith("DLLL {") for line in lines)
    recs = [parse_line(line) for line in lines]
    assert recs[0]["step"] == "PARAMETER" and recs[0]["data"] == {"lr": 0.1}
    assert recs[1]["type"] == "LOG" and recs[1]["step"] == 7
    assert recs[1]["data"]["loss"] == 1.5 and recs[1]["data"]["bad"] == "nan"
    for key in ("timestamp", "datetime", "elapsedtime"):
        assert key in recs[2]
    assert parse_line("step 3 loss 2") is None


def test_dllogger_writes_only_its_file_unless_given_a_stream(tmp_path, capsys):
    from efficientdet.training.dllogger import DLLogger, parse_line

    dl = DLLogger(tmp_path / "dl.json")
    dl.log(1, {"loss": 2.0})
    dl.close()
    assert capsys.readouterr().out == ""
    assert parse_line((tmp_path / "dl.json").read_text())["data"] == {"loss": 2.0}


def test_throughput_excludes_warmup(monkeypatch):
    from efficientdet.training import throughput

    clock = iter([0.0, 0.0, 100.0, 101.0, 102.0, 103.0])  # init, steps 1..5
    monkeypatch.setattr(throughput.time, "perf_counter", lambda: next(clock))
    m = throughput.ThroughputMeter(batch_size=4, world_size=2, warmup_steps=2)
    for _ in range(5):
        m.step()
    s = m.summary()
    assert s["timed_steps"] == 3
    assert s["images_per_second_per_rank"] == pytest.approx(3 * 4 / 3.0)
    assert s["images_per_second"] == pytest.approx(2 * 3 * 4 / 3.0)


def test_throughput_leaves_a_retraced_step_out(monkeypatch):
    """A step that traced its function again (train.frozen_bn_fraction's switch) counts
    neither its time nor its images."""
    from efficientdet.training import throughput

    clock = iter([0.0, 0.0, 100.0, 101.0, 131.0, 132.0])  # init, steps 1..5; step 4 retraces
    monkeypatch.setattr(throughput.time, "perf_counter", lambda: next(clock))
    m = throughput.ThroughputMeter(batch_size=4, world_size=1, warmup_steps=2)
    for step in range(1, 6):
        m.step(warmup=step == 4)
    s = m.summary()
    assert s["timed_steps"] == 2
    assert s["images_per_second_per_rank"] == pytest.approx(2 * 4 / 2.0)


def test_throughput_leaves_evaluation_time_out(monkeypatch):
    from efficientdet.training import throughput

    # init, steps 1 (warm-up) and 2 (timing starts), a 50 s evaluation, steps 3 and 4, window
    clock = iter([0.0, 10.0, 20.0, 71.0, 72.0, 72.0])
    monkeypatch.setattr(throughput.time, "perf_counter", lambda: next(clock))
    m = throughput.ThroughputMeter(batch_size=4, warmup_steps=2)
    m.step()
    m.step()
    m.exclude(50.0)
    m.step()
    m.step()
    assert m.window() == pytest.approx(4 * 4 / (72.0 - 50.0))
    m.exclude(70.0)  # an evaluation after the last step: the timed span had ended
    assert m.summary()["timed_seconds"] == pytest.approx(2.0)
    assert m.summary()["images_per_second"] == pytest.approx(2 * 4 / 2.0)


def test_horovod_launch_detection():
    from efficientdet.training.distributed import Context, launched_by_horovod

    assert launched_by_horovod({"HOROVOD_RANK": "1"})
    assert launched_by_horovod({"OMPI_COMM_WORLD_RANK": "0"})
    assert not launched_by_horovod({"PATH": "/bin"})
    ctx = Context()
    grads, extra = ctx.allreduce_grads([1, None], extra=[1.0])
    assert grads == [1, None] and extra == [1.0] and ctx.is_chief and not ctx.distributed


def test_checkpoints_on_s3_keep_last_and_resume(s3_bucket, tmp_path):
    import tensorflow as tf

    from efficientdet import storage
    from efficientdet.training.checkpoints import CheckpointStore

    uri = f"s3://{s3_bucket}/runs/a/checkpoints"
    v = tf.Variable([1.0, 2.0])
    step = tf.Variable(0, dtype=tf.int64)
    store = CheckpointStore(tf.train.Checkpoint(v=v, step=step), uri, keep=2,
                            cache_dir=str(tmp_path / "c1"))
    assert store.restore_latest() is None
    for s in (1, 2, 3):
        step.assign(s)
        v.assign([float(s), 0.0])
        store.save(s)
    names = {storage.basename(u) for u in storage.list_files(uri)}
    assert "checkpoint" in names
    assert {n.split(".")[0] for n in names if n.startswith("ckpt-")} == {"ckpt-2", "ckpt-3"}
    # a new process (fresh cache) resumes from the newest remote checkpoint
    v2, step2 = tf.Variable([0.0, 0.0]), tf.Variable(0, dtype=tf.int64)
    store2 = CheckpointStore(tf.train.Checkpoint(v=v2, step=step2), uri, keep=2,
                             cache_dir=str(tmp_path / "c2"))
    assert store2.restore_latest().endswith("ckpt-3")
    assert int(step2.numpy()) == 3 and v2.numpy().tolist() == [3.0, 0.0]


def test_model_overrides_and_image_size_are_checked_against_the_model(tmp_path):
    from efficientdet.training.tasks import get_task

    data = tmp_path / "d"
    data.mkdir()
    (data / "label_map.json").write_text(json.dumps({"classes": [{"id": 1, "name": "a"}]}))
    base = {"data": {"train": str(data)}, "model": "efficientdet-d0"}
    with pytest.raises(cfg.ConfigError, match="'model_overrides.dropout_rat'.*drop_connect_rate"):
        get_task("detection").resolve(cfg.build_config({**base, "model_overrides": {
            "dropout_rat": 0.1}}))
    with pytest.raises(cfg.ConfigError, match="'image_size': 300 is not a multiple of 128"):
        get_task("detection").resolve(cfg.build_config({**base, "image_size": 300}))
    resolved, label_map = get_task("detection").resolve(cfg.build_config(base))
    assert resolved.num_classes == 1 and resolved.image_size == 512
    assert label_map == {"classes": [{"id": 1, "name": "a"}]}


def test_label_map_errors_are_not_reported_as_missing(tmp_path, monkeypatch):
    from efficientdet.training.tasks import get_task

    config = cfg.build_config({"data": {"train": str(tmp_path)}, "model": "efficientdet-d0"})
    with pytest.raises(cfg.ConfigError, match="num_classes is not set.*has no label_map.json"):
        get_task("detection").resolve(config)  # really missing
    (tmp_path / "label_map.json").write_text("{not json")
    with pytest.raises(cfg.ConfigError,
                       match="'data.train': .*label_map.json: not a valid label map"):
        get_task("detection").resolve(config)
    # storage down: a one-line storage error naming the URI, not "has no label_map.json"
    from efficientdet import storage

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    with pytest.raises(storage.StorageError, match="s3://bucket/set/label_map.json"):
        get_task("detection").resolve(cfg.build_config({"data": {"train": "s3://bucket/set"},
                                                        "model": "efficientdet-d0"}))


def _keras_checkpoint(units: int):
    import keras
    import tensorflow as tf

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(units, name="class_head")])
    step = tf.Variable(0, dtype=tf.int64)
    return model, step, tf.train.Checkpoint(model=model, step=step)


def test_checkpoint_fallback_stale_temp_and_shape_mismatch(tmp_path, caplog):
    from efficientdet.training.checkpoints import CheckpointMismatch, CheckpointStore

    _, step, ckpt = _keras_checkpoint(3)
    store = CheckpointStore(ckpt, str(tmp_path), keep=3, meta={"num_classes": 3})
    for s in (1, 2):
        step.assign(s)
        store.save(s)
    (tmp_path / "ckpt-3_temp").mkdir()  # a save killed midway
    (tmp_path / "ckpt-3_temp" / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"x")
    newest = tmp_path / "ckpt-2.data-00000-of-00001"
    newest.write_bytes(newest.read_bytes()[:10])  # truncated
    _, step2, ckpt2 = _keras_checkpoint(3)
    store2 = CheckpointStore(ckpt2, str(tmp_path), keep=3, meta={"num_classes": 3})
    with caplog.at_level("WARNING"):
        assert store2.restore_latest().endswith("ckpt-1")
    assert int(step2.numpy()) == 1
    assert "ckpt-2 is unreadable" in caplog.text
    assert not (tmp_path / "ckpt-3_temp").exists()
    # another number of classes: named, with the variable and both shapes
    _, _, ckpt3 = _keras_checkpoint(5)
    store3 = CheckpointStore(ckpt3, str(tmp_path), keep=3, meta={"num_classes": 5})
    with pytest.raises(CheckpointMismatch, match=r"class_head.*\(4, 3\).*\(4, 5\).*"
                                                 r"num_classes 3 -> 5"):
        store3.restore_latest()


DETERMINISTIC_SETTINGS = """
import json
import tensorflow as tf
tf.function(lambda x: x + 1)(tf.ones([2]))  # a function called before: its options are cached
from efficientdet.training.trainer import use_deterministic_mode
use_deterministic_mode()
from tensorflow.core.protobuf import config_pb2
from tensorflow.python.eager import context
from tensorflow.python.framework import config
call = config_pb2.ConfigProto.FromString(context.context().function_call_options.config_proto_serialized)
print(json.dumps({
    "determinism": config.is_op_determinism_enabled(),
    "memory_optimization": call.graph_options.rewrite_options.memory_optimization,
    "soft_placement": call.allow_soft_placement,
}))
"""


def test_deterministic_mode_settings_reach_every_function_call():
    """data.deterministic in a fresh process: deterministic kernels, and grappler's memory
    optimizer off in the options each tf.function call carries (its AddN rewrite sums the
    shared heads' gradients in arrival order: runs parted after ~90 steps)."""
    from tensorflow.core.protobuf import rewriter_config_pb2

    proc = subprocess.run([sys.executable, "-c", DETERMINISTIC_SETTINGS], capture_output=True,
                          text=True, timeout=300, check=False,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    settings = json.loads(proc.stdout.strip().splitlines()[-1])
    assert settings == {"determinism": True,
                        "memory_optimization": rewriter_config_pb2.RewriterConfig.NO_MEM_OPT,
                        "soft_placement": True}


def test_frozen_bn_step_is_the_start_of_the_last_fraction():
    from efficientdet.training.trainer import frozen_bn_step

    assert frozen_bn_step(800, 0.2) == 640
    assert frozen_bn_step(10, 0.01) == 9  # at least the last step
    assert frozen_bn_step(800, 0.0) is None
    assert frozen_bn_step(2, 0.5) == 1 and frozen_bn_step(1, 0.5) is None  # never from step 0
    with pytest.raises(cfg.ConfigError, match="frozen_bn_fraction"):
        cfg.build_config({"train": {"frozen_bn_fraction": 1.0}})
