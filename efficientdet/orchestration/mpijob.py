"""The MPIJob backend: build a kubeflow.org/v2beta1 MPIJob and see it through.

A training step in a cluster creates one MPIJob (a launcher plus N workers from the training
image), waits on its conditions with a watch, streams the launcher's log into the step's log and
fails with the launcher's last lines when the job fails. The job name is derived from the KFP run
and task, so a retried step finds (HTTP 409) and adopts the job its earlier attempt created
instead of starting a second one. Credentials only ever come from Kubernetes Secrets.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from efficientdet import validation as v
from efficientdet.orchestration.cluster_settings import DEFAULTS, GPU_RESOURCE

GROUP = "kubeflow.org"
VERSION = "v2beta1"
PLURAL = "mpijobs"
KIND = "MPIJob"
JOB_NAME_LABEL = "training.kubeflow.org/job-name"
JOB_ROLE_LABEL = "training.kubeflow.org/job-role"
RUN_KEY_LABEL = "efficientdet.io/run-key"
ISTIO_ANNOTATION = {"sidecar.istio.io/inject": "false"}
TERMINAL = ("Succeeded", "Failed")
CLEANUP_POLICIES = ("delete", "keep", "delete-on-success")


class MPIJobError(RuntimeError):
    """The MPIJob could not be created, adopted or followed."""


class MPIJobFailed(MPIJobError):
    """The MPIJob ended in the Failed condition; the message holds the launcher's last lines."""

    def __init__(self, name: str, reason: str, message: str, log_tail: list[str]):
        self.name, self.reason, self.log_tail = name, reason, log_tail
        tail = "\n".join(f"  | {line}" for line in log_tail) or "  | (no launcher log)"
        super().__init__(f"MPIJob {name} failed ({reason}): {message}\nlauncher log, last lines:\n{tail}")


@dataclass(frozen=True)
class SecretEnv:
    """One environment variable read from a key of a Kubernetes Secret (never a literal)."""

    env: str
    secret: str
    key: str
    optional: bool = False


@dataclass
class MPIJobSpec:
    """What the training step asks of the cluster. Ranks = workers x slots_per_worker."""

    name: str
    image: str
    command: list[str]
    namespace: str = "kubeflow"
    workers: int = 1
    gpus_per_worker: int = 0
    cpu: str = DEFAULTS.worker_cpu
    memory: str = DEFAULTS.worker_memory
    launcher_cpu: str = "1"
    launcher_memory: str = "2Gi"
    gpu_resource: str = GPU_RESOURCE
    shm_size: str = DEFAULTS.shm_size
    tolerations: list[dict] = field(default_factory=list)
    node_selector: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    secret_env: list[SecretEnv] = field(default_factory=list)
    env_from_secrets: list[str] = field(default_factory=list)
    service_account: str | None = None
    run_as_user: int | None = None
    image_pull_secrets: list[str] = field(default_factory=list)
    worker_command: list[str] = field(default_factory=lambda: ["/usr/sbin/sshd", "-De"])
    ssh_auth_mount_path: str = DEFAULTS.ssh_auth_mount_path
    clean_pod_policy: str = "Running"
    ttl_seconds_after_finished: int | None = 3600
    active_deadline_seconds: int | None = None
    backoff_limit: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    run_key: str = ""  # KFP run/task identity, checked before adopting an existing job
    owner_pod: tuple[str, str] | None = None  # (pod name, pod uid) of the step that launches it

    @property
    def slots_per_worker(self) -> int:
        return max(1, self.gpus_per_worker)

    @property
    def ranks(self) -> int:
        return self.workers * self.slots_per_worker

    def validate(self) -> None:
        """Every field by the API server's rules, so an invalid job is refused here, naming
        the field, rather than printed or sent."""
        rules = [
            ("MPIJob name", self.name, v.DNSLabel), ("namespace", self.namespace, v.DNSLabel),
            ("workers", self.workers, v.PositiveInt),
            ("gpus_per_worker", self.gpus_per_worker, v.NonNegativeInt),
            ("cpu", self.cpu, v.Quantity), ("memory", self.memory, v.Quantity),
            ("launcher_cpu", self.launcher_cpu, v.Quantity),
            ("launcher_memory", self.launcher_memory, v.Quantity),
            ("shm_size", self.shm_size, v.Quantity),
            ("service_account", self.service_account, v.DNSSubdomain | None),
            ("run_as_user", self.run_as_user, v.NonNegativeInt | None),
            ("ttl_seconds_after_finished", self.ttl_seconds_after_finished,
             v.NonNegativeInt | None),
            ("active_deadline_seconds", self.active_deadline_seconds, v.PositiveInt | None),
            ("backoff_limit", self.backoff_limit, v.NonNegativeInt),
            ("env", list(self.env), list[v.EnvName]),
            ("secret env", [s.env for s in self.secret_env], list[v.EnvName]),
            ("secret name", [s.secret for s in self.secret_env], list[v.DNSSubdomain]),
            ("secret key", [s.key for s in self.secret_env], list[v.ConfigKey]),
            ("node selector", self.node_selector, dict[v.LabelKey, v.LabelValue]),
            ("labels", self.labels, dict[v.LabelKey, v.LabelValue]),
        ]
        for what, value, rule in rules:
            v.check(value, rule, what)
        if not self.image:
            raise ValueError("image is empty")
        if not self.command:
            raise ValueError("command is empty")
        if self.clean_pod_policy not in ("None", "Running", "All"):
            raise ValueError(f"clean_pod_policy {self.clean_pod_policy!r}: use None, Running or All")
        for name in self.env:
            if _looks_secret(name):
                raise ValueError(
                    f"env {name} looks like a credential: pass it as SecretEnv, not a literal")


