"""Training checkpoints on a local path or s3://, keeping the last K, resumable.

TensorFlow writes checkpoints to a local directory (a ``tf.train.CheckpointManager``); for an
s3:// destination that directory is a local mirror that is uploaded after every save (data
files first, the ``checkpoint`` index last, so a reader never sees an index pointing at missing
files) and pruned remotely as the manager prunes locally. On start, the remote prefix is
downloaded first, so a restarted pod resumes from the latest checkpoint.

Resuming is forgiving where it can be and precise where it cannot: ``ckpt-N_temp`` folders of
a killed save are removed, an unreadable newest checkpoint falls back to the newest readable one
(with a warning), and a checkpoint of another model (shape mismatch) is a `CheckpointMismatch`
naming the variable and what changed (``meta``: model, num_classes, image_size...), recorded in
``checkpoint-meta.json`` beside the checkpoints.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from pathlib import Path

import tensorflow as tf

from efficientdet import storage

log = logging.getLogger(__name__)

INDEX = "checkpoint"
PREFIX = "ckpt"
META = "checkpoint-meta.json"
_SHAPE_RE = re.compile(r"incompatible tensor with shape (?P<saved>\(.*?\)).*?variable with "
                       r"shape (?P<model>\(.*?\)) and name (?P<name>\S+?)\.?$", re.DOTALL)


class CheckpointError(Exception):
    """No checkpoint can be resumed from; the message names the directory."""


class CheckpointMismatch(CheckpointError):
    """The checkpoint belongs to another model (a variable's shape differs)."""


class CheckpointStore:
    def __init__(self, checkpoint: tf.train.Checkpoint, uri: str, keep: int = 3,
                 cache_dir: str | None = None, meta: dict | None = None):
        self.checkpoint = checkpoint
        self.meta = dict(meta or {})
        self.uri = str(uri)
        self.remote = storage.is_remote(self.uri)
        if self.remote:
            base = Path(cache_dir or tempfile.mkdtemp(prefix="effdet-ckpt-"))
            bucket, key = storage.split_s3(self.uri)
            self._cache_root = base
            self.local_dir = storage.resolve_inside(base, f"{bucket}/{key.strip('/')}", self.uri)
        else:
            self.local_dir = Path(self.uri)
        self.local_dir.mkdir(parents=True, exist_ok=True)
        self._pulled = False
        self.manager = None
        self.keep = keep

    def _manager(self) -> tf.train.CheckpointManager:
        if self.manager is None:
            self.pull()
            for temp in self.local_dir.glob(f"{PREFIX}-*_temp*"):  # left by a killed save
                log.info("removing %s left by an interrupted checkpoint save", temp)
                shutil.rmtree(temp, ignore_errors=True)
            self.manager = tf.train.CheckpointManager(
                self.checkpoint, str(self.local_dir), max_to_keep=self.keep,
                checkpoint_name=PREFIX)
        return self.manager

    def pull(self) -> None:
        """Mirror the remote checkpoints locally (once)."""
        if not self.remote or self._pulled:
            return
        self._pulled = True
        if not storage.exists(storage.join(self.uri, INDEX)):
            return
        storage.sync_to_local(self.uri.rstrip("/"), self._cache_root)

    @property
    def latest(self) -> str | None:
        return self._manager().latest_checkpoint

    def restore_latest(self) -> str | None:
        """Restore the newest readable checkpoint if there is one; returns its path (or None).

        An unreadable one (truncated, corrupt) is skipped with a warning; a shape mismatch
        raises `CheckpointMismatch`; none readable raises `CheckpointError`."""
        manager = self._manager()
        candidates = list(dict.fromkeys(
            [p for p in [manager.latest_checkpoint] if p] + manager.checkpoints[::-1]))
        for path in candidates:
            try:
                self.checkpoint.restore(path).expect_partial()
            except (tf.errors.OpError, OSError, ValueError, IndexError) as exc:
                mismatch = _SHAPE_RE.search(str(exc)) if isinstance(exc, ValueError) else None
                if mismatch is not None:
                    raise CheckpointMismatch(self._mismatch(path, mismatch)) from None
                log.warning("checkpoint %s is unreadable (%s); trying an older one", path,
                            str(exc).strip().splitlines()[0] if str(exc).strip() else exc)
                continue
            log.info("restored checkpoint %s", path)
            return path
        if candidates:
            raise CheckpointError(f"{self.uri}: none of the checkpoints "
                                  f"({', '.join(Path(p).name for p in candidates)}) is readable")
        return None

    def _mismatch(self, path: str, m: re.Match) -> str:
        line = (f"checkpoint {path} does not fit this model: variable {m['name']} has shape "
                f"{m['saved']} there and {m['model']} here")
        saved = self._saved_meta()
        changed = [f"{k} {saved[k]!r} -> {self.meta[k]!r}" for k in sorted(self.meta)
                   if k in saved and saved[k] != self.meta[k]]
        if changed:
            return f"{line}; changed since it was written: {', '.join(changed)}"
        return line + " (was num_classes, the model or its overrides changed?)"

    def _saved_meta(self) -> dict:
        try:
            return json.loads((self.local_dir / META).read_text())
        except (OSError, ValueError):
            return {}

    def save(self, step: int) -> str:
        path = self._manager().save(checkpoint_number=int(step))
        if self.meta:
            storage.write_text(self.local_dir / META, json.dumps(self.meta, sort_keys=True))
        if self.remote:
            self._push(path)
        return path

    def _push(self, path: str) -> None:
        stem = Path(path).name
        local_files = sorted(p for p in self.local_dir.iterdir() if p.is_file())
        new = [p for p in local_files if p.name.startswith(stem + ".")]
        if self.meta:
            new.append(self.local_dir / META)
        for p in new:
            storage.upload_file(p, storage.join(self.uri, p.name))
        storage.upload_file(self.local_dir / INDEX, storage.join(self.uri, INDEX))
        keep = {p.name for p in local_files}
        for remote in storage.list_files(self.uri, recursive=False):
            name = storage.basename(remote)
            if name.startswith(PREFIX + "-") and name not in keep:
                storage.delete(remote)
