"""`effdet predict`: run a model on images, a directory or a TFRecord."""


def register(sub) -> None:
    p = sub.add_parser("predict", help="run a model on images, a directory or a TFRecord", description="Run a model on images, a directory or a TFRecord.")
    p.set_defaults(handler=run)


def run(args) -> int:
    raise SystemExit("effdet predict: not built yet")
