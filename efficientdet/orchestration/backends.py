"""Where distributed training runs: an MPIJob in a cluster, `horovodrun --gloo` on one machine.

The training step builds one `effdet train ...` command and hands it to a backend; the backend
decides how ranks are started, from the cluster's settings (`cluster_settings`). Both backends
stream the training log into the step's log and raise `LaunchError` with the last lines when
training fails.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from efficientdet.orchestration import mpijob
from efficientdet.orchestration.cluster_settings import (
    GPU_RESOURCE,
    MLFLOW_SECRET_KEYS,
    S3_SECRET_KEYS,
    SERVICE_KEYS,
    SETTING_KEYS,
    ClusterSettings,
    ClusterSettingsError,
)
from efficientdet.run_identity import IMAGE_ENV

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
BACKENDS = ("auto", "local", "mpijob")
_ERROR_LINE = re.compile(r"\b[A-Za-z_.]*(Error|Exception)\b: ")


class LaunchError(RuntimeError):
    """Training did not finish; the message carries the last lines of its log."""


class Backend(Protocol):
    def run(self, train_args: list[str], *, env: dict[str, str]) -> None: ...


def in_cluster() -> bool:
    """True inside a Kubernetes pod with a service account token (where an MPIJob can be made)."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and (SA_DIR / "token").is_file()


def train_command(args: list[str], *, python: str | None = None) -> list[str]:
    """`effdet train ARGS` as this interpreter runs it (no reliance on PATH)."""
    return [python or sys.executable, "-m", "efficientdet", "train", *args]


def horovodrun_command(np: int, command: list[str]) -> list[str]:
    """N local ranks over gloo: `horovodrun -np N -H localhost:N --gloo CMD`."""
    if np < 1:
        raise ValueError(f"np must be >= 1, got {np}")
    exe = Path(sys.executable).parent / "horovodrun"
    horovodrun = str(exe) if exe.exists() else (shutil.which("horovodrun") or "horovodrun")
    return [horovodrun, "-np", str(np), "-H", f"localhost:{np}", "--gloo", *command]


def run_streaming(cmd: list[str], *, env: dict[str, str] | None = None,
                  log: Callable[[str], None] | None = None, tail: int = 40) -> None:
    """Runs CMD, copying its output line by line into LOG; LaunchError with the tail on failure."""
    log = log or (lambda line: print(line, flush=True))
    last: collections.deque[str] = collections.deque(maxlen=tail)
    first_error = None  # the first rank's exception, before launcher noise buries it
    full_env = {**os.environ, **(env or {})}
    with subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            last.append(line)
            if first_error is None and _ERROR_LINE.search(line):
                first_error = line
            log(line)
        code = proc.wait()
    if code != 0:
        shown = "\n".join(f"  | {line}" for line in last)
        cause = f"\nfirst error: {first_error.strip()}" if first_error else ""
        raise LaunchError(f"{Path(cmd[0]).name} exited with code {code}{cause}\nlast lines:\n{shown}")


class LocalHorovodBackend:
    """`horovodrun -np N -H localhost:N --gloo python -m efficientdet train ...` (N=1: no Horovod)."""

    def __init__(self, np: int, log: Callable[[str], None] | None = None):
        if np < 1:
            raise ValueError(f"np must be >= 1, got {np}")
        self.np, self.log = np, log

    def command(self, train_args: list[str]) -> list[str]:
        cmd = train_command(train_args)
        return cmd if self.np == 1 else horovodrun_command(self.np, cmd)

    def run(self, train_args: list[str], *, env: dict[str, str]) -> None:
        run_streaming(self.command(train_args), env=env, log=self.log)


def pod_identity(environ: Mapping[str, str] | None = None,
                 ) -> tuple[str, tuple[str, str] | None]:
    """(namespace, (pod name, pod uid)) of the pod this runs in, from the downward API env
    (the training step sets it); outside a pod ("kubeflow", None)."""
    environ = os.environ if environ is None else environ
    namespace = environ.get("POD_NAMESPACE")
    if not namespace and (SA_DIR / "namespace").is_file():
        namespace = (SA_DIR / "namespace").read_text().strip()
    name = environ.get("POD_NAME") or environ.get("KFP_POD_NAME")
    uid = environ.get("POD_UID") or environ.get("KFP_POD_UID")
    return namespace or "kubeflow", ((name, uid) if name and uid else None)


GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}


