"""Conversion throughput (images/s) of `effdet convert coco` on this machine.

Makes a synthetic COCO set (COCO-like 640 px images), then converts it with 1 and W worker
processes, once as baseline JPEGs (bytes kept: decode + checks only) and once as PNGs
(decoded, converted and re-encoded as JPEG). Prints one line per case.

    .venv/bin/python benchmarks/bench_convert.py --images 200 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from PIL import Image

from efficientdet.data import synthetic
from efficientdet.data.convert_coco import convert_coco


def _as_png(src: Path, dst: Path) -> None:
    (dst / "images").mkdir(parents=True)
    coco = json.loads((src / "annotations.json").read_text())
    for info in coco["images"]:
        name = Path(info["file_name"]).with_suffix(".png").name
        Image.open(src / "images" / info["file_name"]).save(dst / "images" / name)
        info["file_name"] = name
    (dst / "annotations.json").write_text(json.dumps(coco))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=640)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    import tensorflow  # noqa: F401  (import once, outside the timings)

    work = Path(tempfile.mkdtemp(prefix="bench-convert-"))
    try:
        jpeg = work / "jpeg"
        synthetic.write_synthetic_coco(jpeg, images=args.images, classes=8, seed=0,
                                       image_size=args.image_size)
        png = work / "png"
        _as_png(jpeg, png)
        print(f"cpus={os.cpu_count()} images={args.images} size={args.image_size}px")
        for label, src in (("baseline JPEG (bytes kept)", jpeg), ("PNG (re-encoded)", png)):
            for workers in sorted({1, args.workers}):
                out = work / f"out-{src.name}-{workers}"
                t0 = time.perf_counter()
                report = convert_coco(str(src / "annotations.json"), str(src / "images"),
                                      str(out), workers=workers, progress=False)
                dt = time.perf_counter() - t0
                assert report["images"]["written"] == args.images
                print(f"{label:28s} workers={workers}: {args.images / dt:7.1f} images/s "
                      f"({dt:.2f} s)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
