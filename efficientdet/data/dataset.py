"""A converted dataset as one type: what `effdet convert` wrote, local or on s3://.

A converted dataset is a directory (or s3:// prefix) holding ``data-NNNNN-of-MMMMM.tfrecord``
shards, ``label_map.json`` and ``report.json``, the completion report written last (see
`data.shards`). Training, evaluation, export calibration and the input benchmark all read it
through `ConvertedDataset`, so completeness, the label map, the example count and the local
shard cache are interpreted one way.

The example count comes from the report (``examples_per_shard``), so no rank reads shards to
count them; only shards without a report (a bare glob outside a converted directory) are
counted by reading them, and a warning says so.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import weakref
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

from efficientdet import storage
from efficientdet.data.label_map import LabelMap, LabelMapError
from efficientdet.data.shards import LABEL_MAP_NAME, REPORT_NAME, IncompleteDataset

log = logging.getLogger(__name__)

SHARD_GLOB = "*.tfrecord"
_GLOB_CHARS = "*?["


class DatasetError(ValueError):
    """A converted dataset whose label map or report cannot be understood (names the file)."""


def default_cache_dir() -> str:
    """The persistent shard cache training uses: ``$EFFDET_CACHE_DIR`` or
    ``~/.cache/efficientdet`` (reruns on the same node do not download again)."""
    return os.environ.get("EFFDET_CACHE_DIR") or os.path.expanduser("~/.cache/efficientdet")


class RankShards(NamedTuple):
    """The files one rank reads; ``every_nth_record``: fewer files than ranks, so every rank
    reads all files in the same order and keeps every ``world_size``-th record."""

    files: list[str]
    every_nth_record: bool


def rank_shards(files: Sequence[str], rank: int, world_size: int) -> RankShards:
    """Rank ``rank`` of ``world_size`` reads ``files[rank::world_size]`` when there are at least
    as many files as ranks (no file is opened by two ranks), else all files, record-sharded."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, "
                         f"world_size={world_size}")
    files = list(files)
    if len(files) >= world_size:
        return RankShards(files[rank::world_size], False)
    return RankShards(files, True)


def _split_patterns(uri) -> list[str]:
    if isinstance(uri, (str, os.PathLike)):
        items = [p.strip() for p in str(uri).split(",")]
    elif isinstance(uri, Sequence):
        items = [str(p).strip() for p in uri]
    else:
        raise TypeError(f"dataset URI must be a string or a list of strings, "
                        f"got {type(uri).__name__}")
    items = [os.path.expanduser(p) if not storage.is_remote(p) else p for p in items if p]
    if not items:
        raise ValueError(f"dataset URI is empty: {uri!r}")
    return items


def _is_directory_form(pattern: str) -> bool:
    """A dataset directory/prefix, not a shard glob or a single shard file."""
    last = pattern.rstrip("/").rsplit("/", 1)[-1]
    return not (any(c in last for c in _GLOB_CHARS) or last.endswith(".tfrecord"))


def _parent(uri: str) -> str:
    uri = uri.rstrip("/")
    if storage.is_remote(uri):
        return uri.rsplit("/", 1)[0]
    return os.path.dirname(uri) or "."


def dataset_root(pattern: str) -> str:
    """The converted dataset directory of a directory, prefix, shard glob or shard file."""
    pattern = str(pattern).strip()
    return pattern.rstrip("/") if _is_directory_form(pattern) else _parent(pattern)


