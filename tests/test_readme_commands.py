"""Every `effdet ...` command printed in the README (and in docs/*.md) runs as printed.

The fenced shell blocks are read from the files themselves, so a command edited in the docs is
checked as edited. Each `effdet` line goes through the CLI's own argument parser; `--param`
names and values are checked against the pipeline's real parameters (and `run-local`/`submit`
lines must give every required one); cheap lines (`pipeline compile`, `pipeline mpijob
--dry-run`, `models list`) run for real."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from efficientdet.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]
SHELL_FENCES = ("bash", "sh", "shell", "console")
# Placeholders the docs print where the reader puts a value: the fixed test value for each.
PLACEHOLDERS = {
    "MODEL_URI": "runs/d0/model",
    "OUT_URI": "exported/d0",
    '"$KFP_HOST"': "https://kfp.example.com",
    "$KFP_HOST": "https://kfp.example.com",
    "--mlflow-uri ...": "--mlflow-uri http://mlflow:5000",
    "--s3-endpoint ...": "--s3-endpoint http://minio:9000",
}
# Lines that are a synopsis of a command's options, not a command: [optional] parts,
# alternatives a|b|c. They are checked with each optional part and the first alternative.
_OPTIONAL = re.compile(r"\s\[[^\]]*\]")
_ALTERNATIVES = re.compile(r"(\S+?)\|\S+")


def _blocks(text: str):
    """(first line number, lines) of each fenced shell block, continuation lines joined."""
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if fence is None:
            if stripped.startswith("```") and stripped[3:].strip() in SHELL_FENCES:
                fence, start, lines = stripped[:3], number + 1, []
            continue
        if stripped.startswith(fence):
            yield start, lines
            fence = None
            continue
        lines.append((number, line))


def _commands(document: str):
    """(where, argv after `effdet`) of each `effdet` command in DOCUMENT's shell blocks."""
    for _, lines in _blocks((REPO / document).read_text()):
        pending, first = "", None
        for number, line in lines:
            if pending:
                line = pending + " " + line.strip()
            else:
                first = number
            if line.rstrip().endswith("\\"):
                pending = line.rstrip()[:-1].rstrip()
                continue
            pending = ""
            argv = _effdet_argv(_expand(line))
            if argv is not None:
                yield f"{document}:{first}", argv


def _expand(line: str) -> str:
    for placeholder, value in PLACEHOLDERS.items():
        line = line.replace(placeholder, value)
    line = _OPTIONAL.sub(lambda m: " " + m.group(0).strip()[1:-1], line)
    return _ALTERNATIVES.sub(r"\1", line)


def _effdet_argv(line: str) -> list[str] | None:
    """The arguments after `effdet` (after env assignments, or inside `horovodrun ... effdet`)."""
    if not re.search(r"(^|\s)effdet\s", line):
        return None
    words = shlex.split(line, comments=True)
    if "effdet" not in words:
        return None
    head = words[:words.index("effdet")]
    if head and head[0] != "horovodrun" and not all(re.match(r"^\w+=", w) for w in head):
        return None
    return words[words.index("effdet") + 1:]


COMMANDS = [pytest.param(argv, id=where) for document in DOCUMENTS
            for where, argv in _commands(document)]


def test_the_readme_has_commands_to_check():
    readme = [c for c in COMMANDS if c.id.startswith("README.md:")]
    assert len(readme) >= 20
    assert {c.values[0][0] for c in readme} >= {"train", "evaluate", "export", "pipeline"}


@pytest.mark.parametrize("argv", COMMANDS)
def test_command_parses_as_printed(argv):
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"effdet {shlex.join(argv)}: argument parsing exits {exc.code}")
    if args.command == "pipeline" and args.pipeline_command in ("submit", "run-local"):
        _check_params(args)


def _check_params(args) -> None:
    """--param names and values against the pipeline's declared parameters; all required given."""
    from efficientdet.kfp_pipelines import ClusterOptions, build
    from efficientdet.kfp_pipelines.params import coerce, missing_required

    pipeline = build(args.pipeline, ClusterOptions.local())
    given = coerce(pipeline, args.param)
    missing = missing_required(pipeline, given)
    if missing and not (args.pipeline_command == "submit" and args.package):
        pytest.fail(f"pipeline {args.pipeline_command} without --param for {', '.join(missing)}")


def _runnable(argv: list[str]) -> bool:
    return (argv[:2] == ["pipeline", "mpijob"] and "--dry-run" in argv) \
        or argv[:2] == ["pipeline", "compile"] or argv[:2] == ["models", "list"]


@pytest.mark.parametrize("argv", [c for c in COMMANDS if _runnable(c.values[0])])
def test_cheap_command_runs_as_printed(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 0, capsys.readouterr().err
    if "mpijob" in argv:
        assert yaml.safe_load(capsys.readouterr().out)["kind"] == "MPIJob"


def test_expansion_of_placeholders_and_synopses():
    assert _effdet_argv(_expand("KFP_TOKEN=... effdet pipeline submit --host $KFP_HOST  # x")) \
        == ["pipeline", "submit", "--host", "https://kfp.example.com"]
    assert _effdet_argv(_expand("effdet export --format saved_model|onnx [--json]")) \
        == ["export", "--format", "saved_model", "--json"]
    assert _effdet_argv("horovodrun -np 2 --gloo effdet train --config x") == \
        ["train", "--config", "x"]
    assert _effdet_argv("kubectl create secret generic effdet-s3") is None
    assert _effdet_argv("echo effdet is great") is None
