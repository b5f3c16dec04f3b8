"""What a pretrained backbone buys: detector COCO AP from a trained classifier backbone vs from
scratch, same detection steps, on the synthetic sets.

1. `effdet data synth-imagenet` -> `convert imagenet` -> `train` an EfficientNet classifier;
2. `effdet data synth-coco` (train + val) -> `convert coco`;
3. `train` the detector twice for the same steps: `--init-backbone <classifier artifact>` and
   from scratch; `evaluate` both on the same validation set; print both APs side by side.

Small defaults finish in minutes on a CPU (a smoke run, not a result); the measurement wants
e.g. `--cls-steps 1500 --det-steps 800 --det-images 256 --seeds 0,1,2`.

    .venv/bin/python benchmarks/bench_pretrained.py [--work DIR] [--cls-steps 60]
        [--det-steps 40] [--image-size 128] [--seeds 0]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def effdet(*args: str) -> str:
    """Run the CLI of this checkout; returns stdout, raises with the tail of stderr."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "-1",
           "TF_CPP_MIN_LOG_LEVEL": "2", "EFFDET_TRACKING": "off"}
    proc = subprocess.run([sys.executable, "-m", "efficientdet", *args], capture_output=True,
                          text=True, env=env, check=False)
    if proc.returncode:
        raise SystemExit(f"effdet {' '.join(args[:2])} failed ({proc.returncode}):\n"
                         + "\n".join(proc.stderr.splitlines()[-15:]))
    return proc.stdout


def train(out: Path, recipe: str, data: Path, steps: int, image_size: int, batch: int,
          seed: int, *extra: str) -> Path:
    effdet("train", "--config", recipe, "--output", str(out),
           "--set", f"data.train={data}", "--set", f"train.steps={steps}",
           "--set", f"image_size={image_size}", "--set", f"data.batch_size={batch}",
           "--set", f"seed={seed}", "--set", "logging.mlflow=false",
           "--set", "checkpoint.resume=false", "--set", f"train.log_every={max(1, steps // 5)}",
           *extra)
    return out / "model"


def average_precision(model: Path, val: Path, out: Path) -> float:
    effdet("evaluate", "--model", str(model), "--data", str(val), "--output", str(out),
           "--no-report")
    return float(json.loads((out / "metrics.json").read_text())["metrics"]["AP"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default=None, help="working folder (default: a temp folder)")
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--cls-images-per-class", type=int, default=32)
    p.add_argument("--cls-steps", type=int, default=60)
    p.add_argument("--det-images", type=int, default=32)
    p.add_argument("--val-images", type=int, default=16)
    p.add_argument("--det-steps", type=int, default=40)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seeds", default="0", help="comma-separated detector seeds")
    args = p.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="effdet-bench-pretrained-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    effdet("data", "synth-imagenet", "--output", str(work / "inet-raw"), "--classes",
           str(args.classes), "--images-per-class", str(args.cls_images_per_class),
           "--image-size", str(args.image_size))
    effdet("convert", "imagenet", "--root", str(work / "inet-raw"), "--output",
           str(work / "inet"), "--no-progress")
    for split, images, seed in (("train", args.det_images, 0), ("val", args.val_images, 1)):
        effdet("data", "synth-coco", "--output", str(work / f"coco-{split}-raw"), "--images",
               str(images), "--classes", str(args.classes), "--seed", str(seed),
               "--image-size", str(args.image_size))
        effdet("convert", "coco", "--annotations",
               str(work / f"coco-{split}-raw" / "annotations.json"), "--images",
               str(work / f"coco-{split}-raw" / "images"), "--output",
               str(work / f"coco-{split}"), "--no-progress")

    classifier = train(work / "classifier", "synth-classification", work / "inet",
                       args.cls_steps, args.image_size, args.batch, 0)
    rows = []
    for seed in [int(s) for s in args.seeds.split(",") if s.strip()]:
        row = {"seed": seed}
        for name, extra in (("pretrained", ("--init-backbone", str(classifier))),
                            ("scratch", ())):
            model = train(work / f"det-{name}-{seed}", "synth-detection", work / "coco-train",
                          args.det_steps, args.image_size, args.batch, seed, *extra)
            row[name] = average_precision(model, work / "coco-val",
                                          work / f"eval-{name}-{seed}")
        rows.append(row)
        print(f"seed {seed}: AP pretrained backbone {row['pretrained']:.4f}   "
              f"from scratch {row['scratch']:.4f}", flush=True)

    print(f"\nEfficientDet-D0, {args.det_steps} detection steps at {args.image_size} px, batch "
          f"{args.batch}; backbone: EfficientNet-B0 classifier, {args.cls_steps} steps")
    print(f"{'seed':>4}  {'AP pretrained':>13}  {'AP scratch':>10}")
    for r in rows:
        print(f"{r['seed']:>4}  {r['pretrained']:>13.4f}  {r['scratch']:>10.4f}")
    if len(rows) > 1:
        mean = {k: sum(r[k] for r in rows) / len(rows) for k in ("pretrained", "scratch")}
        print(f"{'mean':>4}  {mean['pretrained']:>13.4f}  {mean['scratch']:>10.4f}")
    print(f"({time.time() - t0:.0f} s; work folder {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
