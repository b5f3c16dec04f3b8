"""SavedModel export: a fresh process with plain TensorFlow gets the in-memory detections;
bytes signature; parity check through the CLI; TF-TRT's message where TensorRT is missing.

The detector here is a tiny Keras model with the pure detector's output contract (per-level
class/box maps for P3-P7, 9 anchors), so export runs in seconds; anchors, post-processing,
the serving graph and the CLI are the real ones. The other export/predict/benchmark tests
import these helpers.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from efficientdet.cli import main

NUM_CLASSES = 3
IMAGE_SIZE = 128
LABEL_MAP = {"task": "detection", "classes": [{"id": 1, "name": "circle"},
                                                {"id": 2, "name": "square"},
                                                {"id": 3, "name": "triangle"}]}


def tiny_detector(seed: int = 0):
    """float32 [B, 128, 128, 3] in [0, 255] -> {"class_outputs", "box_outputs"} for P3-P7."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    x = keras.layers.Rescaling(1 / 127.5, -1.0)(inputs)
    for _ in range(3):
        x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)
    levels = []
    for level in range(3, 8):
        if level > 3:
            x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)
        levels.append(x)
    init = keras.initializers.RandomNormal(stddev=0.3, seed=seed)
    cls = [keras.layers.Conv2D(9 * NUM_CLASSES, 3, padding="same", kernel_initializer=init,
                               bias_initializer=keras.initializers.Constant(-1.0))(f)
           for f in levels]
    box = [keras.layers.Conv2D(36, 3, padding="same", kernel_initializer=init)(f)
           for f in levels]
    return keras.Model(inputs, {"class_outputs": cls, "box_outputs": box})


def assert_same_detections(got, expected):
    """The same detections up to float rounding: a fresh process with plain TensorFlow runs
    Eigen's kernels on an AVX2 CPU where the project turns oneDNN's on (efficientdet._compat),
    and the served graph has its weights folded as constants."""
    for key in ("category_ids", "num_detections"):
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    np.testing.assert_allclose(got["boxes"], expected["boxes"], atol=1e-3, err_msg="boxes")
    np.testing.assert_allclose(got["scores"], expected["scores"], atol=1e-5, err_msg="scores")


def tiny_meta():
    from efficientdet.models.model_meta import ModelMeta

    return ModelMeta.from_dict({"task": "detection", "model": "efficientdet-d0",
                                "num_classes": NUM_CLASSES, "image_size": IMAGE_SIZE,
                                "label_map": LABEL_MAP["classes"]})


