"""Where a training step's time goes: the real `effdet train` step (input pipeline, forward,
focal + box loss, backward, clipping, SGD, EMA) of EfficientDet-D0, profiled op by op.

A trainer hook runs TensorFlow's profiler (`tf.profiler.experimental`) over a few steps after
warm-up; the script reads the recorded XSpace and prints:
- wall time per step, and the time inside the training step's function;
- the op time split into forward / loss / backward / optimizer / input pipeline (by the name
  scopes the Trainer sets), and by model part (backbone, BiFPN, heads, swish gradients);
- the op types that take the most time.

Op times are summed kernel times: with inter-op parallelism they add up to more than the wall
time, so the shares are shares of op time. Times hold for this CPU only.

    .venv/bin/python benchmarks/profile_train.py [--image-size 512] [--batch 4] [--steps 4]
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from efficientdet.training.hooks.base import Hook

WRAPPERS = {"PartitionedCall", "StatefulPartitionedCall", "_Arg", "_Retval", "NoOp",
            "Identity", "IdentityN", "Const"}
PARTS = (("backbone", ("/backbone",)), ("bifpn", ("/fpn_cell", "/resample_p")),
         ("heads", ("/class_net", "/box_net")),
         ("swish (all parts)", ("swish_gradient",)), ("gradient sums", ("/AddN",)))


def phase_of(name: str) -> str:
    """The step's part from the node's name scope (the Trainer names "loss", "weight_decay"
    and "optimizer"; gradients live under "gradient_tape", the activations' under
    "swish_gradient", numbered per use). Ops outside the training step's function belong to
    the input pipeline, which runs in the background."""
    if "optimizer/" in name:
        return "optimizer (clip, SGD, EMA)"
    if not name.startswith("StatefulPartitionedCall/"):
        return "input pipeline (background)"
    if "gradient_tape/" in name or "swish_gradient" in name or "/AddN" in name:
        return "backward" if part_of(name) != "other" else "backward of loss"
    if "/loss/" in name:
        return "loss"
    if "/weight_decay/" in name:
        return "weight decay"
    return "forward" if part_of(name) != "other" else "other"


def part_of(name: str) -> str:
    for part, keys in PARTS:
        if any(k in name for k in keys):
            return part
    return "other"


class StepProfile(Hook):
    """Trainer hook: TensorFlow's profiler over steps WARMUP+1 .. WARMUP+STEPS."""

    def __init__(self, warmup: int, steps: int, logdir: str):
        self.warmup, self.steps, self.logdir = warmup, steps, logdir
        self.wall = 0.0

    def _start(self) -> None:
        import tensorflow as tf

        tf.profiler.experimental.start(self.logdir)
        self.t0 = time.perf_counter()

    def on_train_begin(self, trainer) -> None:
        if self.warmup == 0:
            self._start()

    def on_step_end(self, trainer, step, logs) -> None:
        import tensorflow as tf

        if step == self.warmup:
            self._start()
        elif step == self.warmup + self.steps:
            self.wall = time.perf_counter() - self.t0
            tf.profiler.experimental.stop()


def op_events(logdir: str):
    """(node name, op type, microseconds) of every TensorFlow op the profile recorded, and
    the microseconds of each tf.function call seen from Python."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    (path,) = Path(logdir).rglob("*.xplane.pb")
    space.ParseFromString(path.read_bytes())
    ops, calls = [], collections.Counter()
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            for event in line.events:
                meta = plane.event_metadata[event.metadata_id]
                micros = event.duration_ps / 1e6
                if line.name == "python":
                    if any(plane.stat_metadata[s.metadata_id].name == "tf_function_call"
                           for s in event.stats):
                        calls[meta.name] += micros
                elif meta.display_name and ":" in meta.name:
                    ops.append((meta.name.rsplit(":", 1)[0], meta.display_name, micros))
    return ops, calls


def summarize(logdir: str, steps: int, wall: float, top: int) -> None:
    ops, calls = op_events(logdir)
    by_type, count = collections.Counter(), collections.Counter()
    by_phase, by_part = collections.Counter(), collections.Counter()
    total = 0.0
    for name, kind, micros in ops:
        if kind in WRAPPERS:
            continue
        by_type[kind] += micros
        count[kind] += 1
        phase = phase_of(name)
        by_phase[phase] += micros
        if phase in ("forward", "backward"):
            by_part[(phase, part_of(name))] += micros
        total += micros
    ms = 1e-3 / steps
    print(f"wall time per step            {1e3 * wall / steps:9.1f} ms")
    for fn, micros in calls.most_common():
        print(f"  in {fn:<26}{micros * ms:9.1f} ms")
    print(f"op time per step (summed)     {total * ms:9.1f} ms "
          f"({100 * total * 1e-6 / wall:.0f}% of wall; over 100%: ops ran in parallel)")
    print("\nby phase                      ms/step   share")
    for phase, micros in by_phase.most_common():
        print(f"  {phase:<28}{micros * ms:8.1f}  {100 * micros / total:5.1f}%")
    print("\nby model part                  ms/step   share")
    for (phase, part), micros in sorted(by_part.items()):
        print(f"  {phase + ' ' + part:<28}{micros * ms:8.1f}  {100 * micros / total:5.1f}%")
    print(f"\ntop {top} op types (oneDNN's _Mkl prefixes dropped)  ms/step   share  ops/step")
    for kind, micros in by_type.most_common(top):
        short = kind.removeprefix("_MklNative").removeprefix("_Mkl")
        print(f"  {short[:44]:<44}{micros * ms:8.1f}  {100 * micros / total:5.1f}%  "
              f"{count[kind] / steps:7.0f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="efficientdet-d0")
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--top", type=int, default=20)
    args = p.parse_args()
    from efficientdet.training.config import build_config
    from efficientdet.training.loop import train
    from tests.test_training_unit import write_detection_set

    with tempfile.TemporaryDirectory() as tmp:
        data = write_detection_set(Path(tmp) / "data", images=4 * args.batch, classes=4,
                                   image_size=640)
        config = build_config({
            "model": args.model, "image_size": args.image_size, "output": f"{tmp}/out",
            "data": {"train": str(data), "batch_size": args.batch},
            "train": {"steps": args.warmup + args.steps, "log_every": 1000},
            "checkpoint": {"every_steps": 100000, "resume": False},
            "logging": {"mlflow": False, "dllogger_stdout": False}})
        profile = StepProfile(args.warmup, args.steps, f"{tmp}/profile")
        train(config, hooks=[profile])
        print(f"{args.model} training step, {args.image_size} px, batch {args.batch}, "
              f"float32, {args.steps} steps after {args.warmup} warm-up")
        summarize(profile.logdir, args.steps, profile.wall, args.top)


if __name__ == "__main__":
    main()