def _looks_secret(name: str) -> bool:
    upper = name.upper()
    return any(word in upper for word in ("SECRET", "PASSWORD", "TOKEN", "ACCESS_KEY"))


def job_name(run_id: str, task: str, prefix: str = "effdet-train") -> str:
    """A stable DNS-1123 name for the job of one task in one KFP run (same across retries)."""
    if not run_id or not task:
        raise ValueError("job_name needs both the KFP run id and the task name")
    digest = hashlib.sha256(f"{run_id}/{task}".encode()).hexdigest()[:12]
    return f"{prefix}-{digest}"


def run_key(run_id: str, task: str) -> str:
    """The label value tying a job to one task of one KFP run (a label-safe digest)."""
    return hashlib.sha256(f"{run_id}/{task}".encode()).hexdigest()[:40]


def launcher_command(spec: MPIJobSpec) -> list[str]:
    """mpirun over the operator's hostfile; forwards every env var the ranks need by name."""
    forwarded = ["PATH", "LD_LIBRARY_PATH", "PYTHONPATH"]
    forwarded += list(spec.env) + [s.env for s in spec.secret_env]
    cmd = ["mpirun", "--allow-run-as-root", "-np", str(spec.ranks), "-bind-to", "none",
           "-map-by", "slot", "-mca", "pml", "ob1", "-mca", "btl", "^openib",
           "-x", "NCCL_DEBUG=WARN"]
    for name in dict.fromkeys(forwarded):
        cmd += ["-x", name]
    return cmd + list(spec.command)


def _env(spec: MPIJobSpec) -> list[dict]:
    env = [{"name": k, "value": str(v)} for k, v in spec.env.items()]
    for s in spec.secret_env:
        ref = {"name": s.secret, "key": s.key}
        if s.optional:
            ref["optional"] = True
        env.append({"name": s.env, "valueFrom": {"secretKeyRef": ref}})
    return env


def _pod_template(spec: MPIJobSpec, role: str, container: dict) -> dict:
    labels = {**spec.labels, "app.kubernetes.io/component": f"mpi-{role}"}
    container = {
        **container,
        "name": role,
        "image": spec.image,
        "env": _env(spec),
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
    }
    if spec.env_from_secrets:
        container["envFrom"] = [{"secretRef": {"name": s}} for s in spec.env_from_secrets]
    pod_spec: dict = {
        "containers": [container],
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.shm_size}}],
    }
    if spec.tolerations:
        pod_spec["tolerations"] = list(spec.tolerations)
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.service_account:
        pod_spec["serviceAccountName"] = spec.service_account
    if spec.run_as_user is not None:
        # fsGroup makes the operator-mounted ssh keys readable by the non-root user.
        pod_spec["securityContext"] = {
            "runAsNonRoot": spec.run_as_user != 0, "runAsUser": spec.run_as_user,
            "runAsGroup": spec.run_as_user, "fsGroup": spec.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"}}
        container["securityContext"] = {"allowPrivilegeEscalation": False,
                                        "capabilities": {"drop": ["ALL"]}}
    if spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s} for s in spec.image_pull_secrets]
    return {"metadata": {"labels": labels, "annotations": dict(ISTIO_ANNOTATION)},
            "spec": pod_spec}


