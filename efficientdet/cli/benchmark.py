"""`effdet benchmark`: measure latency and throughput of an exported model."""


def register(sub) -> None:
    p = sub.add_parser("benchmark", help="measure latency and throughput of an exported model", description="Measure latency and throughput of an exported model.")
    p.set_defaults(handler=run)


def run(args) -> int:
    raise SystemExit("effdet benchmark: not built yet")
