"""Environment report: what this machine can run, and whether configured services answer."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    def add(self, name: str, ok: bool, detail: str) -> Check:
        check = Check(name, ok, detail)
        self.checks.append(check)
        return check

    def get(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    def as_dict(self) -> dict:
        return {c.name: asdict(c) for c in self.checks}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_tensorflow(report: Report) -> None:
    try:
        import tensorflow as tf
    except ImportError as exc:
        report.add("tensorflow", False, f"not importable: {exc}")
        return
    report.add("tensorflow", True, tf.__version__)
    try:
        import keras

        report.add("keras", keras.__version__.startswith("3."), keras.__version__)
    except ImportError as exc:
        report.add("keras", False, f"not importable: {exc}")

    gpus = tf.config.list_physical_devices("GPU")
    report.add("gpu", bool(gpus), f"{len(gpus)} visible" + (f": {[g.name for g in gpus]}" if gpus else ""))

    built = tf.sysconfig.get_build_info()
    report.add("cuda", bool(built.get("is_cuda_build")), str(built.get("cuda_version", "not a CUDA build")))

    try:
        fn = tf.function(lambda x: x * 2.0 + 1.0, jit_compile=True)
        fn(tf.ones([2]))
        report.add("xla", True, "jit_compile works")
    except Exception as exc:  # noqa: BLE001 - any failure means XLA is unusable here
        report.add("xla", False, f"jit_compile failed: {exc.__class__.__name__}")

    policy = "mixed_float16" if gpus else "mixed_bfloat16"
    try:
        x = tf.cast(tf.ones([4, 4]), tf.float16 if gpus else tf.bfloat16)
        tf.linalg.matmul(x, x)
        report.add("amp", True, f"{policy} supported")
    except Exception as exc:  # noqa: BLE001
        report.add("amp", False, f"{policy} unsupported: {exc.__class__.__name__}")

    try:
        from tensorflow.python.compiler.tensorrt import trt_convert
        from tensorflow.python.compiler.tensorrt import utils as trt_utils

        linked = trt_utils.is_linked_tensorrt_version_greater_equal(8, 0, 0)
        loaded = trt_convert._pywrap_py_utils.is_tensorrt_enabled()
        ok = bool(linked and loaded)
        detail = "TensorRT linked and loaded" if ok else (
            "TensorFlow is built without TensorRT (use the NGC training image)"
            if not linked else "TensorRT libraries not found at run time"
        )
        report.add("tensorrt", ok, detail)
    except Exception as exc:  # noqa: BLE001
        report.add("tensorrt", False, f"TF-TRT unavailable: {exc.__class__.__name__}")


def check_horovod(report: Report) -> None:
    try:
        import horovod.tensorflow as hvd
    except ImportError as exc:
        report.add("horovod", False, f"not importable: {exc}")
        return
    backends = [name for name, built in (
        ("gloo", hvd.gloo_built()), ("mpi", hvd.mpi_built()), ("nccl", hvd.nccl_built()),
    ) if built]
    report.add("horovod", bool(backends), f"{_version('horovod')} built with {', '.join(backends) or 'no controller'}")


def _http_ok(url: str, timeout: float) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status < 400, f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return False, str(getattr(exc, "reason", exc))


def check_mlflow(report: Report, timeout: float) -> None:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    version = _version("mlflow") or _version("mlflow-skinny")
    if not version:
        report.add("mlflow", False, "mlflow is not installed")
        return
    if not uri:
        report.add("mlflow", True, f"{version}; MLFLOW_TRACKING_URI not set (runs go to a local store)")
        return
    if uri.startswith(("http://", "https://")):
        ok, why = _http_ok(uri.rstrip("/") + "/health", timeout)
        report.add("mlflow", ok, f"{version}; {uri} {'answers' if ok else 'does not answer'} ({why})")
    else:
        report.add("mlflow", True, f"{version}; local store {uri}")


def check_s3(report: Report, timeout: float) -> None:
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("MLFLOW_S3_ENDPOINT_URL")
    if not endpoint:
        report.add("s3", True, "no S3 endpoint configured (AWS_ENDPOINT_URL); AWS default if used")
        return
    try:
        import boto3
        from botocore.config import Config

        client = boto3.client("s3", endpoint_url=endpoint, config=Config(
            connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 1}))
        buckets = client.list_buckets().get("Buckets", [])
        report.add("s3", True, f"{endpoint} answers ({len(buckets)} buckets visible)")
    except Exception as exc:  # noqa: BLE001 - report any failure to reach the endpoint
        report.add("s3", False, f"{endpoint} does not answer: {exc.__class__.__name__}: {exc}")


def run_checks(timeout: float = 5.0) -> Report:
    report = Report()
    report.add("python", True, platform.python_version())
    check_tensorflow(report)
    check_horovod(report)
    check_mlflow(report, timeout)
    check_s3(report, timeout)
    for dist in ("kfp", "kfp-kubernetes", "kubernetes", "boto3", "pycocotools", "tf2onnx", "onnxruntime"):
        version = _version(dist)
        report.add(dist, version is not None, version or "not installed")
    return report


# Checks that a missing piece makes fatal only when the user asks for them (--require).
REQUIRABLE = ("gpu", "horovod", "xla", "amp", "tensorrt", "mlflow", "s3", "kfp", "tf2onnx", "onnxruntime")
# Checks whose failure is always fatal: configured services that do not answer, a broken core.
ALWAYS_REQUIRED = ("tensorflow", "keras", "mlflow", "s3")


def failures(report: Report, required: list[str]) -> list[Check]:
    names = list(dict.fromkeys([*ALWAYS_REQUIRED, *required]))
    out = []
    for name in names:
        check = report.get(name)
        if check is None:
            out.append(Check(name, False, "not checked"))
        elif not check.ok:
            out.append(check)
    return out
