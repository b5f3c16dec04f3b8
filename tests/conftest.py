"""Shared fixtures: real servers on loopback (S3 via moto's server, an MLflow tracking server)."""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import efficientdet  # noqa: F401  (the process set-up runs before any test imports TensorFlow)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


class _CheckoutKfpFolders(importlib.abc.MetaPathFinder):
    """Finds `efficientdet.kfp_pipelines`/`kfp_components` in this checkout's pipelines/ and
    components/, as setup.py installs them: also when the checkout is only on PYTHONPATH, or an
    install of another checkout maps those names to its own folders."""

    def find_spec(self, fullname, path=None, target=None):
        prefix, _, folder = fullname.partition(".kfp_")
        if prefix != "efficientdet" or folder not in ("pipelines", "components"):
            return None
        init = REPO / folder / "__init__.py"
        return importlib.util.spec_from_file_location(
            fullname, init, submodule_search_locations=[str(init.parent)])


sys.meta_path.insert(0, _CheckoutKfpFolders())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 HTTP endpoint on loopback (moto's server); yields its URL."""
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url, proc)
        yield url
    finally:
        _stop(proc)


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """Points boto3 (and MLflow's S3 artifact store) at the loopback S3 server."""
    for key, value in S3_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_server)
    return s3_server


@pytest.fixture
def s3_bucket(s3_env):
    """A fresh, empty bucket on the loopback server; yields its name."""
    import uuid

    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_env).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server on loopback with a SQLite store; yields its URL."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--workers", "1"],
        stdout=open(root / "server.log", "wb"), stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health", proc, timeout=120)
        yield url
    finally:
        _stop(proc)


@pytest.fixture
def mlflow_env(mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    return mlflow_server


@pytest.fixture(autouse=True)
def _mlflow_experiment_per_test():
    """`mlflow.set_experiment` writes MLFLOW_EXPERIMENT_ID into os.environ and a module global;
    left over, one test's experiment id points the next test's runs into a store without it."""
    before = os.environ.get("MLFLOW_EXPERIMENT_ID")
    yield
    if before is None:
        os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    else:
        os.environ["MLFLOW_EXPERIMENT_ID"] = before
    fluent = sys.modules.get("mlflow.tracking.fluent")
    if fluent is not None:
        fluent._active_experiment_id = None


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory):
    """One MLflow SQLite store per test module (creating its tables takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def track_to(monkeypatch, request):
    """``track_to(uri, prefix)``: MLflow tracking on URI in an experiment named after this test,
    with no run, parent or KFP identity inherited from the environment; runs the test leaves
    open are ended afterwards and the tracking URI goes back to the environment's."""
    import mlflow

    from efficientdet import tracking

    def use(uri: str, prefix: str = "exp") -> str:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", f"{prefix}-{request.node.name[:40]}")
        for name in ("MLFLOW_RUN_ID", "EFFDET_MLFLOW_PARENT_RUN_ID", "KFP_PIPELINE_RUN_ID",
                     "KFP_TASK_NAME", "EFFDET_TRACKING", "MLFLOW_EXPERIMENT_ID"):
            monkeypatch.delenv(name, raising=False)
        tracking.reset_warning_state()
        mlflow.set_tracking_uri(uri)
        return uri

    yield use
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)
