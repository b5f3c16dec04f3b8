"""Where distributed training runs: an MPIJob in a cluster, `horovodrun --gloo` on one machine.

The training step builds one `effdet train ...` command and hands it to a backend; the backend
decides how ranks are started. Both backends stream the training log into the step's log and
raise `LaunchError` with the last lines when training fails.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from efficientdet.pipeline import mpijob

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
BACKENDS = ("auto", "local", "mpijob")
_ERROR_LINE = re.compile(r"\b[A-Za-z_.]*(Error|Exception)\b: ")


class LaunchError(RuntimeError):
    """Training did not finish; the message carries the last lines of its log."""


@dataclass
class Resources:
    """The cluster-side shape of a training job (ignored by the local backend but `np`)."""

    workers: int = 1
    gpus_per_worker: int = 0
    cpu: str = "4"
    memory: str = "16Gi"
    shm_size: str = "8Gi"
    tolerations: list[dict] = field(default_factory=list)
    node_selector: dict[str, str] = field(default_factory=dict)

    @property
    def ranks(self) -> int:
        return self.workers * max(1, self.gpus_per_worker)


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


def _pod_identity() -> tuple[str, tuple[str, str] | None]:
    """(namespace, (pod name, pod uid)) of this step's pod, from the downward API env."""
    namespace = os.environ.get("POD_NAMESPACE")
    if not namespace and (SA_DIR / "namespace").is_file():
        namespace = (SA_DIR / "namespace").read_text().strip()
    name = os.environ.get("POD_NAME") or os.environ.get("KFP_POD_NAME")
    uid = os.environ.get("POD_UID") or os.environ.get("KFP_POD_UID")
    return namespace or "default", ((name, uid) if name and uid else None)


@dataclass
class MPIJobBackend:
    """Creates the MPIJob for this step (idempotent across retries) and follows it."""

    image: str
    resources: Resources
    run_id: str
    task: str
    secret_env: list[mpijob.SecretEnv] = field(default_factory=list)
    env_from_secrets: list[str] = field(default_factory=list)
    service_account: str | None = None
    ssh_auth_mount_path: str = "/root/.ssh"
    run_as_user: int | None = None
    cleanup: str = "delete-on-success"
    active_deadline_seconds: int | None = None
    backoff_limit: int = 0
    log: Callable[[str], None] | None = None

    def spec(self, train_args: list[str], env: dict[str, str]) -> mpijob.MPIJobSpec:
        namespace, owner = _pod_identity()
        r = self.resources
        return mpijob.MPIJobSpec(
            name=mpijob.job_name(self.run_id, self.task), run_key=mpijob.run_key(self.run_id, self.task),
            image=self.image, command=["effdet", "train", *train_args], namespace=namespace,
            workers=r.workers, gpus_per_worker=r.gpus_per_worker, cpu=r.cpu, memory=r.memory,
            shm_size=r.shm_size, tolerations=r.tolerations, node_selector=r.node_selector,
            env=env, secret_env=self.secret_env, env_from_secrets=self.env_from_secrets,
            service_account=self.service_account, ssh_auth_mount_path=self.ssh_auth_mount_path,
            run_as_user=self.run_as_user, active_deadline_seconds=self.active_deadline_seconds,
            backoff_limit=self.backoff_limit, owner_pod=owner,
            labels={"app.kubernetes.io/name": "efficientdet-train"},
        )

    def run(self, train_args: list[str], *, env: dict[str, str]) -> None:
        from kubernetes import client, config

        config.load_incluster_config()
        spec = self.spec(train_args, env)
        api = client.ApiClient()
        runner = mpijob.MPIJobRunner(client.CustomObjectsApi(api), client.CoreV1Api(api),
                                     spec.namespace, log=self.log, cleanup=self.cleanup)
        try:
            runner.run(mpijob.build_manifest(spec),
                       deadline_s=(self.active_deadline_seconds or 0) + 600
                       if self.active_deadline_seconds else None)
        except mpijob.MPIJobFailed as exc:
            raise LaunchError(str(exc)) from exc


def forwarded_env(environ=None) -> dict[str, str]:
    """The non-secret environment the ranks need: tracking, storage endpoint, KFP identity.
    Credentials are never copied here: in a cluster they come from Secrets."""
    environ = os.environ if environ is None else environ
    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID",
            "MLFLOW_RUN_ID", "EFFDET_MLFLOW_PARENT_RUN_ID", "EFFDET_TRACKING", "AWS_ENDPOINT_URL",
            "MLFLOW_S3_ENDPOINT_URL", "AWS_DEFAULT_REGION", "EFFDET_S3_ADDRESSING_STYLE",
            "KFP_PIPELINE_RUN_ID",
            "KFP_PIPELINE_RUN_URL", "KFP_PIPELINE_ID", "KFP_PIPELINE_VERSION_ID", "KFP_TASK_NAME")
    return {k: environ[k] for k in keys if environ.get(k)}


def choose_backend(mode: str = "auto") -> str:
    """'mpijob' in a cluster, 'local' elsewhere, unless the caller insists."""
    if mode not in BACKENDS:
        raise ValueError(f"backend {mode!r}: use one of {', '.join(BACKENDS)}")
    if mode == "auto":
        return "mpijob" if in_cluster() else "local"
    return mode