def build_manifest(spec: MPIJobSpec) -> dict:
    """The MPIJob object (a plain dict, as the API server takes it)."""
    spec.validate()
    worker_resources = {"cpu": spec.cpu, "memory": spec.memory}
    limits = dict(worker_resources)
    if spec.gpus_per_worker:
        limits[spec.gpu_resource] = str(spec.gpus_per_worker)
    launcher = _pod_template(spec, "launcher", {
        "command": launcher_command(spec),
        "resources": {"requests": {"cpu": spec.launcher_cpu, "memory": spec.launcher_memory},
                      "limits": {"cpu": spec.launcher_cpu, "memory": spec.launcher_memory}},
    })
    worker = _pod_template(spec, "worker", {
        "command": list(spec.worker_command),
        "resources": {"requests": worker_resources, "limits": limits},
    })
    run_policy: dict = {"cleanPodPolicy": spec.clean_pod_policy, "backoffLimit": spec.backoff_limit}
    if spec.ttl_seconds_after_finished is not None:
        run_policy["ttlSecondsAfterFinished"] = spec.ttl_seconds_after_finished
    if spec.active_deadline_seconds is not None:
        run_policy["activeDeadlineSeconds"] = spec.active_deadline_seconds
    metadata: dict = {
        "name": spec.name,
        "namespace": spec.namespace,
        "labels": {**spec.labels, "app.kubernetes.io/managed-by": "efficientdet",
                   **({RUN_KEY_LABEL: spec.run_key} if spec.run_key else {})},
        "annotations": dict(ISTIO_ANNOTATION),
    }
    if spec.owner_pod:
        pod_name, pod_uid = spec.owner_pod
        metadata["ownerReferences"] = [{
            "apiVersion": "v1", "kind": "Pod", "name": pod_name, "uid": pod_uid,
            "controller": False, "blockOwnerDeletion": False,
        }]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": metadata,
        "spec": {
            "slotsPerWorker": spec.slots_per_worker,
            "runLauncherAsWorker": False,
            "sshAuthMountPath": spec.ssh_auth_mount_path,
            "launcherCreationPolicy": "WaitForWorkersReady",
            "mpiImplementation": "OpenMPI",
            "runPolicy": run_policy,
            "mpiReplicaSpecs": {
                "Launcher": {"replicas": 1, "restartPolicy": "OnFailure", "template": launcher},
                "Worker": {"replicas": spec.workers, "restartPolicy": "OnFailure",
                           "template": worker},
            },
        },
    }


def job_state(job: dict) -> tuple[str, str, str]:
    """(condition type, reason, message) of the newest true condition; ("Pending", "", "") if none."""
    conditions = [c for c in (job.get("status") or {}).get("conditions") or []
                  if str(c.get("status")) == "True"]
    for terminal in TERMINAL:  # a terminal condition wins whatever its position
        for cond in conditions:
            if cond.get("type") == terminal:
                return terminal, cond.get("reason", ""), cond.get("message", "")
    if not conditions:
        return "Pending", "", ""
    last = conditions[-1]
    return last.get("type", "Pending"), last.get("reason", ""), last.get("message", "")


def _resource_version(obj: dict) -> str | None:
    return (obj.get("metadata") or {}).get("resourceVersion")


@dataclass
class JobOutcome:
    name: str
    state: str
    adopted: bool
    log_lines: int


