"""EfficientDet-D0 end-to-end inference on CPU: latency p50/p90/p99 and throughput of the
exported SavedModel (uint8 images in, detections in original pixels out) at batch 1 and 8.

    .venv/bin/python benchmarks/bench_inference.py [--image-size 512] [--iterations 20]

Weights are random (the architecture, not the weights, sets the cost); post-processing is the
export default (per-class hard NMS, 100 detections).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="efficientdet-d0")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--num-classes", type=int, default=90)
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import tensorflow as tf

    import efficientdet  # noqa: F401  (protobuf shim before TensorFlow)
    from efficientdet.export.saved_model import export_saved_model
    from efficientdet.inference.benchmark import benchmark_runner, format_rows
    from efficientdet.inference.runners import SavedModelRunner
    from efficientdet.models import build_model
    from efficientdet.models.model_meta import ModelMeta

    model = build_model(args.model, args.num_classes, args.image_size)
    meta = ModelMeta("detection", args.model, args.num_classes, args.image_size)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        t0 = time.perf_counter()
        export_saved_model(model, meta, f"{tmp}/sm")
        export_s = time.perf_counter() - t0
        runner = SavedModelRunner(f"{tmp}/sm")
        rows = benchmark_runner(runner, [int(b) for b in args.batch_sizes.split(",")],
                                warmup=args.warmup, iterations=args.iterations)
    info = {"model": args.model, "image_size": args.image_size, "runtime": "SavedModel (CPU)",
            "tensorflow": tf.__version__, "intra_op_threads":
            tf.config.threading.get_intra_op_parallelism_threads(), "export_seconds": export_s,
            "results": rows}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"{args.model} {args.image_size}px SavedModel on CPU (TF {tf.__version__}); "
              f"export took {export_s:.1f} s")
        print(format_rows(rows))


if __name__ == "__main__":
    main()
