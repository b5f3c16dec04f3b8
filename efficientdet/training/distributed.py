"""Horovod glue for Keras 3: one process when not launched by horovodrun/mpirun, many otherwise.

Horovod's Keras helpers (`DistributedGradientTape`, `broadcast_variables` on Keras variables)
fail on Keras 3, so this module works on the underlying ``tf.Variable`` s and on gradient
tensors: gradients are averaged with one grouped allreduce outside the (possibly XLA-compiled)
step, and initial state is broadcast from rank 0 as ``[v.value for v in variables]``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# Environment variables a launcher sets for each process it starts.
_LAUNCHER_RANK_VARS = ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")
_LAUNCHER_SIZE_VARS = ("HOROVOD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def launched_by_horovod(environ=None) -> bool:
    """True when a launcher (horovodrun, mpirun, an MPIJob) started this process as a rank."""
    environ = os.environ if environ is None else environ
    return any(k in environ for k in _LAUNCHER_RANK_VARS)


@dataclass
class Context:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    hvd: object = None  # the horovod.tensorflow module when distributed

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.hvd is not None and self.size > 1

    def allreduce_grads(self, grads, extra=None):
        """Average gradients over ranks (one grouped allreduce). ``extra`` scalars ride along
        (averaged too), so control flags cost no extra round trip. Returns (grads, extra)."""
        import tensorflow as tf

        extra = [] if extra is None else list(extra)
        if not self.distributed:
            return grads, extra
        dense = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]
        present = [i for i, g in enumerate(dense) if g is not None]
        tensors = [dense[i] for i in present] + [tf.cast(e, tf.float32) for e in extra]
        reduced = self.hvd.grouped_allreduce(tensors, op=self.hvd.Average)
        out = list(dense)
        for i, r in zip(present, reduced[:len(present)]):
            out[i] = r
        return out, list(reduced[len(present):])

    def average(self, values):
        """Mean of a list of float scalars over ranks (for logging)."""
        import tensorflow as tf

        if not self.distributed:
            return [float(v) for v in values]
        reduced = self.hvd.allreduce(tf.constant([float(v) for v in values], tf.float32),
                                     op=self.hvd.Average, name="log_average")
        return [float(v) for v in reduced.numpy()]

    def average_variables(self, variables):
        """Replace each variable by its mean over ranks (BN moving statistics, which every
        rank estimates from its own shard, so the final model uses all of them)."""
        if not self.distributed or not variables:
            return
        tf_vars = [v.value if hasattr(v, "value") and not _is_tf_variable(v) else v
                   for v in variables]
        floats = [v for v in tf_vars if v.dtype.is_floating]
        others = [v for v in tf_vars if not v.dtype.is_floating]  # e.g. seed generator states
        if floats:
            reduced = self.hvd.grouped_allreduce([v.read_value() for v in floats],
                                                 op=self.hvd.Average)
            for var, value in zip(floats, reduced):
                var.assign(value)
        if others:
            self.hvd.broadcast_variables(others, root_rank=0)

    def broadcast(self, variables, root_rank: int = 0):
        """Make every rank hold rank 0's values of these (Keras or TF) variables."""
        if not self.distributed:
            return
        tf_vars = [v.value if hasattr(v, "value") and not _is_tf_variable(v) else v
                   for v in variables]
        self.hvd.broadcast_variables(tf_vars, root_rank=root_rank)

    def broadcast_object(self, obj, root_rank: int = 0):
        if not self.distributed:
            return obj
        return self.hvd.broadcast_object(obj, root_rank=root_rank)


def _is_tf_variable(v) -> bool:
    import tensorflow as tf

    return isinstance(v, tf.Variable)


def init() -> Context:
    """Initialize Horovod when launched as a rank, else a single-process context."""
    if not launched_by_horovod():
        return Context()
    import horovod.tensorflow as hvd

    hvd.init()
    return Context(rank=hvd.rank(), size=hvd.size(), local_rank=hvd.local_rank(), hvd=hvd)
