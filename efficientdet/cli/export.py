"""`effdet export`: export a model as SavedModel, TF-TRT or ONNX, with a parity check."""


def register(sub) -> None:
    p = sub.add_parser("export", help="export a model as SavedModel, TF-TRT or ONNX, with a parity check", description="Export a model as SavedModel, TF-TRT or ONNX, with a parity check.")
    p.set_defaults(handler=run)


def run(args) -> int:
    raise SystemExit("effdet export: not built yet")
