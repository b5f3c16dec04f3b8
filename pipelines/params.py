"""`--param k=v` pairs typed by the pipeline's own parameter declarations."""

from __future__ import annotations

from efficientdet import key_value
from efficientdet import validation as v

_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")
# Value rules beyond the declared type (a parameter left out keeps its default).
RULES = {
    **dict.fromkeys(("image_size", "steps", "batch_size", "workers", "deadline_seconds",
                     "num_shards", "eval_batch_size"), v.PositiveInt),
    **dict.fromkeys(("gpus_per_worker", "eval_interval"), v.NonNegativeInt),
    "epochs": v.NonNegativeNumber,
    "max_parity_drop": v.Probability,
    "learning_rate": v.PositiveNumber,
    "ema_decay": v.Fraction,
    "threshold": v.Number,
    "worker_cpu": v.Quantity,
    "worker_memory": v.Quantity,
}


def declared(pipeline) -> dict[str, str]:
    """{name: KFP type ('STRING', 'NUMBER_INTEGER', 'NUMBER_DOUBLE', 'BOOLEAN')}."""
    return {name: str(spec.type).upper() for name, spec in (pipeline.component_spec.inputs or {}).items()}


def coerce(pipeline, pairs: list[str]) -> dict:
    """Parses K=V pairs; ValueError naming the pair for unknown names and untypable values."""
    types = declared(pipeline)
    out: dict = {}
    for pair in pairs:
        name, value = key_value.parse_pair(pair, "--param", "NAME=VALUE")
        if name not in types:
            raise ValueError(f"--param {name}: not a parameter of {pipeline.name} "
                             f"(known: {', '.join(sorted(types))})")
        kind = types[name]
        try:
            if "INT" in kind:
                out[name] = int(value)
            elif "DOUBLE" in kind or "FLOAT" in kind:
                out[name] = float(value)
            elif "BOOL" in kind:
                low = value.lower()
                if low not in _TRUE + _FALSE:
                    raise ValueError(value)
                out[name] = low in _TRUE
            else:
                out[name] = value
        except ValueError:
            raise ValueError(f"--param {name}={value!r}: not a valid {kind.lower()}") from None
        if name in RULES and out[name] != "":
            v.check(out[name], RULES[name], f"--param {name}")
    return out


def missing_required(pipeline, given: dict) -> list[str]:
    inputs = pipeline.component_spec.inputs or {}
    return sorted(n for n, spec in inputs.items() if spec.default is None and not spec.optional
                  and n not in given)
