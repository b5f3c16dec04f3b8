"""Paired speed comparison, in one run: this checkout's EfficientDet-D0 and EfficientNet-B0 against
the project's previous release (D0) and keras.applications EfficientNetB0 (B0).

Each side lives in its own long-running worker process; after warm-up the coordinator alternates
one timed iteration per side (A B, B A, ...), so background load hits both alike, and reports the
median of the per-pair ratios current/reference with their range (lower is faster). A table of
absolute figures for this checkout follows: network and end-to-end (uint8 images -> detections,
hard NMS) ms at batch 1 and 8, training step images/s in float32 and bfloat16, and the training
input pipeline's images/s per core. D0 runs each side's serving path (frozen graphs where the
side has them); B0 calls the Keras model on both sides. Weights carry the non-zero BN
statistics and biases of a trained model. Absolute times hold for this CPU only; a GPU machine (NGC
image) runs the same script.

    .venv/bin/python benchmarks/bench_paired.py [--baseline REV] [--pairs 15] [--cases ...]

The baseline is a git revision of this repository (default: the first release, before the speed
work), extracted to a temporary directory and imported from there.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIRST_RELEASE = "42ad4ad"
D0_CASES = ("d0_forward_b1", "d0_forward_b8", "d0_e2e_b1", "d0_e2e_b8", "d0_train_b4")
B0_CASES = ("b0_forward_b1", "b0_forward_b32", "b0_train_b32")
MIN_PAIRS = {"b1": 15}  # batch 1 is noisy: at least 15 pairs


# ------------------------------------------------------------------------------------- worker

def _build(case: str, impl: str):
    """A zero-argument callable running one iteration of `case` (returns numpy results)."""
    import keras
    import numpy as np
    import tensorflow as tf

    if "bf16" in case:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    batch = int(case.rsplit("_b", 1)[1].split("_")[0])
    rng = np.random.default_rng(0)
    if case.startswith("b0_"):
        size = 224
        if impl == "keras-applications":
            model = keras.applications.EfficientNetB0(weights=None)
        else:
            from efficientdet.models import build_model

            model = build_model("efficientnet-b0")
    else:
        size = 512
        from efficientdet.models import build_model

        model = build_model("efficientdet-d0", num_classes=90, image_size=size)
    _trained_like(model)
    images = tf.constant(rng.uniform(0, 255, (batch, size, size, 3)).astype("float32"))
    serving = _serving_options() if case.startswith("d0_") else {}

    if "_forward_" in case:
        if serving:  # the network as predict/evaluate/export run it
            from efficientdet.inference.detector import network

            forward = tf.function(network(model, size, **serving))
        else:
            forward = tf.function(lambda x: model(x, training=False))
        return lambda: tf.nest.map_structure(lambda t: t.numpy(), forward(images))
    if "_e2e_" in case:
        from efficientdet.inference.runners import served_module
        from efficientdet.models.model_meta import ModelMeta

        meta = ModelMeta("detection", "efficientdet-d0", 90, size)
        module = served_module(model, meta, nms="hard", **serving)
        pictures = tf.constant(rng.integers(0, 256, (batch, 480, 640, 3)).astype("uint8"))
        return lambda: {k: v.numpy() for k, v in module.serve_images(pictures).items()}
    optimizer = keras.optimizers.SGD(learning_rate=1e-4, momentum=0.9)

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            out = tf.nest.flatten(model(x, training=True))
            loss = tf.add_n([tf.reduce_mean(tf.square(tf.cast(t, tf.float32))) for t in out])
        optimizer.apply(tape.gradient(loss, model.trainable_variables),
                        model.trainable_variables)
        return loss

    return lambda: float(step(images))


def _trained_like(model) -> None:
    """Seeded non-zero BN statistics, BN shifts and biases (the same on both sides). At their
    initial zeros grappler drops the BN shift from a frozen graph, and the timing would not be
    what serving a trained model costs."""
    import numpy as np

    rng = np.random.default_rng(1)
    for variable in model.weights:
        name = variable.path.rsplit("/", 1)[-1]
        if name in ("beta", "moving_mean", "bias"):
            variable.assign(rng.normal(0.0, 0.1, variable.shape).astype("float32"))
        elif name == "moving_variance":
            variable.assign(rng.uniform(0.5, 2.0, variable.shape).astype("float32"))


def _serving_options() -> dict:
    """{"frozen": True} where this checkout serves frozen graphs (not in older releases)."""
    import inspect

    from efficientdet.inference import runners

    return ({"frozen": True} if "frozen" in inspect.signature(runners.served_module).parameters
            else {})


def worker(impl: str) -> None:
    """Serve `setup CASE` / `run CASE` lines on stdin, answering on stdout."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import efficientdet  # noqa: F401  (protobuf shim before TensorFlow)

    cases = {}
    out = sys.stdout
    sys.stdout = sys.stderr  # library prints must not corrupt the protocol
    for line in sys.stdin:
        verb, case = line.split()
        if verb == "setup":
            cases[case] = _build(case, impl)
            cases[case]()  # trace
            reply = "ok"
        else:
            start = time.perf_counter()
            cases[case]()
            reply = f"{time.perf_counter() - start:.6f}"
        out.write(reply + "\n")
        out.flush()


# -------------------------------------------------------------------------------- coordinator