def sample_images(n: int = 4, seed: int = 0) -> list[np.ndarray]:
    """Smooth random images (different sizes) with a bright rectangle each."""
    rng = np.random.RandomState(seed)
    out = []
    for i in range(n):
        h, w = int(rng.randint(80, 200)), int(rng.randint(80, 200))
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([(yy * 255 / h), (xx * 255 / w), np.full((h, w), 60.0 * i)], -1)
        y0, x0 = rng.randint(0, h // 2), rng.randint(0, w // 2)
        img[y0:y0 + h // 3, x0:x0 + w // 3] = 250
        out.append(img.astype(np.uint8))
    return out


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def write_dataset(directory, images: list[np.ndarray], seed: int = 0) -> str:
    """A converted detection dataset dir: one PNG-in-TFRecord shard + label_map.json."""
    import tensorflow as tf

    from efficientdet.data.schema import detection_example

    rng = np.random.RandomState(seed)
    directory.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(directory / "data-00000-of-00001.tfrecord")) as w:
        for i, img in enumerate(images):
            m = 2
            y0, x0 = rng.uniform(0, 0.5, m), rng.uniform(0, 0.5, m)
            boxes = np.stack([y0, x0, y0 + 0.4, x0 + 0.4], 1)
            cats = [int(c) for c in rng.randint(1, NUM_CLASSES + 1, m)]
            ex = detection_example(encoded=png_bytes(img), height=img.shape[0],
                                   width=img.shape[1], image_id=100 + i, filename=f"{i}.png",
                                   boxes=boxes, category_ids=cats,
                                   category_names=[str(c) for c in cats], is_crowd=[0] * m,
                                   areas=[0.0] * m, image_format="png")
            w.write(ex.SerializeToString())
    (directory / "label_map.json").write_text(json.dumps(LABEL_MAP))
    (directory / "report.json").write_text("{}")  # marks a complete dataset
    return str(directory)


@pytest.fixture
def tiny_artifact(monkeypatch, tmp_path):
    """Make `load_artifact` return the tiny model (any URI); tmp_path/artifact holds the
    model.json a runner looks for."""
    model = tiny_detector()
    (tmp_path / "artifact").mkdir()
    (tmp_path / "artifact" / "model.json").write_text(json.dumps(tiny_meta().to_dict()))
    monkeypatch.setattr("efficientdet.models.artifact.load_artifact",
                        lambda uri, cache_dir=None: (model, tiny_meta()))
    return model


FRESH_PROCESS = textwrap.dedent("""
    import sys, json
    import numpy as np
    import tensorflow as tf
    assert "efficientdet" not in sys.modules
    images = np.load(sys.argv[2])
    loaded = tf.saved_model.load(sys.argv[1])
    out = loaded.signatures["serving_default"](images=tf.constant(images))
    np.savez(sys.argv[3], **{k: v.numpy() for k, v in out.items()})
    raw = [open(p, "rb").read() for p in sys.argv[4:]]
    out = loaded.signatures["serving_bytes"](image_bytes=tf.constant(raw))
    np.savez(sys.argv[3] + ".bytes.npz", **{k: v.numpy() for k, v in out.items()})
    assert "efficientdet" not in sys.modules
""")


@pytest.mark.slow
def test_saved_model_in_fresh_process_matches_in_memory(tmp_path, tiny_artifact):
    from efficientdet.inference.runners import ModuleRunner, served_module

    data = write_dataset(tmp_path / "data", sample_images(4))
    out = tmp_path / "export"
    assert main(["export", "--model", str(tmp_path / "artifact"), "--output", str(out),
                 "--format", "saved_model", "--data", data, "--json"]) == 0
    report = json.loads((out / "export_report.json").read_text())
    assert report["parity"]["drop"] == 0.0 and report["parity"]["passed"]
    assert json.loads((out / "label_map.json").read_text()) == LABEL_MAP
    exported = json.loads((out / "model.json").read_text())
    assert {k: v for k, v in exported.items() if k != "export"} == tiny_meta().to_dict()
    assert exported["export"]["format"] == "saved_model"

    # same-size batch for serving_default; mixed sizes (PNG files) for serving_bytes
    batch = np.stack([im[:80, :80] for im in sample_images(3, seed=1)])
    np.save(tmp_path / "batch.npy", batch)
    mixed = sample_images(3, seed=2)
    files = []
    for i, im in enumerate(mixed):
        (tmp_path / f"m{i}.png").write_bytes(png_bytes(im))
        files.append(str(tmp_path / f"m{i}.png"))
    env = {"TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "-1", "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(out), str(tmp_path / "batch.npy"),
                    str(tmp_path / "fresh.npz"), *files], check=True, env=env, cwd=tmp_path,
                   timeout=300)
    fresh = np.load(tmp_path / "fresh.npz")
    fresh_bytes = np.load(tmp_path / "fresh.npz.bytes.npz")

    runner = ModuleRunner(served_module(tiny_artifact, tiny_meta()), tiny_meta())
    expected = runner.run_batch(batch)
    assert expected["num_detections"].min() > 0
    assert_same_detections(fresh, expected)
    # boxes are in original pixels: inside the 80x80 image, not the 128x128 input
    assert fresh["boxes"][..., 0::2].max() <= 80 and fresh["boxes"][..., 1::2].max() <= 80
    assert set(np.unique(fresh["category_ids"])) <= {0, 1, 2, 3}
    for i, result in enumerate(runner.predict(mixed)):
        n = int(fresh_bytes["num_detections"][i])
        assert n == len(result["scores"])
        np.testing.assert_allclose(fresh_bytes["boxes"][i, :n], result["boxes"], atol=1e-3)
        np.testing.assert_array_equal(fresh_bytes["category_ids"][i, :n], result["category_ids"])


