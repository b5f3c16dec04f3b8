"""`effdet doctor`: report versions and capabilities, fail when a required one is missing."""

from __future__ import annotations

import json

from efficientdet import validation as v


def add_parser(sub) -> None:
    from efficientdet.doctor import REQUIRABLE

    p = sub.add_parser(
        "doctor",
        help="report TensorFlow/Keras/Horovod versions, GPUs, XLA, AMP, TF-TRT, MLflow and S3",
        description="Report what this machine can run. Exits 1 with a one-line reason when a "
        "configured service does not answer or a --require'd capability is missing.",
    )
    p.add_argument("--require", default="", metavar="LIST",
                   help=f"comma-separated capabilities that must be present: {','.join(REQUIRABLE)}")
    p.add_argument("--timeout", type=v.arg(v.PositiveNumber, float), default=5.0,
                   help="seconds to wait for MLflow and S3")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=run)


def run(args) -> int:
    from efficientdet.cli import UsageError
    from efficientdet.doctor import REQUIRABLE, failures, run_checks

    required = [r.strip() for r in args.require.split(",") if r.strip()]
    unknown = sorted(set(required) - set(REQUIRABLE))
    if unknown:
        raise UsageError(f"--require: unknown capability {', '.join(unknown)} (choose from {', '.join(REQUIRABLE)})")
    report = run_checks(timeout=args.timeout)
    failed = failures(report, required)
    if args.json:
        print(json.dumps({"checks": report.as_dict(), "ok": not failed}, indent=2))
    else:
        width = max(len(c.name) for c in report.checks)
        for c in report.checks:
            print(f"{'ok ' if c.ok else '-- '} {c.name:<{width}}  {c.detail}")
    if failed:
        first = failed[0]
        print(f"effdet doctor: {first.name}: {first.detail}"
              + (f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""))
        return 1
    return 0
