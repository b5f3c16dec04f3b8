"""Convergence on the synthetic sets: COCO AP of EfficientDet-D0 (and top-1 of EfficientNet-B0
against keras.applications) over several seeds, so a configuration change can be told from noise.

Detection uses the settings of the side-by-side comparison with google/automl (peers.md): 256
training images (seed 0) and 64 validation images (seed 1) of 192 px, D0 from scratch at 128 px,
batch 8 on one process, peak lr 0.08 with 50 linear warm-up steps from 0.008 then cosine, SGD
momentum 0.9, clipping at 10, L2 4e-5, focal loss, flip + scale jitter 0.1-2.0, no EMA; scored
by `effdet evaluate` (top-5000, per-class hard NMS, 100 detections, pycocotools). Every run is
the real `effdet train` / `effdet evaluate` command in its own process. The recipe's last 20% of
steps on BN moving statistics (`train.frozen_bn_fraction`, which automl does not have) applies;
`--set train.frozen_bn_fraction=0` leaves it out.

Classification trains EfficientNet-B0 with `effdet train` and keras.applications EfficientNetB0
(weights=None) with the same data pipeline, optimizer, schedule, label smoothing and weight
decay in a plain loop, and prints top-1 of both on the same validation set.

    .venv/bin/python benchmarks/bench_convergence.py --seeds 0,1,2 --steps 400,800
    .venv/bin/python benchmarks/bench_convergence.py --task classification --seeds 0,1,2
    .venv/bin/python benchmarks/bench_convergence.py --set data.deterministic=true --seeds 0,0

Runs share the CPU with nothing else: one at a time. 1.5-4 minutes per 400 detection steps on
2 cores, by machine. At 400 steps a run's AP varies by about 0.1 (standard deviation) with its
seed and its float rounding (docs/performance.md): compare means over six seeds or more.
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
EFFDET = [sys.executable, "-m", "efficientdet"]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "-1"}

DETECTION_SETTINGS = [
    "task=detection", "model=efficientdet-d0", "image_size=128", "data.batch_size=8",
    "optimizer.lr=0.08", "optimizer.reference_batch=8", "optimizer.warmup_steps=50",
    "optimizer.warmup_start_factor=0.1", "optimizer.momentum=0.9", "optimizer.clip_norm=10",
    "optimizer.weight_decay=4e-5", "optimizer.ema_decay=0", "train.log_every=100",
    "checkpoint.every_steps=100000", "checkpoint.resume=false", "logging.mlflow=false",
    "logging.dllogger_stdout=false",
]
CLASSIFICATION_SETTINGS = [
    "task=classification", "model=efficientnet-b0", "image_size=64", "data.batch_size=16",
    "optimizer.lr=0.1", "optimizer.reference_batch=16", "optimizer.warmup_steps=20",
    "optimizer.label_smoothing=0.1", "optimizer.ema_decay=0", "train.log_every=100",
    "checkpoint.every_steps=100000", "checkpoint.resume=false", "logging.mlflow=false",
    "logging.dllogger_stdout=false",
]


def run(cmd: list[str], log: Path) -> None:
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=ENV, cwd=REPO,
                              check=False)
    if proc.returncode:
        sys.exit(f"command failed ({proc.returncode}), see {log}: {' '.join(cmd)}")


def make_detection_data(work: Path, log: Path) -> tuple[Path, Path]:
    out = []
    for split, images, seed in (("train", 256, 0), ("val", 64, 1)):
        raw = work / f"raw-{split}"
        if not (raw / "annotations.json").is_file():
            run(EFFDET + ["data", "synth-coco", "--output", str(raw), "--images", str(images),
                          "--seed", str(seed), "--image-size", "192"], log)
        converted = work / split
        if not (converted / "report.json").is_file():
            run(EFFDET + ["convert", "coco", "--annotations", str(raw / "annotations.json"),
                          "--images", str(raw / "images"), "--output", str(converted)], log)
        out.append(converted)
    return out[0], out[1]


def make_classification_data(work: Path, log: Path) -> tuple[Path, Path]:
    out = []
    for split, per_class, seed in (("cls-train", 64, 0), ("cls-val", 16, 1)):
        raw = work / f"raw-{split}"
        if not raw.is_dir():
            run(EFFDET + ["data", "synth-imagenet", "--output", str(raw), "--images-per-class",
                          str(per_class), "--seed", str(seed), "--image-size", "96"], log)
        converted = work / split
        if not (converted / "report.json").is_file():
            run(EFFDET + ["convert", "imagenet", "--root", str(raw), "--output",
                          str(converted)], log)
        out.append(converted)
    return out[0], out[1]


def train_and_evaluate(settings, train, val, steps, seed, out: Path, log: Path, extra) -> dict:
    sets = settings + [f"data.train={train}", f"train.steps={steps}", f"seed={seed}",
                       f"output={out}"] + list(extra)
    start = time.monotonic()
    run(EFFDET + ["train", "--config", "synth-detection"]
        + [a for s in sets for a in ("--set", s)], log)
    seconds = time.monotonic() - start
    run(EFFDET + ["evaluate", "--model", str(out / "model"), "--data", str(val),
                  "--output", str(out / "eval"), "--no-report"], log)
    metrics = json.loads((out / "eval" / "metrics.json").read_text())["metrics"]
    return {"metrics": metrics, "train_seconds": seconds}


def spread(values: list[float]) -> str:
    """Mean, range and, from two runs on, the standard deviation and the mean's standard error
    (two configurations differ beyond noise when their means are several errors apart)."""
    mean = statistics.fmean(values)
    text = (f"mean {mean:.3f}  min {min(values):.3f}  max {max(values):.3f}  "
            f"spread {max(values) - min(values):.3f}")
    if len(values) > 1:
        sd = statistics.stdev(values)
        text += f"  sd {sd:.3f}  sem {sd / len(values) ** 0.5:.3f}"
    return text


def detection(args, work: Path, log: Path) -> None:
    train, val = make_detection_data(work, log)
    seeds = [int(s) for s in args.seeds.split(",")]
    for steps in [int(s) for s in args.steps.split(",")]:
        aps, ap50s = [], []
        for i, seed in enumerate(seeds):
            result = train_and_evaluate(DETECTION_SETTINGS, train, val, steps, seed,
                                        work / f"d0-{steps}-{seed}-{i}", log, args.set)
            m = result["metrics"]
            aps.append(m["AP"])
            ap50s.append(m["AP50"])
            print(f"D0 {steps} steps seed {seed}: AP {m['AP']:.3f}  AP50 {m['AP50']:.3f}  "
                  f"({result['train_seconds']:.0f} s training)", flush=True)
        print(f"D0 {steps} steps, {len(seeds)} runs: AP {spread(aps)}", flush=True)
        print(f"D0 {steps} steps, {len(seeds)} runs: AP50 {spread(ap50s)}", flush=True)


KERAS_APPLICATIONS_B0 = """
import json, sys
import keras, tensorflow as tf
from efficientdet.data.inputs import classification_dataset
from efficientdet.training.regularization import l2_loss
from efficientdet.training.schedules import WarmupCosine
train, val, steps, seed, classes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
keras.utils.set_random_seed(seed)
model = keras.applications.EfficientNetB0(weights=None, classes=classes, input_shape=(64, 64, 3),
                                          classifier_activation=None)