def test_frozen_serving_module_matches_the_live_model_and_stores_weights_once(tmp_path,
                                                                            tiny_artifact):
    """predict, evaluate and export serve the weights as graph constants (faster, see
    `detector.network`): the detections of the live model, and no variable left to save twice."""
    from efficientdet.inference.runners import ModuleRunner, served_module

    live = ModuleRunner(served_module(tiny_artifact, tiny_meta()), tiny_meta())
    module = served_module(tiny_artifact, tiny_meta(), frozen=True)
    frozen = ModuleRunner(module, tiny_meta())
    batch = np.stack([im[:80, :80] for im in sample_images(3, seed=5)])
    expected, got = live.run_batch(batch), frozen.run_batch(batch)
    assert expected["num_detections"].min() > 0
    assert_same_detections(got, expected)

    from efficientdet.export.saved_model import save_module

    save_module(module, tmp_path / "frozen")
    weight_bytes = sum(w.numpy().nbytes for w in tiny_artifact.weights)
    beside = sum(p.stat().st_size for p in (tmp_path / "frozen").rglob("variables.data*"))
    assert beside < weight_bytes / 10  # the weights live in the graph, not a second time beside it
    assert (tmp_path / "frozen" / "saved_model.pb").stat().st_size > weight_bytes


def test_parity_failure_exits_nonzero(tmp_path, tiny_artifact, monkeypatch, capsys):
    """An export whose AP drops more than --max-ap-drop fails the command."""
    from efficientdet.export import parity

    data = write_dataset(tmp_path / "data", sample_images(2))
    real = parity.evaluate_runner
    calls = []

    def worse_second(runner, data_uri, **kw):  # the exported model loses 0.05 AP
        res = real(runner, data_uri, **kw)
        calls.append(1)
        if len(calls) == 2:
            res["result"]["metrics"]["AP"] -= 0.05
        return res

    monkeypatch.setattr(parity, "evaluate_runner", worse_second)
    code = main(["export", "--model", "x", "--output", str(tmp_path / "e"), "--data", data])
    assert code == 1
    assert "parity check failed" in capsys.readouterr().err


def test_tftrt_without_tensorrt_says_what_is_missing_and_where_it_runs(tmp_path, capsys):
    from efficientdet.export.tftrt import tensorrt_status

    ok, _ = tensorrt_status()
    assert not ok  # CPU TensorFlow from PyPI
    code = main(["export", "--model", str(tmp_path), "--output", str(tmp_path / "o"),
                 "--format", "tf-trt", "--precision", "fp16"])
    err = capsys.readouterr().err
    assert code == 1
    assert "built without TensorRT" in err
    assert "nvcr.io/nvidia/tensorflow:25.02-tf2-py3" in err and "GPU" in err


def test_bad_option_combinations_are_usage_errors(tmp_path, capsys):
    assert main(["export", "--model", str(tmp_path), "--output", str(tmp_path / "o"),
                 "--format", "onnx", "--nms", "soft"]) == 2
    assert "needs --nms hard" in capsys.readouterr().err
    assert main(["export", "--model", str(tmp_path), "--output", str(tmp_path / "o"),
                 "--precision", "fp16"]) == 2
    assert "applies to --format tf-trt only" in capsys.readouterr().err


@pytest.mark.slow
def test_real_d0_artifact_export_matches_in_fresh_process(tmp_path):
    """The real EfficientDet-D0 (128 px, 3 classes, head weights set so scores spread) through
    save_artifact -> `effdet export` -> plain TensorFlow in a fresh process."""
    from efficientdet.inference.runners import load_runner
    from efficientdet.models import build_model
    from efficientdet.models.artifact import save_artifact

    model = build_model("efficientdet-d0", NUM_CLASSES, IMAGE_SIZE)
    rng = np.random.RandomState(0)
    for v in model.trainable_variables:  # spread the class/box head outputs
        if "class" in v.path or "box" in v.path:
            v.assign(v.numpy() + rng.normal(0, 0.05, v.shape).astype("float32"))
    meta = tiny_meta()  # already efficientdet-d0
    save_artifact(model, meta, str(tmp_path / "artifact"))
    out = tmp_path / "export"
    assert main(["export", "--model", str(tmp_path / "artifact"), "--output", str(out)]) == 0

    batch = np.stack([im[:80, :80] for im in sample_images(2, seed=4)])
    np.save(tmp_path / "batch.npy", batch)
    (tmp_path / "a.png").write_bytes(png_bytes(batch[0]))
    env = {"TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "-1", "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(out), str(tmp_path / "batch.npy"),
                    str(tmp_path / "fresh.npz"), str(tmp_path / "a.png")], check=True, env=env,
                   cwd=tmp_path, timeout=300)
    fresh = np.load(tmp_path / "fresh.npz")
    expected = load_runner(str(tmp_path / "artifact"), nms="hard").run_batch(batch)
    assert expected["num_detections"].min() > 0
    assert_same_detections(fresh, expected)