class MPIJobRunner:
    """Creates (or adopts), follows and cleans up one MPIJob through the kubernetes client."""

    def __init__(self, custom_api, core_api, namespace: str, *,
                 log: Callable[[str], None] | None = None, watch_timeout: int = 60,
                 tail_lines: int = 40, cleanup: str = "delete-on-success"):
        if cleanup not in CLEANUP_POLICIES:
            raise ValueError(f"cleanup {cleanup!r}: use one of {', '.join(CLEANUP_POLICIES)}")
        self.custom, self.core, self.namespace = custom_api, core_api, namespace
        self.log = log or (lambda line: print(line, file=sys.stdout, flush=True))
        self.watch_timeout, self.tail_lines, self.cleanup = watch_timeout, tail_lines, cleanup
        self._streamed: set[str] = set()
        self.log_lines = 0

    # -- create / adopt -------------------------------------------------------------------
    def ensure(self, manifest: dict) -> tuple[dict, bool]:
        """Creates the job; on 409 Conflict (a retried step) adopts the existing one."""
        from kubernetes.client.exceptions import ApiException

        name = manifest["metadata"]["name"]
        try:
            job = self.custom.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, manifest)
            self.log(f"[mpijob] created {self.namespace}/{name}")
            return job, False
        except ApiException as exc:
            if exc.status != 409:
                raise MPIJobError(f"creating MPIJob {name} failed: HTTP {exc.status} {exc.reason}") from exc
        job = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        want = manifest["metadata"].get("labels", {}).get(RUN_KEY_LABEL)
        have = (job.get("metadata", {}).get("labels") or {}).get(RUN_KEY_LABEL)
        if want and want != have:
            raise MPIJobError(
                f"MPIJob {name} exists but belongs to another run ({RUN_KEY_LABEL}={have!r})")
        self.log(f"[mpijob] adopted existing {self.namespace}/{name} "
                 f"(state {job_state(job)[0]}) from an earlier attempt")
        return job, True

    # -- follow ---------------------------------------------------------------------------
    def _relist(self, name: str) -> tuple[dict, str]:
        listing = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, field_selector=f"metadata.name={name}")
        items = listing.get("items") or []
        if not items:
            raise MPIJobError(f"MPIJob {self.namespace}/{name} disappeared (deleted by someone else?)")
        return items[0], listing["metadata"]["resourceVersion"]

    def _launcher_pods(self, name: str) -> list:
        pods = self.core.list_namespaced_pod(
            self.namespace, label_selector=f"{JOB_NAME_LABEL}={name},{JOB_ROLE_LABEL}=launcher")
        return sorted(pods.items, key=lambda p: (p.metadata.creation_timestamp or 0, p.metadata.name))

    @staticmethod
    def _log_key(pod) -> str:
        """One key per launcher container run: a new pod, or a restart in place (OnFailure)."""
        restarts = 0
        for status in (pod.status.container_statuses or []) if pod.status else []:
            if status.name == "launcher":
                restarts = status.restart_count or 0
        return f"{pod.metadata.uid or pod.metadata.name}/{restarts}"

    def _stream_launcher_logs(self, name: str) -> None:
        """Follows each launcher container run's log once."""
        from kubernetes import watch

        for pod in self._launcher_pods(name):
            key = self._log_key(pod)
            if key in self._streamed or (pod.status and pod.status.phase == "Pending"):
                continue
            self._streamed.add(key)
            self.log(f"[mpijob] --- log of {pod.metadata.name} ---")
            for line in watch.Watch().stream(
                    self.core.read_namespaced_pod_log, name=pod.metadata.name,
                    namespace=self.namespace, container="launcher", follow=True):
                self.log(line)
                self.log_lines += 1

    def _log_tail(self, name: str) -> list[str]:
        from kubernetes.client.exceptions import ApiException

        pods = self._launcher_pods(name)
        if not pods:
            return []
        try:
            text = self.core.read_namespaced_pod_log(
                pods[-1].metadata.name, self.namespace, container="launcher",
                tail_lines=self.tail_lines)
        except ApiException:
            return []
        return text.splitlines()[-self.tail_lines:]

    def wait(self, name: str, deadline_s: float | None = None) -> dict:
        """Waits for Succeeded/Failed. Watch expiry resumes from the last resourceVersion;
        410 Gone (history compacted) re-lists and watches from the list's version."""
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        start = time.monotonic()
        job, rv = self._relist(name)
        last_state = None
        while True:
            state = job_state(job)
            if state[0] != last_state:
                self.log(f"[mpijob] {name}: {state[0]}" + (f" ({state[1]})" if state[1] else ""))
                last_state = state[0]
            if state[0] in TERMINAL:
                self._stream_launcher_logs(name)  # short jobs: read what the launcher wrote
                return job
            if state[0] in ("Running", "Restarting") and self._launcher_pods_unstreamed(name):
                self._stream_launcher_logs(name)
                job, rv = self._relist(name)  # the log may have taken long: look again
                continue
            if deadline_s is not None and time.monotonic() - start > deadline_s:
                raise MPIJobError(f"MPIJob {name} not finished after {deadline_s:.0f}s")
            w = watch.Watch()
            opened, events = time.monotonic(), 0
            try:
                for event in w.stream(self.custom.list_namespaced_custom_object, GROUP, VERSION,
                                      self.namespace, PLURAL,
                                      field_selector=f"metadata.name={name}",
                                      resource_version=rv, timeout_seconds=self.watch_timeout,
                                      allow_watch_bookmarks=True):
                    events += 1
                    obj = event["raw_object"]
                    rv = _resource_version(obj) or rv
                    if event["type"] == "BOOKMARK":
                        continue
                    if event["type"] == "DELETED":
                        raise MPIJobError(f"MPIJob {self.namespace}/{name} was deleted while running")
                    job = obj
                    if job_state(job)[0] != last_state:
                        w.stop()
                        break
            except ApiException as exc:
                if exc.status != 410:
                    raise
                self.log(f"[mpijob] watch of {name} expired (410 Gone): re-listing")
                job, rv = self._relist(name)
                continue
            if not events and time.monotonic() - opened < 1.0:
                time.sleep(1.0)  # a server that closes watches at once must not spin us

    def _launcher_pods_unstreamed(self, name: str) -> bool:
        return any(self._log_key(p) not in self._streamed
                   and not (p.status and p.status.phase == "Pending")
                   for p in self._launcher_pods(name))

    # -- cleanup --------------------------------------------------------------------------
    def delete(self, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name, propagation_policy="Foreground")
            self.log(f"[mpijob] deleted {self.namespace}/{name}")
        except ApiException as exc:
            if exc.status != 404:
                raise

    def run(self, manifest: dict, deadline_s: float | None = None) -> JobOutcome:
        """ensure -> wait -> cleanup; raises MPIJobFailed with the launcher's last lines."""
        name = manifest["metadata"]["name"]
        _, adopted = self.ensure(manifest)
        succeeded = False
        try:
            job = self.wait(name, deadline_s=deadline_s)
            state, reason, message = job_state(job)
            if state == "Failed":
                raise MPIJobFailed(name, reason or "Failed", message, self._log_tail(name))
            succeeded = True
            return JobOutcome(name, state, adopted, self.log_lines)
        finally:
            if self.cleanup == "delete" or (self.cleanup == "delete-on-success" and succeeded):
                self.delete(name)


# -- the Kubernetes client ----------------------------------------------------------------------
def kube_apis(api_client=None) -> tuple:
    """(CustomObjectsApi, CoreV1Api) over API_CLIENT; without one, in-cluster credentials in a
    pod, else the current kubeconfig."""
    from kubernetes import client, config

    if api_client is None:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        api_client = client.ApiClient()
    return client.CustomObjectsApi(api_client), client.CoreV1Api(api_client)


def run_job(spec: MPIJobSpec, *, cleanup: str = "delete-on-success",
            log: Callable[[str], None] | None = None, api_client=None) -> JobOutcome:
    """Creates (or adopts) the job SPEC describes and follows it to the end. Waits at most
    ten minutes past the job's own deadline, when it has one. MPIJobFailed when it fails."""
    manifest = build_manifest(spec)
    custom, core = kube_apis(api_client)
    runner = MPIJobRunner(custom, core, spec.namespace, log=log, cleanup=cleanup)
    deadline = spec.active_deadline_seconds
    return runner.run(manifest, deadline_s=deadline + 600 if deadline else None)