data = iter(classification_dataset(train, image_size=64, is_training=True, batch_size=16, seed=seed))
opt = keras.optimizers.SGD(WarmupCosine(0.1, steps, 20, 0.1), momentum=0.9, global_clipnorm=10.0)
loss_fn = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)
@tf.function
def step(images, labels):
    with tf.GradientTape() as tape:
        logits = model(images, training=True)
        loss = loss_fn(tf.one_hot(labels, classes), logits) + l2_loss(model, 4e-5)
    opt.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
for _ in range(steps):
    images, labels = next(data)
    step(images, labels)
correct = total = 0
for images, labels in classification_dataset(val, image_size=64, is_training=False, batch_size=32):
    pred = tf.argmax(model(images, training=False), -1, output_type=tf.int32)
    correct += int(tf.reduce_sum(tf.cast(pred == tf.cast(labels, tf.int32), tf.int32)))
    total += int(tf.shape(labels)[0])
print("RESULT " + json.dumps({"top1": correct / total}))
"""


def classification(args, work: Path, log: Path) -> None:
    train, val = make_classification_data(work, log)
    seeds = [int(s) for s in args.seeds.split(",")]
    classes = len(json.loads((train / "label_map.json").read_text())["classes"])
    for steps in [int(s) for s in args.cls_steps.split(",")]:
        ours, theirs = [], []
        for i, seed in enumerate(seeds):
            out = work / f"b0-{steps}-{seed}-{i}"
            sets = CLASSIFICATION_SETTINGS + [f"data.train={train}", f"train.steps={steps}",
                                              f"seed={seed}", f"output={out}"] + args.set
            run(EFFDET + ["train", "--config", "synth-classification"]
                + [a for s in sets for a in ("--set", s)], log)
            run(EFFDET + ["evaluate", "--model", str(out / "model"), "--data", str(val),
                          "--output", str(out / "eval"), "--no-report"], log)
            ours.append(json.loads((out / "eval" / "metrics.json").read_text())
                        ["metrics"]["top1"])
            proc = subprocess.run([sys.executable, "-c", KERAS_APPLICATIONS_B0, str(train),
                                   str(val), str(steps), str(seed), str(classes)],
                                  capture_output=True, text=True, env=ENV, cwd=REPO, check=False)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not lines:
                sys.exit(f"keras.applications run failed:\n{proc.stderr[-3000:]}")
            theirs.append(json.loads(lines[-1][7:])["top1"])
            print(f"B0 {steps} steps seed {seed}: top-1 effdet {ours[-1]:.3f}  "
                  f"keras.applications {theirs[-1]:.3f}", flush=True)
        print(f"B0 {steps} steps effdet            top-1 {spread(ours)}", flush=True)
        print(f"B0 {steps} steps keras.applications top-1 {spread(theirs)}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=("detection", "classification"), default="detection")
    p.add_argument("--seeds", default="0,1,2", help="one run per entry; repeat a seed to "
                   "check determinism (default 0,1,2)")
    p.add_argument("--steps", default="400,800", help="detection step counts (default 400,800)")
    p.add_argument("--cls-steps", default="300", help="classification steps (default 300)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra `effdet train --set` for every project run")
    p.add_argument("--work", help="working directory (default: a new temp dir; data is reused "
                   "when it exists)")
    args = p.parse_args()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="effdet-conv-"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    print(f"working in {work} (commands and their output: {log})", flush=True)
    (detection if args.task == "detection" else classification)(args, work, log)


if __name__ == "__main__":
    main()
