"""Sharded TFRecord output that is all-or-nothing, plus the process pool and the write phase the
converters share.

Shards are written as ``*.partial`` files in a local staging directory (the output directory
itself when it is local) and renamed into place only when the whole conversion succeeded;
``report.json`` is written last and removed at the start, so its presence marks a complete
dataset. A rerun after an interruption deletes the leftovers and writes the same files again
(shard assignment depends only on the input). For s3:// output the finished files are uploaded
(multipart for large shards), report last.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from efficientdet import storage

log = logging.getLogger(__name__)

SHARD_PREFIX = "data"
PARTIAL_SUFFIX = ".partial"
REPORT_NAME = "report.json"
LABEL_MAP_NAME = "label_map.json"
_SHARD_RE = re.compile(r"^(?P<prefix>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.tfrecord$")


def shard_name(index: int, count: int, prefix: str = SHARD_PREFIX) -> str:
    return f"{prefix}-{index:05d}-of-{count:05d}.tfrecord"


def default_num_shards(num_items: int) -> int:
    """Up to 8 shards for small sets (so Horovod ranks get disjoint files), ~1000 items each
    for large ones."""
    return max(1, min(8, num_items), -(-num_items // 1000))


class ShardSet:
    """Writes ``num_shards`` TFRecord files to ``output_uri`` (local or s3://) atomically."""

    def __init__(self, output_uri: str, num_shards: int, prefix: str = SHARD_PREFIX):
        import tensorflow as tf

        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        self._tf = tf
        self.output_uri = str(output_uri)
        self.num_shards = num_shards
        self.prefix = prefix
        self.names = [shard_name(i, num_shards, prefix) for i in range(num_shards)]
        self.remote = storage.is_remote(self.output_uri)
        if self.remote:
            self.local_dir = Path(tempfile.mkdtemp(prefix="effdet-shards-"))
        else:
            self.local_dir = Path(self.output_uri)
            self.local_dir.mkdir(parents=True, exist_ok=True)
        self._clear_incomplete()
        self._writers = {}
        self.counts = [0] * num_shards

    def _clear_incomplete(self) -> None:
        # The report marks completeness: take it away first, then old partial files.
        storage.delete(storage.join(self.output_uri, REPORT_NAME))
        for path in self.local_dir.glob(f"*{PARTIAL_SUFFIX}"):
            log.info("removing leftover %s from an interrupted run", path)
            path.unlink()

    def _partial(self, index: int) -> Path:
        return self.local_dir / (self.names[index] + PARTIAL_SUFFIX)

    def write(self, index: int, serialized: bytes) -> None:
        writer = self._writers.get(index)
        if writer is None:
            writer = self._tf.io.TFRecordWriter(str(self._partial(index)))
            self._writers[index] = writer
        writer.write(serialized)
        self.counts[index] += 1

    def _close_writers(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers = {}

    def abort(self) -> None:
        """Close and delete partial shards (the output keeps no report: incomplete)."""
        self._close_writers()
        for i in range(self.num_shards):
            self._partial(i).unlink(missing_ok=True)
        if self.remote:
            shutil.rmtree(self.local_dir, ignore_errors=True)

    def _stale_shards(self, names: Iterable[str]) -> list[str]:
        keep = set(self.names)
        out = []
        for name in names:
            m = _SHARD_RE.match(name)
            if m and m["prefix"] == self.prefix and name not in keep:
                out.append(name)
        return out

    def publish(self, files: dict[str, bytes], report: bytes) -> list[str]:
        """Finish: put shards in place, then ``files`` (e.g. label_map.json), the report last.

        Returns the URIs of the shards.
        """
        self._close_writers()
        for i in range(self.num_shards):  # shards nothing was assigned to are still written
            if not self._partial(i).exists():
                self._tf.io.TFRecordWriter(str(self._partial(i))).close()
        if not self.remote:
            for name in self._stale_shards(p.name for p in self.local_dir.iterdir()):
                log.info("removing %s left by an earlier conversion with other shard count",
                         name)
                (self.local_dir / name).unlink()
            for i, name in enumerate(self.names):
                self._partial(i).replace(self.local_dir / name)
            for name, data in files.items():
                storage.write_bytes(self.local_dir / name, data)
            storage.write_bytes(self.local_dir / REPORT_NAME, report)
            return [str(self.local_dir / n) for n in self.names]
        try:
            existing = [storage.basename(u) for u in
                        storage.list_files(self.output_uri, recursive=False)]
            for name in self._stale_shards(existing):
                storage.delete(storage.join(self.output_uri, name))
            uris = []
            for i, name in enumerate(self.names):
                uri = storage.join(self.output_uri, name)
                storage.upload_file(self._partial(i), uri)
                uris.append(uri)
            for name, data in files.items():
                storage.write_bytes(storage.join(self.output_uri, name), data)
            storage.write_bytes(storage.join(self.output_uri, REPORT_NAME), report)
        finally:
            shutil.rmtree(self.local_dir, ignore_errors=True)
        return uris


def _ignore_sigint() -> None:
    # Ctrl-C reaches the whole process group: the parent handles it and stops the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def parallel_map(fn: Callable, items: list, workers: int, *, desc: str = "",
                 progress: bool = True) -> Iterator:
    """``fn`` over ``items`` in input order, in ``workers`` spawned processes (1: in-process),
    with a tqdm progress bar (shown on terminals). Close the generator (or exhaust it) to
    stop the workers early."""
    from tqdm import tqdm

    bar = tqdm(total=len(items), desc=desc, unit="img", disable=None if progress else True,
               dynamic_ncols=True)
    try:
        if workers <= 1 or len(items) <= 1:
            for item in items:
                yield fn(item)
                bar.update(1)
            return
        ctx = multiprocessing.get_context("spawn")  # no fork after TensorFlow started threads
        chunk = max(1, min(16, len(items) // (workers * 8)))
        with ctx.Pool(processes=workers, initializer=_ignore_sigint) as pool:
            for result in pool.imap(fn, items, chunksize=chunk):
                yield result
                bar.update(1)
    finally:
        bar.close()


def write_dataset(output: str, tasks: list, process: Callable, build: Callable, *, report,
                  label_map: dict, num_classes: int, start: float, num_shards: int | None,
                  workers: int | None, desc: str, progress: bool = True) -> dict:
    """The write phase of a converter; returns the report dict (also written as ``report.json``).

    ``process`` runs over ``tasks`` in ``workers`` processes (default: CPUs, at most 8);
    ``build(task, result)`` records the outcome in ``report`` (a ``ConversionReport``) and returns
    the serialized Example, or None when the task was skipped. Task ``k`` goes to shard
    ``k % num_shards`` (default `default_num_shards`). Then the report is checked and the shards,
    ``label_map.json`` and the report (last) are published. On any error the worker processes are
    stopped and the partial shards deleted.
    """
    num_shards = num_shards or default_num_shards(len(tasks))
    workers = workers or min(os.cpu_count() or 1, 8)
    shards = ShardSet(str(output), num_shards)
    results = None
    try:
        results = parallel_map(process, tasks, workers, desc=desc, progress=progress)
        for position, (task, res) in enumerate(zip(tasks, results)):
            serialized = build(task, res)
            if serialized is not None:
                shards.write(position % num_shards, serialized)
        report.check()
        elapsed = time.monotonic() - start
        result = report.to_dict(
            num_shards=num_shards, shards=shards.names, examples_per_shard=shards.counts,
            num_classes=num_classes, elapsed_seconds=round(elapsed, 3),
            images_per_second=round(report.images_input / max(elapsed, 1e-9), 2))
        shards.publish({LABEL_MAP_NAME: json.dumps(label_map, indent=1,
                                                   ensure_ascii=False).encode()},
                       json.dumps(result, indent=1, ensure_ascii=False).encode())
    except BaseException:
        if results is not None:
            results.close()  # stop worker processes now, not at garbage collection
        shards.abort()
        raise
    return result