class Worker:
    def __init__(self, impl: str, pythonpath: str):
        env = {**os.environ, "PYTHONPATH": pythonpath, "TF_CPP_MIN_LOG_LEVEL": "2",
               "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "")}
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", impl],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True, cwd=pythonpath)

    def ask(self, verb: str, case: str) -> str:
        self.proc.stdin.write(f"{verb} {case}\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline().strip()
        if not reply:
            raise RuntimeError(f"worker died during {verb} {case}")
        return reply

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def paired(a: Worker, b: Worker, case: str, pairs: int, warmup: int) -> dict:
    a.ask("setup", case)
    b.ask("setup", case)
    for _ in range(warmup):
        a.ask("run", case)
        b.ask("run", case)
    ta, tb = [], []
    for i in range(pairs):
        order = (a, b) if i % 2 == 0 else (b, a)
        times = {id(w): float(w.ask("run", case)) for w in order}
        ta.append(times[id(a)])
        tb.append(times[id(b)])
    ratios = [x / y for x, y in zip(ta, tb)]
    return {"case": case, "pairs": pairs, "ms_current": statistics.median(ta) * 1e3,
            "ms_reference": statistics.median(tb) * 1e3, "ratio": statistics.median(ratios),
            "ratio_min": min(ratios), "ratio_max": max(ratios)}


def extract(rev: str) -> str:
    target = tempfile.mkdtemp(prefix=f"effdet-{rev}-")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "efficientdet"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", target], input=archive, check=True)
    return target


def input_images_per_core(seconds: float = 20.0) -> float:
    """D0 training input (decode, flip, jitter, crop, pad, targets) on one private thread."""
    code = f"""
import sys, time, tempfile
from pathlib import Path
sys.path.insert(0, {str(REPO / 'benchmarks')!r})
import bench_input as bi, tensorflow as tf
from efficientdet.data.inputs import detection_dataset
from efficientdet.models import get_config
d = Path(tempfile.mkdtemp()); files = bi._write_detection_set(d, 64, 640, 4)
ds = detection_dataset(files, model_config=get_config("efficientdet-d0"), image_size=512,
                       is_training=True, batch_size=8)
opts = tf.data.Options(); opts.threading.private_threadpool_size = 1
opts.autotune.enabled = False
it = iter(ds.with_options(opts)); next(it)
n, start = 0, time.perf_counter()
while time.perf_counter() - start < {seconds}:
    next(it); n += 8
print(n / (time.perf_counter() - start))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                          cwd=REPO, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
                                         "PYTHONPATH": str(REPO)})
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return float(proc.stdout.split()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--baseline", default=FIRST_RELEASE, help="git revision to compare D0 with "
                   f"(default {FIRST_RELEASE}, the first release)")
    p.add_argument("--cases", default=",".join(D0_CASES + B0_CASES))
    p.add_argument("--pairs", type=int, default=7, help="pairs per case (batch 1: at least 15)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-table", action="store_true", help="skip the bf16 and input figures")
    args = p.parse_args()
    if args.worker:
        worker(args.worker)
        return
    cases = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(cases) - set(D0_CASES + B0_CASES))
    if unknown:
        sys.exit(f"--cases: unknown {', '.join(unknown)}; known: {', '.join(D0_CASES + B0_CASES)}")
    current = Worker("effdet", str(REPO))
    workers = {"d0": (current, Worker("effdet", extract(args.baseline))) if any(
        c.startswith("d0") for c in cases) else None,
        "b0": (current, Worker("keras-applications", str(REPO))) if any(
        c.startswith("b0") for c in cases) else None}
    print(f"{'case':<16}{'pairs':>6}{'current ms':>12}{'reference ms':>14}{'ratio':>8}"
          f"{'range':>14}   reference")
    results = []
    for case in cases:
        a, b = workers[case[:2]]
        pairs = max(args.pairs, MIN_PAIRS.get(case.rsplit("_", 1)[1], 0))
        r = paired(a, b, case, pairs, args.warmup)
        ref = f"{args.baseline}" if case.startswith("d0") else "keras.applications"
        print(f"{case:<16}{pairs:>6}{r['ms_current']:>12.1f}{r['ms_reference']:>14.1f}"
              f"{r['ratio']:>8.3f}{r['ratio_min']:>7.2f}-{r['ratio_max']:.2f}   {ref}",
              flush=True)
        results.append(r)
    if not args.no_table:
        by = {r["case"]: r["ms_current"] for r in results}
        bf16_worker = Worker("effdet", str(REPO))  # a policy is process-wide: own process
        bf16_worker.ask("setup", "d0_train_bf16_b4")
        bf16 = statistics.median(float(bf16_worker.ask("run", "d0_train_bf16_b4"))
                                 for _ in range(3)) * 1e3
        bf16_worker.close()
        print("\nthis checkout, EfficientDet-D0 512 px, float32 unless stated")
        for name, key in (("network b1 ms", "d0_forward_b1"), ("network b8 ms", "d0_forward_b8"),
                          ("end-to-end b1 ms", "d0_e2e_b1"), ("end-to-end b8 ms", "d0_e2e_b8")):
            if key in by:
                print(f"  {name:<28}{by[key]:10.1f}")
        if "d0_train_b4" in by:
            print(f"  {'train step b4 img/s fp32':<28}{4000 / by['d0_train_b4']:10.2f}")
        print(f"  {'train step b4 img/s bf16':<28}{4000 / bf16:10.2f}")
        print(f"  {'input pipeline img/s/core':<28}{input_images_per_core():10.1f}")
    for pair in workers.values():
        if pair:
            pair[1].close()
    current.close()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
