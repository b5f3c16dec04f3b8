"""`KEY=VALUE` text, parsed in one place: `--param`, `--env`, `--secret-env`, node selectors,
labels and config overrides all split a pair the same way and fail with the same kind of error,
naming the input and the form it expects."""

from __future__ import annotations

from collections.abc import Iterable


class KeyValueError(ValueError):
    """A pair without `=` or without a key; the message names the input."""


def _split(text: str) -> tuple[str, str] | None:
    key, sep, value = text.partition("=")
    key = key.strip()
    return (key, value) if sep and key else None


def parse_pair(text: str, what: str, form: str = "KEY=VALUE") -> tuple[str, str]:
    """'k=v' -> ('k', 'v'): the key stripped, the value kept as given (it may hold '=')."""
    pair = _split(text)
    if pair is None:
        raise KeyValueError(f"{what} {text!r}: expected {form}")
    return pair


def parse_pairs(items: Iterable[str], what: str, form: str = "KEY=VALUE") -> dict[str, str]:
    """Repeated 'k=v' options -> {k: v}; a later pair wins over an earlier one."""
    return dict(parse_pair(item, what, form) for item in items)


def parse_list(text: str | None, what: str, form: str = "key=value[,key=value]",
               ) -> dict[str, str]:
    """'k=v,k2=v2' -> {k: v, k2: v2}; blank terms are skipped, '' gives {}."""
    out = {}
    for term in filter(None, (t.strip() for t in (text or "").split(","))):
        pair = _split(term)
        if pair is None:
            raise KeyValueError(f"{what} {text!r}: expected {form}")
        out[pair[0]] = pair[1]
    return out
