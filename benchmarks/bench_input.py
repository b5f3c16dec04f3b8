"""Input-pipeline throughput: images/s that `data.pipelines` delivers on this machine.

Default: EfficientDet-D0 training input (512 px, batch 8: decode, flip, scale jitter, crop, pad,
anchor targets) from a synthetic COCO-like TFRecord set (640 px images, 1-4 objects) written to a
temporary directory; or point --data at existing shards. Also measures evaluation mode and,
with --task classification, the EfficientNet input (random resized crop [+ RandAugment]).

    .venv/bin/python benchmarks/bench_input.py [--data 'DIR/*.tfrecord'] [--batches 40]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import efficientdet  # noqa: F401  (its protobuf shim must precede TensorFlow)


def _write_detection_set(directory: Path, images: int, image_size: int, shards: int) -> str:
    import numpy as np
    import tensorflow as tf

    from efficientdet.data import schema, synthetic

    writers = [
        tf.io.TFRecordWriter(str(directory / f"data-{s:05d}-of-{shards:05d}.tfrecord"))
        for s in range(shards)
    ]
    for i in range(images):
        encoded, width, height, objects = synthetic.make_detection_image(0, i, 4, image_size)
        boxes = [
            [
                o["bbox"][1] / height,
                o["bbox"][0] / width,
                (o["bbox"][1] + o["bbox"][3]) / height,
                (o["bbox"][0] + o["bbox"][2]) / width,
            ]
            for o in objects
        ]
        example = schema.detection_example(
            encoded=encoded,
            height=height,
            width=width,
            image_id=i + 1,
            filename=f"{i:06d}.jpg",
            boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
            category_ids=[o["category_id"] for o in objects],
            category_names=[synthetic.SHAPES[o["category_id"] - 1][0] for o in objects],
            is_crowd=[0] * len(objects),
            areas=[o["area"] for o in objects],
        )
        writers[i % shards].write(example.SerializeToString())
    for w in writers:
        w.close()
    return str(directory / "*.tfrecord")


def _write_classification_set(directory: Path, images: int, image_size: int, shards: int) -> str:
    import numpy as np
    import tensorflow as tf

    from efficientdet.data import schema

    rng = np.random.default_rng(0)
    writers = [
        tf.io.TFRecordWriter(str(directory / f"cls-{s:05d}-of-{shards:05d}.tfrecord"))
        for s in range(shards)
    ]
    for i in range(images):
        height, width = image_size, int(image_size * rng.uniform(0.75, 1.33))
        pixels = np.clip(rng.normal(120, 50, (height // 8, width // 8, 3)), 0, 255).astype(np.uint8)
        pixels = np.repeat(np.repeat(pixels, 8, axis=0), 8, axis=1)
        encoded = tf.io.encode_jpeg(tf.constant(pixels), quality=90).numpy()
        example = schema.classification_example(
            encoded=encoded,
            height=pixels.shape[0],
            width=pixels.shape[1],
            filename=f"{i}.jpg",
            label=i % 10,
            text=str(i % 10),
        )
        writers[i % shards].write(example.SerializeToString())
    for w in writers:
        w.close()
    return str(directory / "cls-*.tfrecord")


def _measure(ds, batches: int, warmup: int) -> tuple[float, float, int]:
    """(images/s wall clock, images per CPU-second of this process, images) over `batches`
    batches after `warmup` batches. The CPU figure does not depend on other load on the machine:
    on an idle machine wall-clock throughput approaches it times the number of cores."""
    it = iter(ds)
    for _ in range(warmup):
        next(it)
    count = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(batches):
        images, _ = next(it)
        count += int(images.shape[0])
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return count / wall, count / cpu, count


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=["detection", "classification"], default="detection")
    p.add_argument("--data", help="TFRecord glob/dir (default: synthetic set in a temp dir)")
    p.add_argument(
        "--model", default=None, help="model config (default efficientdet-d0 / efficientnet-b0)"
    )
    p.add_argument("--image-size", type=int, default=None, help="input size (default: the model's)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--batches", type=int, default=40, help="timed batches per mode")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--images", type=int, default=128, help="synthetic images to write")
    p.add_argument("--source-size", type=int, default=640, help="long side of synthetic images")
    p.add_argument(
        "--randaugment", default=None, help="classification: 'layers,magnitude', e.g. 2,9"
    )
    p.add_argument("--skip-eval", action="store_true")
    p.add_argument(
        "--train-steps",
        type=int,
        default=0,
        help="also time this many plain training steps (forward, loss, backward, SGD) of the "
        "model on the pipeline's batches, for comparison (detection only)",
    )
    args = p.parse_args(argv)

    import tensorflow as tf

    from efficientdet.data import inputs
    from efficientdet.data.dataset import ConvertedDataset
    from efficientdet.models import get_config

    detection = args.task == "detection"
    model = args.model or ("efficientdet-d0" if detection else "efficientnet-b0")
    cfg = get_config(model)
    image_size = args.image_size or cfg.image_size
    with tempfile.TemporaryDirectory(prefix="bench-input-") as tmp:
        pattern = args.data
        if pattern is None:
            start = time.perf_counter()
            writer = _write_detection_set if detection else _write_classification_set
            pattern = writer(Path(tmp), args.images, args.source_size, shards=8)
            print(
                f"wrote {args.images} synthetic images ({args.source_size} px) to {tmp} "
                f"in {time.perf_counter() - start:.1f} s"
            )
        with ConvertedDataset.open(pattern) as source:
            records = source.num_examples
        print(
            f"data: {pattern} ({records} records); model {model}, input {image_size} px, "
            f"batch {args.batch_size}; TF {tf.__version__}, {os.cpu_count()} CPUs"
        )
        modes = [True] if args.skip_eval else [True, False]
        for is_training in modes:
            if detection:
                ds = inputs.detection_dataset(
                    pattern,
                    model_config=cfg,
                    image_size=image_size,
                    is_training=is_training,
                    batch_size=args.batch_size,
                )
            else:
                ra = (
                    tuple(float(v) for v in args.randaugment.split(","))
                    if args.randaugment
                    else None
                )
                ds = inputs.classification_dataset(
                    pattern,
                    image_size=image_size,
                    is_training=is_training,
                    batch_size=args.batch_size,
                    randaugment=(int(ra[0]), ra[1]) if ra else None,
                )
            if is_training:
                ds_train = ds
            else:
                ds = ds.repeat()
            rate, per_cpu_second, count = _measure(ds, args.batches, args.warmup)
            mode = "train" if is_training else "eval"
            print(
                f"{args.task} {mode}: {rate:.1f} images/s wall clock, {per_cpu_second:.1f} images per "
                f"CPU-second ({count} images, {args.batches} batches of {args.batch_size}; load "
                f"average {os.getloadavg()[0]:.1f})"
            )
        if args.train_steps and detection:
            _time_training(ds_train, cfg, image_size, args.train_steps)
    return 0


def _time_training(ds, cfg, image_size: int, steps: int) -> None:
    """Images/s of a float32 training step (no XLA, the CPU default) on the pipeline's batches."""
    import tensorflow as tf

    from efficientdet.detection.losses import detection_loss
    from efficientdet.models import build_model

    model = build_model(cfg.name, image_size=image_size)
    optimizer = tf.keras.optimizers.SGD(0.001, momentum=0.9)

    @tf.function
    def step(images, labels):
        with tf.GradientTape() as tape:
            total, _, _ = detection_loss(model(images, training=True), labels, cfg.num_classes)
        grads = tape.gradient(total, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return total

    it = iter(ds)
    step(*next(it))  # trace + first step
    batches = [next(it) for _ in range(steps)]
    start = time.perf_counter()
    for images, labels in batches:
        step(images, labels).numpy()
    wall = time.perf_counter() - start
    count = sum(int(b[0].shape[0]) for b in batches)
    print(
        f"{cfg.name} training step (float32, no XLA): {count / wall:.2f} images/s "
        f"({steps} steps of {int(batches[0][0].shape[0])}; load average {os.getloadavg()[0]:.1f})"
    )


if __name__ == "__main__":
    raise SystemExit(main())
