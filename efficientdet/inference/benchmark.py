"""Latency (p50/p90/p99) and throughput of a model, end to end (uint8 images in, detections
out, pre/post-processing included), per batch size, after warm-up."""

from __future__ import annotations

import time

import numpy as np


def benchmark_runner(runner, batch_sizes=(1, 8), *, warmup: int = 5, iterations: int = 20,
                     image_size=None, seed: int = 0) -> list[dict]:
    """One row per batch size: latency percentiles in ms and images per second."""
    h, w = image_size or runner.image_size or (0, 0)
    if not h or not w:
        raise ValueError("the model does not say its input size; pass image_size")
    if warmup < 0 or iterations < 1:
        raise ValueError(f"need warmup >= 0 and iterations >= 1, got {warmup}, {iterations}")
    rng = np.random.RandomState(seed)
    rows = []
    for b in batch_sizes:
        images = rng.randint(0, 256, (int(b), int(h), int(w), 3)).astype(np.uint8)
        for _ in range(warmup):
            runner.run_batch(images)
        times = []
        for _ in range(iterations):
            t0 = time.perf_counter()
            runner.run_batch(images)
            times.append(time.perf_counter() - t0)
        ms = np.asarray(times) * 1000.0
        rows.append({"batch_size": int(b), "image_size": [int(h), int(w)],
                     "iterations": iterations, "warmup": warmup,
                     "latency_ms_p50": float(np.percentile(ms, 50)),
                     "latency_ms_p90": float(np.percentile(ms, 90)),
                     "latency_ms_p99": float(np.percentile(ms, 99)),
                     "latency_ms_mean": float(ms.mean()),
                     "throughput_img_s": float(b * iterations / (ms.sum() / 1000.0))})
    return rows


def benchmark(model_uri: str, batch_sizes=(1, 8), *, warmup: int = 5, iterations: int = 20,
              image_size=None) -> dict:
    """Benchmark an artifact, SavedModel (also TF-TRT) or ONNX file."""
    from efficientdet.inference.runners import load_runner

    runner = load_runner(model_uri)
    rows = benchmark_runner(runner, batch_sizes, warmup=warmup, iterations=iterations,
                            image_size=image_size)
    return {"model": str(model_uri), "runtime": type(runner).__name__, "results": rows}


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'batch':>5} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'img/s':>9}"]
    for r in rows:
        lines.append(f"{r['batch_size']:>5} {r['latency_ms_p50']:>9.2f} "
                     f"{r['latency_ms_p90']:>9.2f} {r['latency_ms_p99']:>9.2f} "
                     f"{r['throughput_img_s']:>9.1f}")
    return "\n".join(lines)
