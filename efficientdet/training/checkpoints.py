"""Training checkpoints on a local path or s3://, keeping the last K, resumable.

TensorFlow writes checkpoints to a local directory (a ``tf.train.CheckpointManager``); for an
s3:// destination that directory is a local mirror that is uploaded after every save (data
files first, the ``checkpoint`` index last, so a reader never sees an index pointing at missing
files) and pruned remotely as the manager prunes locally. On start, the remote prefix is
downloaded first, so a restarted pod resumes from the latest checkpoint.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import tensorflow as tf

from efficientdet import storage

log = logging.getLogger(__name__)

INDEX = "checkpoint"
PREFIX = "ckpt"


class CheckpointStore:
    def __init__(self, checkpoint: tf.train.Checkpoint, uri: str, keep: int = 3,
                 cache_dir: str | None = None):
        self.checkpoint = checkpoint
        self.uri = str(uri)
        self.remote = storage.is_remote(self.uri)
        if self.remote:
            base = Path(cache_dir or tempfile.mkdtemp(prefix="effdet-ckpt-"))
            bucket, key = storage.split_s3(self.uri)
            self._cache_root = base
            self.local_dir = base / bucket / key.strip("/")
        else:
            self.local_dir = Path(self.uri)
        self.local_dir.mkdir(parents=True, exist_ok=True)
        self._pulled = False
        self.manager = None
        self.keep = keep

    def _manager(self) -> tf.train.CheckpointManager:
        if self.manager is None:
            self.pull()
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
        """Restore the newest checkpoint if there is one; returns its path (or None)."""
        path = self.latest
        if path is None:
            return None
        self.checkpoint.restore(path).expect_partial()
        log.info("restored checkpoint %s", path)
        return path

    def save(self, step: int) -> str:
        path = self._manager().save(checkpoint_number=int(step))
        if self.remote:
            self._push(path)
        return path

    def _push(self, path: str) -> None:
        stem = Path(path).name
        local_files = sorted(p for p in self.local_dir.iterdir() if p.is_file())
        new = [p for p in local_files if p.name.startswith(stem + ".")]
        for p in new:
            storage.upload_file(p, storage.join(self.uri, p.name))
        storage.upload_file(self.local_dir / INDEX, storage.join(self.uri, INDEX))
        keep = {p.name for p in local_files}
        for remote in storage.list_files(self.uri, recursive=False):
            name = storage.basename(remote)
            if name.startswith(PREFIX + "-") and name not in keep:
                storage.delete(remote)
