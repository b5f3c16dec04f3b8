"""The `effdet` command: one entry point, one subcommand per pipeline step.

Each subcommand lives in its own module with `register(subparsers)`; heavy imports
(TensorFlow, kfp, mlflow) happen inside the handlers so `effdet --help` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import tempfile
import time
import traceback

from efficientdet import __version__

# Order is the order shown in --help.
COMMANDS = (
    "doctor",
    "models",
    "data",
    "convert",
    "train",
    "evaluate",
    "export",
    "predict",
    "benchmark",
    "pipeline",
)


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2, no traceback."""


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (the usage block is one `--help` away)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="effdet",
        description="Train, evaluate and ship EfficientDet and EfficientNet models, "
        "on one machine or on Kubernetes.",
    )
    parser.add_argument("--version", action="version", version=f"effdet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"efficientdet.cli.{name}").add_parser(sub)
    _add_verbose_to_subcommands(parser)
    return parser


VERBOSE_HELP = ("debug logging, and the output of TensorFlow, absl, tf2onnx and the KFP "
                "executor that is hidden by default")


def _add_verbose_to_subcommands(parser: argparse.ArgumentParser) -> None:
    """`-v` also after the subcommand (`effdet train -v ...`); SUPPRESS keeps a `-v` given
    before it."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for child in action.choices.values():
            if not any("-v" in a.option_strings for a in child._actions):
                child.add_argument("-v", "--verbose", action="store_true",
                                   default=argparse.SUPPRESS, help=VERBOSE_HELP)
            _add_verbose_to_subcommands(child)


def _one_line(exc: BaseException) -> str:
    """An expected failure as one line naming its input."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        if isinstance(exc, FileExistsError) and os.path.isfile(exc.filename):
            return f"{exc.filename}: is a file, not a directory"  # mkdir of a path through it
        return f"{exc.filename}: {exc.strerror}"
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def crash_log(command: str, exc: BaseException) -> str:
    """Write the full trace of an unexpected error to a log file; returns its path
    (``$EFFDET_LOG_DIR``, else ``<tmp>/effdet-logs``)."""
    log_dir = os.environ.get("EFFDET_LOG_DIR") or os.path.join(tempfile.gettempdir(),
                                                               "effdet-logs")
    os.makedirs(log_dir, exist_ok=True)
    path = os.path.join(log_dir, f"effdet-{command}-{time.strftime('%Y%m%d-%H%M%S')}-"
                                 f"{os.getpid()}.log")
    with open(path, "w") as f:
        f.write(f"effdet {' '.join(sys.argv[1:])}\n")
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=f)
    return path


def main(argv: list[str] | None = None) -> int:
    """Run one command. Expected failures (bad input, missing or unwritable files, storage
    errors) exit 2 with one line naming the input; anything else exits 1 with one line and the
    path of the full trace. SIGTERM cleans up like Ctrl-C."""
    from efficientdet.signals import Terminated, terminate_raises
    from efficientdet.storage import StorageError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse printed its one-line usage error (or --help)
        return exc.code if isinstance(exc.code, int) else 2
    from efficientdet import console

    console.configure(args.verbose or None)  # no -v: EFFDET_VERBOSE; before TF is imported
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    name = f"effdet {args.command}"
    try:
        with terminate_raises():
            return int(args.handler(args) or 0)
    except (UsageError, StorageError, OSError) as exc:
        print(f"{name}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except Terminated as exc:
        print(f"{name}: terminated (SIGTERM)", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - the last line of defence: no raw traceback
        try:
            where = f"full trace in {crash_log(args.command, exc)}"
        except OSError as log_exc:
            where = f"no trace written ({log_exc})"
        print(f"{name}: internal error: {type(exc).__name__}: {_one_line(exc)}; {where}",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
