"""The one layout of every evaluation report: a header that says what was evaluated (model, data,
MLflow run, config, date), then sections of tables and inline PNG charts.

The page is self-contained HTML (images inlined as base64 PNG, drawn by matplotlib with the Agg
backend, no display), so MLflow stores it as one artifact and Kubeflow shows it as an HTML output.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

_STYLE = ("body{font-family:sans-serif;margin:2em;max-width:70em}"
          "table{border-collapse:collapse;margin:0.5em 0}"
          "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}"
          "th{background:#f3f3f3}img{max-width:100%}.note{color:#555}"
          "table.header td:first-child{font-weight:bold}")


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


@dataclass(frozen=True)
class ReportHeader:
    """What a report is about. ``config``: the model variant and what shapes it (e.g.
    ``efficientdet-d0, 512x512, 90 classes``); ``run_id``: the MLflow run the evaluation is
    logged to; ``training_run_id``: the run that trained the model (from its model.json)."""

    model: str
    data: str
    config: str = ""
    run_id: str | None = None
    training_run_id: str | None = None
    date: str = field(default_factory=_utc_now)

    def rows(self) -> list[tuple[str, str]]:
        rows = [("Model", self.model), ("Data", self.data)]
        if self.config:
            rows.append(("Config", self.config))
        rows.append(("MLflow run", self.run_id or "none (not tracked)"))
        if self.training_run_id and self.training_run_id != self.run_id:
            rows.append(("Training run", self.training_run_id))
        rows.append(("Date", self.date))
        return rows


@dataclass(frozen=True)
class Section:
    """One part of the page: a heading and its body (HTML, already escaped)."""

    title: str
    body: str


def pyplot():
    """matplotlib.pyplot on the Agg backend (reports are drawn where no display exists)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def figure_png(fig) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    pyplot().close(fig)
    return buf.getvalue()


def image_tag(alt: str, png: bytes) -> str:
    return (f'<img alt="{html.escape(alt)}" '
            f'src="data:image/png;base64,{base64.b64encode(png).decode()}"/>')


def table(headers: Sequence[str], rows: Iterable[Sequence[object]],
          css_class: str = "") -> str:
    """An HTML table; cells are escaped, floats shown with 4 decimals, None as n/a."""
    def cell(value) -> str:
        if value is None:
            return "n/a"
        if isinstance(value, float):
            return f"{value:.4f}"
        return html.escape(str(value))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>"
                   for row in rows)
    attr = f' class="{css_class}"' if css_class else ""
    return f"<table{attr}>{f'<tr>{head}</tr>' if headers else ''}{body}</table>"


def note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def page(title: str, header: ReportHeader, sections: Sequence[Section]) -> str:
    """The whole report: title, header table, then the sections in order."""
    parts = "".join(f"<h2>{html.escape(s.title)}</h2>{s.body}" for s in sections)
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>{table((), header.rows(), 'header')}"
            f"{parts}</body></html>")


def write_files(output_dir: str, files: dict[str, bytes]) -> list[str]:
    """Write each named file into output_dir (local or s3://); returns their URIs in order."""
    from efficientdet import storage

    out = []
    for name, data in files.items():
        uri = storage.join(str(output_dir), name)
        storage.write_bytes(uri, data)
        out.append(uri)
    return out
