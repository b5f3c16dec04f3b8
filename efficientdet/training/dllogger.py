"""JSON lines in NVIDIA dllogger's format (``DLLL {...}``), for tools that parse NVIDIA's logs.

Each line: ``DLLL {"timestamp": "<epoch s>", "datetime": "<ISO local>", "elapsedtime": <s since
start>, "type": "LOG"|"METADATA", "step": <int | [ints] | "PARAMETER" | []>, "data": {...}}``.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import time
from pathlib import Path
from typing import Any, TextIO

PREFIX = "DLLL "


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / tf scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


class DLLogger:
    """Writes each record to FILE and, when given, to STREAM (e.g. sys.stdout)."""

    def __init__(self, file: str | Path | None = None, stream: TextIO | None = None):
        self.start = time.time()
        self.stream = stream
        self._fh = None
        if file is not None:
            path = Path(file)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = path.open("a", encoding="utf-8")

    def _emit(self, type_: str, step, data: dict) -> str:
        now = time.time()
        record = {
            "timestamp": f"{now:.6f}",
            "datetime": _dt.datetime.fromtimestamp(now).isoformat(),
            "elapsedtime": round(now - self.start, 6),
            "type": type_,
            "step": _jsonable(step),
            "data": _jsonable(data),
        }
        line = PREFIX + json.dumps(record, sort_keys=False)
        for out in (self.stream, self._fh):
            if out is not None:
                out.write(line + "\n")
                out.flush()
        return line

    def log(self, step, data: dict) -> str:
        return self._emit("LOG", step, data)

    def metadata(self, metric: str, meta: dict) -> str:
        return self._emit("METADATA", [], {metric: meta})

    def parameters(self, params: dict) -> str:
        return self.log("PARAMETER", params)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def parse_line(line: str) -> dict | None:
    """The record of a ``DLLL`` line, or None for any other line."""
    line = line.strip()
    if not line.startswith(PREFIX):
        return None
    return json.loads(line[len(PREFIX):])
