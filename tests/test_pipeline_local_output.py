"""What `effdet pipeline run-local` prints: the KFP executor's chatter left out, each step's own
lines and the task status kept, and closing lines with the headline metric and the registered
version."""

from __future__ import annotations

import io
import json
import logging
import sys

from efficientdet.kfp_pipelines.local_output import (
    ExecutorChatterFilter,
    closing_lines,
    quiet_executor,
)

EXECUTOR_INPUT = json.dumps({"inputs": {"parameterValues": {"steps": 3}}}, indent=4)
TASK = "\033[96m'train'\033[0m"  # kfp.local colours task names
SUBPROCESS_OUTPUT = (
    "[KFP Executor 2026-01-01 10:00:00,000 INFO]: Looking for component `train` in "
    "--component_module_path `/tmp/x/ephemeral_component.py`\n"
    "[KFP Executor 2026-01-01 10:00:00,001 INFO]: Loading KFP component \"train\" from x\n"
    "[KFP Executor 2026-01-01 10:00:00,002 INFO]: Got executor_input:\n"
    + "\n".join("    " + line for line in EXECUTOR_INPUT.splitlines()) + "\n"
    "    step 2/3  loss 1.5  lr 0.08  3.0 img/s  ETA 1.0s\n"
    "\n"
    "[KFP Executor 2026-01-01 10:00:09,000 WARNING]: something the user must see\n"
    "[KFP Executor 2026-01-01 10:00:09,000 INFO]: Wrote executor output file to /tmp/out.\n")


def test_executor_chatter_is_dropped_and_step_lines_kept():
    out = io.StringIO()
    stream = ExecutorChatterFilter(out)
    for piece in ("    ", SUBPROCESS_OUTPUT[:50], SUBPROCESS_OUTPUT[50:], "partial"):
        stream.write(piece)  # the indenting print writes a line in pieces
    stream.close_partial()
    assert out.getvalue().splitlines() == [
        "    step 2/3  loss 1.5  lr 0.08  3.0 img/s  ETA 1.0s",
        "[KFP Executor 2026-01-01 10:00:09,000 WARNING]: something the user must see",
        "partial"]


def test_quiet_executor_drops_the_outputs_dump_of_the_local_runner(capsys):
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    try:
        with quiet_executor():
            root.info(f"Executing task {TASK}")
            root.info("Streamed logs:\n")
            root.info(f"Task {TASK} finished with status SUCCESS")
            root.info(f"Task {TASK} outputs:\n    model: Model( name='model',")
            print(SUBPROCESS_OUTPUT, end="")
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"Executing task {TASK}",
                                         f"Task {TASK} finished with status SUCCESS"]
    assert "executor_input" not in captured.out and "parameterValues" not in captured.out
    assert "step 2/3" in captured.out


def test_quiet_executor_off_leaves_stdout_alone(capsys):
    with quiet_executor(enabled=False):
        print(SUBPROCESS_OUTPUT, end="")
    assert capsys.readouterr().out == SUBPROCESS_OUTPUT


def test_closing_lines_name_the_metric_and_the_registered_version():
    result = {"run_id": "local-1", "state": "SUCCEEDED", "pipeline_root": "/tmp/root",
              "parent_run_id": "p1", "error": None, "steps": {
                  "train": {"run_id": "r1", "status": "FINISHED", "metrics": {}, "tags": {}},
                  "evaluate": {"run_id": "r2", "status": "FINISHED",
                               "metrics": {"AP": 0.2312, "AP50": 0.5, "ARl": 0.1}, "tags": {}},
                  "register": {"run_id": "r3", "status": "FINISHED", "metrics": {}, "tags": {
                      "effdet.registered_model": "effdet-demo",
                      "effdet.registered_version": "3", "effdet.alias": "champion"}}}}
    assert closing_lines(result) == [
        "pipeline run local-1: SUCCEEDED; artifacts in /tmp/root; MLflow parent run p1",
        "evaluation: AP 0.2312  AP50 0.5000",
        "registered model: effdet-demo version 3 (alias champion)",
        "  train          MLflow run r1 (FINISHED)",
        "  evaluate       MLflow run r2 (FINISHED)",
        "  register       MLflow run r3 (FINISHED)"]
    result["steps"]["register"]["tags"]["effdet.alias"] = ""
    assert closing_lines(result)[2] == (
        "registered model: effdet-demo version 3 (no alias: below the threshold)")
