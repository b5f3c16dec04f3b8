"""What `effdet pipeline run-local` shows: each step's own output and kfp.local's task status
lines, without the KFP executor's account of itself (its INFO lines and the whole executor
input as JSON, per step) or the dump of every output artifact; and the closing lines (the
headline metric and the registered model version)."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import sys

EXECUTOR_INFO = re.compile(r"\[KFP Executor [^\]]* INFO\]: ")
EXECUTOR_INPUT = "Got executor_input:"
LOCAL_RUNNER_CHATTER = re.compile(
    r"^(Streamed logs:|Task \S+ (outputs:|has no outputs)|Cleaned up workspace:)")


class ExecutorChatterFilter(io.TextIOBase):
    """A text stream that passes whole lines on to TARGET, except the KFP executor's INFO lines
    (with the executor input JSON that follows one of them) and blank lines."""

    def __init__(self, target):
        self.target = target
        self._partial = ""
        self._in_input_json = False
        self._json_indent: str | None = None

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            if self._keep(line):
                self.target.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.target.flush()

    def close_partial(self) -> None:
        """Pass on a last line that never got its newline."""
        if self._partial and self._keep(self._partial):
            self.target.write(self._partial)
        self._partial = ""
        self.target.flush()

    def _keep(self, line: str) -> bool:
        text = line.strip()
        if self._in_input_json:  # the JSON ends with the "}" indented as its "{"
            if self._json_indent is None:
                self._json_indent = line[:len(line) - len(line.lstrip())]
            elif line.rstrip() == self._json_indent + "}":
                self._in_input_json = False
            return False
        if EXECUTOR_INFO.search(line):
            self._in_input_json = line.rstrip().endswith(EXECUTOR_INPUT)
            self._json_indent = None
            return False
        return bool(text)


class _RunnerChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not LOCAL_RUNNER_CHATTER.match(record.getMessage())


@contextlib.contextmanager
def quiet_executor(enabled: bool = True):
    """Within the block, filter stdout through `ExecutorChatterFilter` and drop kfp.local's
    ``Streamed logs`` / ``Task ... outputs`` records (logged on the root logger)."""
    if not enabled:
        yield
        return
    stream, records = ExecutorChatterFilter(sys.stdout), _RunnerChatter()
    root = logging.getLogger()
    saved, sys.stdout = sys.stdout, stream
    root.addFilter(records)
    try:
        yield
    finally:
        root.removeFilter(records)
        stream.close_partial()
        sys.stdout = saved


HEADLINE_METRICS = ("AP", "AP50", "top1", "top5")


def closing_lines(result: dict) -> list[str]:
    """The end of a local run: its state, the evaluation's headline metrics, the registered
    model version (from the steps' MLflow runs) and where everything is."""
    steps = result.get("steps") or {}
    lines = [(f"pipeline run {result['run_id']}: {result['state']}; artifacts in "
              f"{result['pipeline_root']}; MLflow parent run {result['parent_run_id']}")]
    evaluation = next((s for name, s in steps.items() if name.startswith("evaluate")), None)
    if evaluation:
        shown = [f"{k} {evaluation['metrics'][k]:.4f}" for k in HEADLINE_METRICS
                 if k in evaluation["metrics"]]
        if shown:
            lines.append("evaluation: " + "  ".join(shown))
    registered = next((s for name, s in steps.items() if name.startswith("register")), None)
    tags = (registered or {}).get("tags", {})
    if tags.get("effdet.registered_model"):
        alias = tags.get("effdet.alias")
        lines.append(f"registered model: {tags['effdet.registered_model']} version "
                     f"{tags.get('effdet.registered_version')}"
                     + (f" (alias {alias})" if alias else " (no alias: below the threshold)"))
    lines += [f"  {step:<14} MLflow run {info['run_id']} ({info['status']})"
              for step, info in steps.items()]
    return lines
