"""Sharded TFRecord output that is all-or-nothing, plus the process pool and the write phase the
converters share.

A conversion builds the whole dataset in a hidden staging directory beside the output
(``.NAME.incoming-PID``; a temp directory for s3:// output) and swaps it in only when complete,
so a failed or killed rerun leaves an earlier good dataset untouched. ``report.json`` is written
last and marks a complete dataset: readers (`require_complete`) refuse a directory without it.
Staging directories of killed runs are removed by the next run. For s3:// output, which cannot
be renamed, the old report is deleted first, then shards, ``label_map.json`` and the report (last)
are uploaded (multipart for large shards).
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
_STAGING_RE = re.compile(r"\.(incoming|old)-(?P<pid>\d+)$")


class IncompleteDataset(FileNotFoundError):
    """A dataset directory without ``report.json``: a conversion is running, failed or was
    killed, or the directory is not a converted dataset."""


def shard_name(index: int, count: int, prefix: str = SHARD_PREFIX) -> str:
    return f"{prefix}-{index:05d}-of-{count:05d}.tfrecord"


def default_num_shards(num_items: int) -> int:
    """Up to 8 shards for small sets (so Horovod ranks get disjoint files), ~1000 items each
    for large ones."""
    return max(1, min(8, num_items), -(-num_items // 1000))


def _is_dataset_file(name: str) -> bool:
    return (name in (REPORT_NAME, LABEL_MAP_NAME) or name.endswith(PARTIAL_SUFFIX)
            or bool(_SHARD_RE.match(name)))


def require_complete(dataset_dir: str, what: str = "dataset") -> None:
    """Raise `IncompleteDataset` naming ``dataset_dir`` unless its ``report.json`` exists."""
    if not storage.exists(storage.join(dataset_dir, REPORT_NAME)):
        raise IncompleteDataset(
            f"{what} {dataset_dir}: no {REPORT_NAME}, so not a complete converted dataset "
            "(conversion running, failed or killed?)")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
            self.final = Path(os.path.realpath(self.output_uri))  # swap a link's target
            self._check_output()
            self.final.parent.mkdir(parents=True, exist_ok=True)
            self._remove_stale_staging()
            self.local_dir = self.final.parent / f".{self.final.name}.incoming-{os.getpid()}"
            shutil.rmtree(self.local_dir, ignore_errors=True)
            self.local_dir.mkdir()
        self._writers = {}
        self.counts = [0] * num_shards

    def _check_output(self) -> None:
        """The output is replaced as a whole: refuse one that holds anything but a dataset."""
        if self.final.exists() and not self.final.is_dir():
            raise NotADirectoryError(20, "output exists and is not a directory", str(self.final))
        if self.final.is_dir():
            others = sorted(p.name for p in self.final.iterdir() if not _is_dataset_file(p.name))
            if others:
                raise FileExistsError(
                    17, f"output holds files that are not part of a converted dataset "
                        f"({', '.join(others[:3])}); it would be replaced, choose another",
                    str(self.final))

    def _remove_stale_staging(self) -> None:
        for path in self.final.parent.glob(f".{self.final.name}.*-*"):
            m = _STAGING_RE.search(path.name)
            if m and path.is_dir() and not _pid_alive(int(m["pid"])):
                log.info("removing %s left by a killed conversion", path)
                shutil.rmtree(path, ignore_errors=True)

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
        """Close the writers and delete the staging directory (the output is not touched)."""
        self._close_writers()
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
        """Finish: shards, then ``files`` (e.g. label_map.json), the report last; then swap the
        staging directory in (local) or upload it (s3). Returns the URIs of the shards."""
        self._close_writers()
        for i, name in enumerate(self.names):  # shards nothing was assigned to are written too
            if not self._partial(i).exists():
                self._tf.io.TFRecordWriter(str(self._partial(i))).close()
            self._partial(i).replace(self.local_dir / name)
        for name, data in files.items():
            storage.write_bytes(self.local_dir / name, data)
        storage.write_bytes(self.local_dir / REPORT_NAME, report)
        if not self.remote:
            self._swap_in()
            return [str(self.final / n) for n in self.names]
        try:
            storage.delete(storage.join(self.output_uri, REPORT_NAME))  # not complete now
            existing = [storage.basename(u) for u in
                        storage.list_files(self.output_uri, recursive=False)]
            for name in self._stale_shards(existing):
                storage.delete(storage.join(self.output_uri, name))
            uris = []
            for name in [*self.names, *files, REPORT_NAME]:
                uri = storage.join(self.output_uri, name)
                storage.upload_file(self.local_dir / name, uri)
                uris.append(uri)
        finally:
            shutil.rmtree(self.local_dir, ignore_errors=True)
        return uris[:self.num_shards]

    def _swap_in(self) -> None:
        old = self.final.parent / f".{self.final.name}.old-{os.getpid()}"
        if self.final.exists():
            self._check_output()  # nothing else appeared in it meanwhile
            self.final.replace(old)
        self.local_dir.replace(self.final)
        shutil.rmtree(old, ignore_errors=True)


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
    from efficientdet.signals import terminate_raises

    num_shards = num_shards or default_num_shards(len(tasks))
    workers = workers or min(os.cpu_count() or 1, 8)
    results = None
    with terminate_raises():  # SIGTERM cleans up like Ctrl-C
        shards = ShardSet(str(output), num_shards)
        try:
            results = parallel_map(process, tasks, workers, desc=desc, progress=progress)
            for position, (task, res) in enumerate(zip(tasks, results)):
                serialized = build(task, res)
                if serialized is not None:
                    shards.write(position % num_shards, serialized)
            report.check()
            # no timings in report.json: the same input gives the same bytes
            result = report.to_dict(num_shards=num_shards, shards=shards.names,
                                    examples_per_shard=shards.counts, num_classes=num_classes)
            shards.publish({LABEL_MAP_NAME: json.dumps(label_map, indent=1,
                                                       ensure_ascii=False).encode()},
                           json.dumps(result, indent=1, ensure_ascii=False).encode())
        except BaseException:
            if results is not None:
                results.close()  # stop worker processes now, not at garbage collection
            shards.abort()
            raise
    elapsed = time.monotonic() - start
    return {**result, "elapsed_seconds": round(elapsed, 3),
            "images_per_second": round(report.images_input / max(elapsed, 1e-9), 2)}
