"""The environment and CLI skeleton: what every other test stands on."""

import json
import subprocess
import sys

import pytest

from efficientdet.cli import COMMANDS, build_parser, main


def test_every_verb_has_help(capsys):
    parser = build_parser()
    for verb in COMMANDS:
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([verb, "--help"])
        assert exc.value.code == 0
        assert capsys.readouterr().out.strip()


def test_doctor_reports_horovod_with_gloo_and_exits_zero(capsys):
    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["checks"]
    assert report["horovod"]["ok"] and "gloo" in report["horovod"]["detail"]
    assert report["tensorflow"]["detail"].startswith("2.17")
    assert report["keras"]["detail"].startswith("3.")


def test_doctor_fails_on_required_gpu_with_one_line_reason(capsys):
    assert main(["doctor", "--require", "gpu"]) == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("effdet doctor: gpu:")


def test_doctor_rejects_unknown_requirement(capsys):
    assert main(["doctor", "--require", "warp-drive"]) == 2
    assert "warp-drive" in capsys.readouterr().err


def test_doctor_fails_when_configured_mlflow_does_not_answer(monkeypatch, capsys):
    from tests.conftest import free_port

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    assert main(["doctor", "--timeout", "1"]) == 1
    assert "mlflow" in capsys.readouterr().out.splitlines()[-1]


def test_doctor_checks_live_services(mlflow_env, s3_env, capsys):
    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["checks"]
    assert "answers" in report["mlflow"]["detail"]
    assert "answers" in report["s3"]["detail"]


def test_importing_tensorflow_prints_no_protobuf_errors():
    out = subprocess.run(
        [sys.executable, "-c", "import efficientdet, tensorflow"],
        capture_output=True, text=True, check=True,
    )
    assert "GetPrototype" not in out.stderr
