"""EfficientDet forward latency and train-step time on this machine, with and without XLA.

    .venv/bin/python benchmarks/bench_model.py [--model efficientdet-d0] [--image-size 512]
        [--batches 1 8] [--train-batch 8] [--iters 5] [--no-xla | --xla-only]
        [--no-forward] [--no-train]

Prints one line per measurement: median seconds over `--iters` timed calls after one warm-up
call (the warm-up, which includes tracing/compilation, is printed separately). The train
step is a plain tf.GradientTape + SGD step on a simple loss (mean square of every output),
which costs the same backward pass as the real detection loss.
"""

from __future__ import annotations

import argparse
import statistics
import time

import efficientdet  # noqa: F401  (protobuf shim before TensorFlow)


def _timed(fn, iters: int) -> tuple[float, float]:
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientdet-d0")
    parser.add_argument("--image-size", type=int, default=None, help="default: native")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--no-xla", action="store_true", help="skip the jit_compile runs")
    parser.add_argument("--xla-only", action="store_true", help="only the jit_compile runs")
    parser.add_argument("--no-forward", action="store_true", help="skip the forward timings")
    parser.add_argument("--no-train", action="store_true", help="skip the train-step timing")
    args = parser.parse_args(argv)

    import keras
    import numpy as np
    import tensorflow as tf

    from efficientdet.models import build_model, get_config

    cfg = get_config(args.model)
    size = args.image_size or cfg.image_size
    model = build_model(cfg.name, image_size=size)
    optimizer = keras.optimizers.SGD(learning_rate=1e-3, momentum=0.9)
    rng = np.random.default_rng(0)
    print(f"model {cfg.name}  input {size}x{size}  threads "
          f"intra={tf.config.threading.get_intra_op_parallelism_threads()} "
          f"cpus={len(tf.config.list_physical_devices('CPU'))}  keras {keras.__version__} "
          f"tf {tf.__version__}")

    def outputs_loss(out):
        flat = tf.nest.flatten(out)
        return tf.add_n([tf.reduce_mean(tf.square(t)) for t in flat])

    modes = ([] if args.xla_only else [False]) + ([] if args.no_xla else [True])
    for xla in modes:
        tag = "xla" if xla else "no-xla"

        @tf.function(jit_compile=xla, reduce_retracing=True)
        def forward(images):
            return model(images, training=False)

        @tf.function(jit_compile=xla, reduce_retracing=True)
        def gradients(images):
            with tf.GradientTape() as tape:
                loss = outputs_loss(model(images, training=True))
            return loss, tape.gradient(loss, model.trainable_variables)

        for batch in [] if args.no_forward else args.batches:
            images = tf.constant(rng.uniform(0, 255, (batch, size, size, 3)).astype("float32"))
            def run_forward(images=images):
                return tf.nest.map_structure(lambda t: t.numpy(), forward(images))

            first, median = _timed(run_forward, args.iters)
            print(f"forward  {tag:<7} batch {batch:>2}: {median * 1e3:9.1f} ms/batch  "
                  f"{batch / median:7.2f} img/s   (first call {first:.1f} s)", flush=True)

        if args.no_train:
            continue
        images = tf.constant(
            rng.uniform(0, 255, (args.train_batch, size, size, 3)).astype("float32"))

        def train_step(images=images):
            loss, grads = gradients(images)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return float(loss)

        first, median = _timed(train_step, args.iters)
        print(f"train    {tag:<7} batch {args.train_batch:>2}: {median:9.2f} s/step     "
              f"{args.train_batch / median:7.2f} img/s   (first call {first:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
