"""Training throughput of EfficientDet-D0 on this machine: fp32 / bf16, with and without XLA.

Each variant runs the real training loop (`efficientdet.training.train`: input pipeline, forward,
backward, optimizer, EMA) in its own process on a synthetic TFRecord set, and prints images/s
measured after the warm-up steps (tracing, XLA compilation excluded).

    .venv/bin/python benchmarks/bench_train.py [--image-size 256] [--batch 4] [--steps 10]
        [--variants fp32,bf16,fp32-xla,bf16-xla]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {"fp32": (False, False), "bf16": (True, False), "fp32-xla": (False, True),
            "bf16-xla": (True, True)}


def make_dataset(out: Path, images: int, image_size: int) -> Path:
    sys.path.insert(0, str(REPO))
    from tests.test_training_unit import write_detection_set

    return write_detection_set(out, images=images, classes=4, image_size=image_size, shards=2)


def run_variant(name: str, data: Path, out: Path, args) -> dict:
    amp, xla = VARIANTS[name]
    code = f"""
import json, sys
sys.path.insert(0, {str(REPO)!r})
from efficientdet.training.config import build_config
from efficientdet.training.loop import train
cfg = build_config({{"model": {args.model!r}, "image_size": {args.image_size},
    "output": {str(out)!r},
    "data": {{"train": {str(data)!r}, "batch_size": {args.batch}}},
    "train": {{"steps": {args.warmup + args.steps}, "log_every": 1000,
              "throughput_warmup_steps": {args.warmup}}},
    "optimizer": {{"warmup_steps": 1}},
    "precision": {{"amp": {amp}, "xla": {xla}}},
    "checkpoint": {{"every_steps": 100000, "resume": False}},
    "logging": {{"mlflow": False, "dllogger_stdout": False}}}})
s = train(cfg)
print("RESULT " + json.dumps({{k: s[k] for k in ("images_per_second", "precision_policy",
                                               "xla", "throughput")}}))
"""
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"CUDA_VISIBLE_DEVICES": "-1", "TF_CPP_MIN_LOG_LEVEL": "2",
                               "PATH": "/usr/bin:/bin"}, check=False)
    wall = time.time() - t0
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return {**json.loads(line[7:]), "wall_s": wall}
    return {"error": (proc.stderr or proc.stdout)[-1500:], "wall_s": wall}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="efficientdet-d0")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--variants", default=",".join(VARIANTS))
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        data = make_dataset(Path(tmp) / "data", 32, args.image_size)
        print(f"{args.model} training on CPU, {args.image_size} px, batch {args.batch}, "
              f"{args.steps} timed steps after {args.warmup} warm-up steps", flush=True)
        for name in args.variants.split(","):
            r = run_variant(name, data, Path(tmp) / name, args)
            if "error" in r:
                print(f"  {name:9s} FAILED after {r['wall_s']:.0f}s: {r['error']}", flush=True)
                continue
            step_s = args.batch / r["images_per_second"]
            print(f"  {name:9s} {r['images_per_second']:7.2f} img/s  ({step_s:.3f} s/step, "
                  f"{r['precision_policy']}, xla={r['xla']}, process wall {r['wall_s']:.0f}s)",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
