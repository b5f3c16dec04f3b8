"""The console module: durations, phase and evaluation lines, third-party noise switched off by
default and back on with `-v` (before or after the subcommand)."""

from __future__ import annotations

import logging
import os
import warnings

import pytest

from efficientdet import _compat, console


@pytest.fixture
def clean_console(monkeypatch):
    """configure() changes the environment, logger levels and warning filters: restore them."""
    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.setattr(_compat, "USER_TF_CPP_MIN_LOG_LEVEL", None)
    for key in console.QUIET_ENV:
        monkeypatch.delenv(key, raising=False)
    names = (*console.NOISY_LOGGERS, "mlflow")
    levels = {name: logging.getLogger(name).level for name in names}
    with warnings.catch_warnings():
        yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.parametrize(("seconds", "text"), [
    (0.84, "0.8s"), (41.2, "41s"), (151, "2m31s"), (3600, "1h00m"), (7325, "2h02m")])
def test_format_duration(seconds, text):
    assert console.format_duration(seconds) == text


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_format_duration_refuses_what_is_no_duration(bad):
    with pytest.raises(ValueError, match="duration"):
        console.format_duration(bad)


def test_phase_lines_go_to_stderr(capsys):
    console.phase("exporting onnx")
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "exporting onnx\n"


def test_quiet_by_default(clean_console):
    console.configure(False)
    assert logging.getLogger("tensorflow").level == logging.ERROR
    assert logging.getLogger("absl").level == logging.ERROR
    assert logging.getLogger("tf2onnx").level == logging.ERROR
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2" and not console.is_verbose()
    with warnings.catch_warnings(record=True) as seen:
        warnings.warn_explicit("old API", DeprecationWarning, "keras/src/x.py", 1,
                               module="keras.src.x")
        warnings.warn_explicit("ours", UserWarning, "efficientdet/x.py", 1,
                               module="efficientdet.x")
        warnings.warn_explicit("You may be attemping to run a task that uses custom or "
                               "non-Python base image", RuntimeWarning,
                               "kfp/local/subprocess_task_handler.py", 81,
                               module="kfp.local.subprocess_task_handler")
        warnings.warn_explicit("\x1b[33mAdd type hints to the `predict` method to enable data "
                               "validation", UserWarning, "efficientdet/export/x.py", 1,
                               module="efficientdet.export.x")
    assert [str(w.message) for w in seen] == ["ours"]
    assert os.environ["MLFLOW_LOGGING_LEVEL"] == "WARNING"
    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"


def test_verbose_brings_third_party_output_back(clean_console):
    console.configure(True)
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0" and console.is_verbose()
    assert logging.getLogger("absl").level == logging.NOTSET
    assert "MLFLOW_LOGGING_LEVEL" not in os.environ


def test_a_level_the_user_set_is_kept(clean_console, monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")
    monkeypatch.setattr(_compat, "USER_TF_CPP_MIN_LOG_LEVEL", "1")
    console.configure(True)
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1"


@pytest.mark.parametrize("argv", [
    ["-v", "doctor"], ["doctor", "-v"], ["doctor", "--verbose"],
    ["convert", "coco", "-v", "--annotations", "a", "--images", "b", "--output", "c"],
    ["pipeline", "run-local", "-v"]])
def test_verbose_before_or_after_the_subcommand(argv):
    from efficientdet.cli import build_parser

    assert build_parser().parse_args(argv).verbose is True


def test_not_verbose_without_the_flag():
    from efficientdet.cli import build_parser

    assert build_parser().parse_args(["doctor"]).verbose is False


def test_timed_phase_says_what_starts_and_how_long_it_took(capsys):
    with console.timed_phase("exporting onnx", "ONNX model written"):
        pass
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "exporting onnx ..."
    assert lines[1].startswith("ONNX model written in ") and lines[1].endswith("s")


def test_export_prints_the_onnx_check_as_one_sentence():
    from efficientdet.cli.export import onnx_check_line

    assert onnx_check_line({"unmatched": 0, "tied_at_cut": 0, "max_score_diff": 3.1e-6,
                            "max_box_diff": 0.00123, "detections": 200}) == (
        "passed: 200 detections, max score diff 3.1e-06, max box diff 0.0012 px")
    assert onnx_check_line({"max_probability_diff": 1e-7}) == (
        "passed: max probability diff 1e-07")


def test_train_ends_with_a_human_summary():
    from efficientdet.cli.train import summary_lines
    from efficientdet.training.config import build_config

    config = build_config({}, ["output=runs/d0", "data.train=data/train"])
    summary = {"model": "efficientdet-d0", "final_step": 20, "world_size": 1,
               "images_per_second": 10.04, "model_uri": "runs/d0/model",
               "checkpoint": "runs/d0/checkpoints/ckpt-20", "mlflow_run_id": "abc",
               "losses": {"loss": 1.765, "cls_loss": 1.105, "box_loss": 0.0132,
                          "l2_loss": 1.2, "total_loss": 2.965}}
    assert summary_lines(summary, 69.4, config) == [
        ("trained efficientdet-d0 for 20 steps in 1m09s on 1 rank(s), 10.0 img/s: "
         "loss 1.765 (cls 1.105 box 0.0132)  l2 1.2"),
        "model: runs/d0/model  (summary runs/d0/summary.json, DLLL log runs/d0/dllogger.json)",
        "last checkpoint: runs/d0/checkpoints/ckpt-20",
        "MLflow run: abc"]


def test_train_dllogger_stdout_flag_sets_the_config_key(tmp_path, capsys):
    from efficientdet.cli import main

    assert main(["train", "--config", "synth-detection", "--dllogger-stdout",
                 "--print-config"]) == 0
    assert "dllogger_stdout: true" in capsys.readouterr().out


@pytest.mark.parametrize("verbose", ["0", "1"])
def test_native_stderr_is_hidden_in_the_block_unless_verbose(verbose, monkeypatch, capfd):
    """absl's grappler INFO lines are written by C++ straight to file descriptor 2."""
    monkeypatch.setenv(console.VERBOSE_ENV, verbose)
    os.write(2, b"before\n")
    with pytest.raises(RuntimeError, match="kept"), console.native_stderr_quiet():
        os.write(2, b"native line\n")
        raise RuntimeError("the error is kept")
    os.write(2, b"after\n")
    err = capfd.readouterr().err
    assert err == ("before\nnative line\nafter\n" if verbose == "1" else "before\nafter\n")
