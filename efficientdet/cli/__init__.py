"""The `effdet` command: one entry point, one subcommand per pipeline step.

Each subcommand lives in its own module with `register(subparsers)`; heavy imports
(TensorFlow, kfp, mlflow) happen inside the handlers so `effdet --help` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="effdet",
        description="Train, evaluate and ship EfficientDet and EfficientNet models, "
        "on one machine or on Kubernetes.",
    )
    parser.add_argument("--version", action="version", version=f"effdet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"efficientdet.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args) or 0)
    except UsageError as exc:
        print(f"effdet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"effdet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
