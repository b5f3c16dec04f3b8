"""`effdet train`: train a detector or classifier, on one process or under horovodrun/mpirun."""


def register(sub) -> None:
    p = sub.add_parser("train", help="train a detector or classifier, on one process or under horovodrun/mpirun", description="Train a detector or classifier, on one process or under horovodrun/mpirun.")
    p.set_defaults(handler=run)


def run(args) -> int:
    raise SystemExit("effdet train: not built yet")
