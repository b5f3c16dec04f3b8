"""Untrusted values (JSON files, configs, CLI and pipeline parameters) become typed values by
exact rules, or one error line naming the input and the offending item.

Built on pydantic in strict mode: an int is an int (not 1.0, "1" or true), a bool is a bool,
numbers are finite and in range. `check` validates one value against one of the types below;
`describe` turns a pydantic error into the one line the CLI prints.
"""

from __future__ import annotations

import argparse
import functools
import re
from typing import Annotated, Any

from pydantic import Field, TypeAdapter, ValidationError

Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
PositiveNumber = Annotated[float, Field(strict=True, gt=0, allow_inf_nan=False)]
NonNegativeNumber = Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(strict=True, ge=0, lt=1, allow_inf_nan=False)]  # [0, 1)
Probability = Annotated[float, Field(strict=True, ge=0, le=1, allow_inf_nan=False)]  # [0, 1]
Box = Annotated[list[Number], Field(min_length=4, max_length=4)]  # four finite numbers
PositiveInt = Annotated[int, Field(strict=True, gt=0)]
NonNegativeInt = Annotated[int, Field(strict=True, ge=0)]
# Kubernetes names and values: pattern -> what the error message calls it
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_LABEL_KEY = (r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
              r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$"
_CONFIG_KEY = r"^[-._A-Za-z0-9]+$"
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_QUANTITY = r"^\+?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+|[KMGTPE]i|[mkMGTPE])?$"
_PATTERN_NAMES = {
    _DNS_LABEL: "a DNS-1123 label (lower-case letters, digits, '-')",
    _DNS_SUBDOMAIN: "a DNS-1123 subdomain (lower-case letters, digits, '-', '.')",
    _LABEL_KEY: "a label key ([prefix/]name of letters, digits, '-', '_', '.')",
    _LABEL_VALUE: "a label value (letters, digits, '-', '_', '.')",
    _CONFIG_KEY: "a Secret key (letters, digits, '-', '_', '.')",
    _ENV_NAME: "an environment variable name (letters, digits, '_')",
    _QUANTITY: "a Kubernetes quantity such as 4, 500m or 16Gi",
}
DNSLabel = Annotated[str, Field(strict=True, max_length=63, pattern=_DNS_LABEL)]
DNSSubdomain = Annotated[str, Field(strict=True, max_length=253, pattern=_DNS_SUBDOMAIN)]
LabelKey = Annotated[str, Field(strict=True, max_length=317, pattern=_LABEL_KEY)]
LabelValue = Annotated[str, Field(strict=True, max_length=63, pattern=_LABEL_VALUE)]
ConfigKey = Annotated[str, Field(strict=True, max_length=253, pattern=_CONFIG_KEY)]
EnvName = Annotated[str, Field(strict=True, pattern=_ENV_NAME)]
Quantity = Annotated[str, Field(strict=True, pattern=_QUANTITY)]

_MAX_SHOWN = 60


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN - 3] + "..."


def describe(exc: ValidationError, what: str) -> str:
    """The first error as ``what[loc]: message, got value`` (+ how many more)."""
    err = exc.errors()[0]
    loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
    msg = re.sub(r" or instance of \w+", "", err["msg"]).lower()
    if err["type"] == "string_pattern_mismatch":
        pattern = err["ctx"]["pattern"]
        msg = f"must be {_PATTERN_NAMES.get(pattern, f'a string matching {pattern}')}"
    more = exc.error_count() - 1
    return (f"{what}{loc}: {msg}, got {_show(err['input'])}"
            + (f" (and {more} more problems)" if more else ""))


@functools.cache
def _adapter(type_) -> TypeAdapter:
    return TypeAdapter(type_)


def check(value: Any, type_, what: str) -> Any:
    """``value`` validated as ``type_``, or a ValueError ``what: why, got value``."""
    try:
        return _adapter(type_).validate_python(value)
    except ValidationError as exc:
        raise ValueError(describe(exc, what)) from None


def arg(type_, parse=int):
    """An argparse ``type=``: the text parsed (``int`` or ``float``), then checked as ``type_``,
    so ``--workers -1`` or ``--score-threshold nan`` fail as usage errors naming the option."""
    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            kind = "an integer" if parse is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None
        try:
            return check(value, type_, "")
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc).lstrip(": ")) from None
    return convert