class ConvertedDataset:
    """Shards, label map and example count of a converted dataset, and a local shard cache.

    ``uri``: a dataset directory or s3:// prefix (its ``*.tfrecord`` shards; ``report.json``
    required), a shard glob or file, or a comma-separated string / list of those. The label map
    and report are those of the first one's directory.

    ``cache_dir``: where s3:// shards are downloaded (kept; files of the same size are reused).
    Without it they go to a private temp directory that `close` (or leaving the ``with`` block,
    or garbage collection) removes.
    """

    def __init__(self, uri, cache_dir: str | os.PathLike | None = None):
        self.uri = uri if isinstance(uri, str) else ",".join(map(str, _split_patterns(uri)))
        self.patterns = _split_patterns(uri)
        self.root = dataset_root(self.patterns[0])
        self._cache_dir = Path(cache_dir) if cache_dir else None
        self._temp_dir: Path | None = None
        self._cleanup: weakref.finalize | None = None
        for pattern in self.patterns:
            if (_is_directory_form(pattern) and not storage.is_remote(pattern)
                    and not os.path.isdir(pattern)):
                raise FileNotFoundError(f"{pattern}: no such dataset directory")

    @classmethod
    def open(cls, uri, cache_dir: str | os.PathLike | None = None) -> ConvertedDataset:
        """The dataset at ``uri`` (see the class); nothing is downloaded yet."""
        return cls(uri, cache_dir)

    def __repr__(self) -> str:
        return f"ConvertedDataset({self.uri!r})"

    # ----------------------------------------------------------------------------- contents

    @cached_property
    def shards(self) -> list[str]:
        """Sorted paths or s3:// URIs of the shards; a directory without ``report.json`` (an
        unfinished conversion) and a pattern without shards are errors naming the URI."""
        files: set[str] = set()
        for pattern in self.patterns:
            if _is_directory_form(pattern):
                self._require_complete(pattern.rstrip("/"))
                pattern = storage.join(pattern, SHARD_GLOB)
            files.update(storage.list_files(pattern))
        if not files:
            raise FileNotFoundError(f"{self.uri}: no TFRecord shards found")
        return sorted(files)

    @staticmethod
    def _require_complete(directory: str) -> None:
        if not storage.exists(storage.join(directory, REPORT_NAME)):
            raise IncompleteDataset(
                f"{directory}: no {REPORT_NAME}, so not a complete converted dataset "
                "(conversion running, failed or killed?)")

    @cached_property
    def label_map(self) -> LabelMap | None:
        """The dataset's ``label_map.json``, or None when it has none. One that cannot be read
        or parsed is an error naming it (storage being down is not "missing")."""
        text = self._read_optional(storage.join(self.root, LABEL_MAP_NAME))
        if text is None:
            return None
        where = storage.join(self.root, LABEL_MAP_NAME)
        try:
            return LabelMap.from_json(json.loads(text), where=where)
        except LabelMapError as exc:
            raise DatasetError(str(exc)) from None
        except ValueError as exc:
            raise DatasetError(f"{where}: not a valid label map ({exc})") from None

    @cached_property
    def report(self) -> dict | None:
        """The completion report of the dataset directory, or None when there is none."""
        return self._report_of(self.root)

    def _report_of(self, directory: str) -> dict | None:
        uri = storage.join(directory, REPORT_NAME)
        text = self._read_optional(uri)
        if text is None:
            return None
        try:
            report = json.loads(text)
        except ValueError as exc:
            raise DatasetError(f"{uri}: not valid JSON ({exc})") from None
        if not isinstance(report, dict):
            raise DatasetError(f"{uri}: must hold a JSON object")
        return report

    @staticmethod
    def _read_optional(uri: str) -> str | None:
        try:
            return storage.read_text(uri)
        except FileNotFoundError:
            return None

    @cached_property
    def num_examples(self) -> int:
        """Number of records in `shards`: the sum of the reports' ``examples_per_shard``, or,
        for shards no report lists, counted by reading them (with a warning)."""
        per_shard: dict[str, int] = {}
        for directory in sorted({_parent(f) for f in self.shards}):
            report = (self.report if directory == self.root else self._report_of(directory)) or {}
            names, counts = report.get("shards") or [], report.get("examples_per_shard") or []
            if len(names) == len(counts):
                per_shard.update({storage.join(directory, n): int(c)
                                  for n, c in zip(names, counts)})
        unlisted = [f for f in self.shards if f not in per_shard]
        if unlisted:
            log.warning("%s: %d shard(s) not listed in a %s; counting their records by reading "
                        "them", self.uri, len(unlisted), REPORT_NAME)
        return sum(per_shard[f] for f in self.shards if f in per_shard) + \
            (_count_records(self.local_shards(unlisted)) if unlisted else 0)

    def shards_for_rank(self, rank: int, world_size: int) -> RankShards:
        """This rank's shards (see `rank_shards`)."""
        return rank_shards(self.shards, rank, world_size)

    # -------------------------------------------------------------------------- local cache

    @property
    def cache_dir(self) -> Path:
        """Where s3:// shards are downloaded (a temp dir is made on first use)."""
        if self._cache_dir is not None:
            return self._cache_dir
        if self._temp_dir is None:
            self._temp_dir = Path(tempfile.mkdtemp(prefix="effdet-data-"))
            self._cleanup = weakref.finalize(self, shutil.rmtree, self._temp_dir, True)
        return self._temp_dir

    def local_shards(self, shards: Sequence[str] | None = None) -> list[str]:
        """Local paths of ``shards`` (default: all): s3:// objects are downloaded into the
        cache (again only when their size changed), local files are returned as they are."""
        out = []
        for shard in self.shards if shards is None else shards:
            if storage.is_remote(shard):
                shard = str(storage.sync_to_local(shard, self.cache_dir / "s3"))
            out.append(shard)
        return out

    def close(self) -> None:
        """Remove the temp cache, if one was made (a given ``cache_dir`` is kept)."""
        if self._cleanup is not None:
            self._cleanup()
        self._temp_dir = self._cleanup = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _count_records(files: Sequence[str]) -> int:
    import tensorflow as tf

    ds = tf.data.TFRecordDataset(list(files), buffer_size=8 << 20)
    return int(ds.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1).numpy())
