"""What a person sees on the console: phase lines, durations, and the third-party noise
(TensorFlow's C++ and Python logs, absl, tf2onnx, MLflow's INFO lines and progress bars,
deprecation warnings, kfp.local's base-image warning) kept out unless asked for (`effdet -v`).

Phase lines go to stderr, so that stdout holds results (and ``--json`` output) only.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
import warnings

from efficientdet import _compat

VERBOSE_ENV = "EFFDET_VERBOSE"  # "1": subprocesses (Horovod ranks, pipeline steps) stay verbose
NOISY_LOGGERS = ("tensorflow", "absl", "tf2onnx", "keras", "h5py")
NOISY_MODULES = (r"(tensorflow|tf_keras|keras|tf2onnx|absl|google\.protobuf|h5py|onnx|onnxruntime"
                 r"|mlflow)")
# Quiet settings that libraries read from the environment at import (a user's own value wins).
QUIET_ENV = {"MLFLOW_LOGGING_LEVEL": "WARNING", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
# kfp.local warns on every task that our image is not a Python base image; it runs in this venv.
KFP_LOCAL_IMAGE_WARNING = r"You may be attemp\w* to run a task that uses custom or non-Python"
# MLflow asks every PythonModel subclass for type hints (attributed to the subclass's module).
MLFLOW_TYPE_HINT_WARNING = r".*Add type hints to the `predict` method"
NOISY_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning, UserWarning)


def is_verbose() -> bool:
    """Whether this process (or the command that started it) asked for third-party output."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def configure(verbose: bool | None = None) -> None:
    """Silence third-party noise, or with VERBOSE bring it back (None: `EFFDET_VERBOSE`).

    Call before TensorFlow is imported: its C++ log level is read once, at import. A
    ``TF_CPP_MIN_LOG_LEVEL`` the user set is always kept. The choice is exported to the
    environment so subprocesses started from here make the same one.
    """
    verbose = is_verbose() if verbose is None else verbose
    os.environ[VERBOSE_ENV] = "1" if verbose else "0"
    if _compat.USER_TF_CPP_MIN_LOG_LEVEL is None:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0" if verbose else "2"
    _absl_verbosity("warning" if verbose else "error")  # absl resets its logger's level itself
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.ERROR)
    if not verbose:
        for key, value in QUIET_ENV.items():
            os.environ.setdefault(key, value)
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # when mlflow came first
        for category in NOISY_WARNINGS:
            warnings.filterwarnings("ignore", category=category, module=NOISY_MODULES)
        warnings.filterwarnings("ignore", message=KFP_LOCAL_IMAGE_WARNING, category=RuntimeWarning)
        warnings.filterwarnings("ignore", message=MLFLOW_TYPE_HINT_WARNING, category=UserWarning)


def _absl_verbosity(level: str) -> None:
    try:
        from absl import logging as absl_logging
    except ImportError:
        return
    absl_logging.set_verbosity(level)


@contextlib.contextmanager
def native_stderr_quiet():
    """Unless verbose, hide what native code writes straight to file descriptor 2 in the
    block: absl's INFO lines from grappler ("Number of eligible GPUs ..."), printed when a
    graph is optimised from Python (freezing weights, tf2onnx), which TF_CPP_MIN_LOG_LEVEL does
    not reach. Python's own output and exceptions are not touched."""
    if is_verbose():
        yield
        return
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2 (embedded interpreter): nothing to hide
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def format_duration(seconds: float) -> str:
    """``0.8s``, ``41s``, ``2m31s``, ``1h02m``: as short as the length allows."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"duration {seconds!r}: must be a non-negative number of seconds")
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def phase(text: str) -> None:
    """One line saying that a phase starts or ended (building, compiling, saving, exporting)."""
    print(text, file=sys.stderr, flush=True)


@contextlib.contextmanager
def timed_phase(doing: str, done: str):
    """Prints ``DOING ...``, runs the block, then ``DONE in 41s`` (the error tells the rest)."""
    phase(f"{doing} ...")
    start = time.monotonic()
    yield
    phase(f"{done} in {format_duration(time.monotonic() - start)}")

