"""SIGTERM handled like Ctrl-C: Kubernetes, mpirun and `kill` stop a run with SIGTERM, and the
clean-up that runs on KeyboardInterrupt (partial shards, worker pools) must run then too."""

from __future__ import annotations

import contextlib
import signal
import threading


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM; a BaseException so only clean-up code sees it."""

    exit_code = 128 + signal.SIGTERM


def _raise(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def terminate_raises():
    """Within the block SIGTERM raises `Terminated` (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
