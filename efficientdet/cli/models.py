"""`effdet models`: list model variants and describe one (parameters, GMACs, anchors)."""


def register(sub) -> None:
    p = sub.add_parser("models", help="list model variants and describe one (parameters, GMACs, anchors)", description="List model variants and describe one (parameters, GMACs, anchors).")
    p.set_defaults(handler=run)


def run(args) -> int:
    raise SystemExit("effdet models: not built yet")
