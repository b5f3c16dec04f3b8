"""`effdet pipeline`: compile, submit or run the Kubeflow pipeline; MPIJob tools."""


def register(sub) -> None:
    p = sub.add_parser("pipeline", help="compile, submit or run the Kubeflow pipeline; MPIJob tools", description="Compile, submit or run the Kubeflow pipeline; MPIJob tools.")
    p.set_defaults(handler=run)


def run(args) -> int:
    raise SystemExit("effdet pipeline: not built yet")