@dataclass
class MPIJobBackend:
    """The training run as an MPIJob: `spec` is the one place a training job's spec is built
    from the cluster's settings (the training step and `effdet pipeline mpijob` both use it);
    `run` creates the job (adopting it on a retried step) and follows it."""

    settings: ClusterSettings
    run_id: str
    kfp_task: str
    mlflow_secret: str = ""  # Secret with MLFLOW_SECRET_KEYS, each optional ("" = none)
    extra_secret_env: list[mpijob.SecretEnv] = field(default_factory=list)
    namespace: str | None = None  # None: this pod's namespace (see pod_identity)
    gpu_toleration: bool = True  # GPU workers tolerate the nvidia.com/gpu taint
    cleanup: str = "delete-on-success"
    active_deadline_seconds: int | None = None
    backoff_limit: int = 0
    log: Callable[[str], None] | None = None
    api_client: object = None  # None: in-cluster credentials, else the kubeconfig

    def __post_init__(self):
        if not self.settings.train_image:
            raise ClusterSettingsError(
                f"no training image: set {SETTING_KEYS['train_image']} in the cluster's "
                "ConfigMap or give one (train_image parameter, --image)")

    def secret_env(self) -> list[mpijob.SecretEnv]:
        s3, mlflow = self.settings.s3_secret, self.mlflow_secret
        env = [mpijob.SecretEnv(k, s3, k) for k in S3_SECRET_KEYS if s3]
        env += [mpijob.SecretEnv(k, mlflow, k, optional=True) for k in MLFLOW_SECRET_KEYS
                if mlflow]
        return env + list(self.extra_secret_env)

    def tolerations(self) -> list[dict]:
        tolerations = list(self.settings.tolerations)
        if self.gpu_toleration and self.settings.gpus_per_worker and not any(
                t.get("key") == GPU_TOLERATION["key"] for t in tolerations):
            tolerations.append(dict(GPU_TOLERATION))
        return tolerations

    def spec(self, train_args: list[str], env: dict[str, str]) -> mpijob.MPIJobSpec:
        namespace, owner = pod_identity()
        s = self.settings
        return mpijob.MPIJobSpec(
            name=mpijob.job_name(self.run_id, self.kfp_task),
            run_key=mpijob.run_key(self.run_id, self.kfp_task),
            image=s.train_image, command=["effdet", "train", *train_args],
            namespace=self.namespace or namespace, workers=s.workers,
            gpus_per_worker=s.gpus_per_worker, cpu=s.worker_cpu, memory=s.worker_memory,
            shm_size=s.shm_size, tolerations=self.tolerations(),
            node_selector=dict(s.node_selector), env={**env, IMAGE_ENV: s.train_image},
            secret_env=self.secret_env(),
            service_account=s.service_account, ssh_auth_mount_path=s.ssh_auth_mount_path,
            run_as_user=s.run_as_user, active_deadline_seconds=self.active_deadline_seconds,
            backoff_limit=self.backoff_limit, owner_pod=owner,
            labels={"app.kubernetes.io/name": "efficientdet-train"},
        )

    def run(self, train_args: list[str], *, env: dict[str, str]) -> None:
        try:
            mpijob.run_job(self.spec(train_args, env), cleanup=self.cleanup, log=self.log,
                           api_client=self.api_client)
        except mpijob.MPIJobFailed as exc:
            raise LaunchError(str(exc)) from exc


def backend_for(mode: str, settings: ClusterSettings, *, run_id: str, kfp_task: str,
                mlflow_secret: str = "", cleanup: str = "delete-on-success",
                deadline_s: int = 0, log: Callable[[str], None] | None = None) -> Backend:
    """The backend for MODE ('auto': an MPIJob in a cluster, horovodrun elsewhere) with
    settings.ranks ranks."""
    if choose_backend(mode) == "local":
        return LocalHorovodBackend(settings.ranks, log=log)
    return MPIJobBackend(settings, run_id=run_id, kfp_task=kfp_task, mlflow_secret=mlflow_secret,
                         cleanup=cleanup, active_deadline_seconds=deadline_s or None, log=log)


def forwarded_env(environ=None) -> dict[str, str]:
    """The non-secret environment the ranks need: tracking, storage endpoint, KFP identity.
    Credentials are never copied here: in a cluster they come from Secrets."""
    environ = os.environ if environ is None else environ
    keys = SERVICE_KEYS + (
        "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID", "EFFDET_MLFLOW_PARENT_RUN_ID", "EFFDET_TRACKING",
        "KFP_PIPELINE_RUN_ID", "KFP_PIPELINE_RUN_URL", "KFP_PIPELINE_ID",
        "KFP_PIPELINE_VERSION_ID", "KFP_TASK_NAME", IMAGE_ENV)
    return {k: environ[k] for k in keys if environ.get(k)}


def choose_backend(mode: str = "auto") -> str:
    """'mpijob' in a cluster, 'local' elsewhere, unless the caller insists."""
    if mode not in BACKENDS:
        raise ValueError(f"backend {mode!r}: use one of {', '.join(BACKENDS)}")
    if mode == "auto":
        return "mpijob" if in_cluster() else "local"
    return mode
