"""The cluster's training defaults, read once from the settings ConfigMap's environment.

Every pipeline step gets the keys of the ConfigMap `effdet-pipeline-env`
(manifests/base/pipeline/pipeline-env.yaml) as environment variables. `ClusterSettings.from_env`
turns its EFFDET_* keys into one typed object, so the training step and `effdet pipeline mpijob`
build the MPIJob from the same values, and a bad value fails naming its key. The key lists and
Secret key names here are the only copies: `pipelines/options.py` compiles them into the steps.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from efficientdet import key_value
from efficientdet import validation as v

# Names the pipeline is compiled with unless told otherwise (`ClusterOptions`, the CLI).
CONFIG_MAP_NAME = "effdet-pipeline-env"
S3_SECRET_NAME = "effdet-s3"
MLFLOW_SECRET_NAME = "effdet-mlflow"
# The GPU resource (and node taint) of the cluster's device plugin.
GPU_RESOURCE = "nvidia.com/gpu"

# Keys of the Secrets; each becomes the environment variable of the same name.
S3_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
MLFLOW_SECRET_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                      "MLFLOW_TRACKING_TOKEN")

# ConfigMap keys the tracking and storage code read themselves (and the ranks get forwarded);
# EFFDET_KFP_UI_URL: the Kubeflow Pipelines UI the MLflow runs link their KFP run in.
SERVICE_KEYS = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "AWS_ENDPOINT_URL",
                "MLFLOW_S3_ENDPOINT_URL", "AWS_DEFAULT_REGION", "EFFDET_S3_ADDRESSING_STYLE",
                "EFFDET_KFP_UI_URL")
# ClusterSettings field -> the ConfigMap key that sets it.
SETTING_KEYS = {
    "s3_secret": "EFFDET_S3_SECRET_NAME",
    "train_image": "EFFDET_TRAIN_IMAGE",
    "workers": "EFFDET_MPI_WORKERS",
    "gpus_per_worker": "EFFDET_MPI_GPUS_PER_WORKER",
    "service_account": "EFFDET_MPI_SERVICE_ACCOUNT",
    "ssh_auth_mount_path": "EFFDET_MPI_SSH_AUTH_MOUNT_PATH",
    "run_as_user": "EFFDET_MPI_RUN_AS_USER",
    "node_selector": "EFFDET_MPI_NODE_SELECTOR",
    "tolerations": "EFFDET_MPI_TOLERATIONS",
    "worker_cpu": "EFFDET_MPI_WORKER_CPU",
    "worker_memory": "EFFDET_MPI_WORKER_MEMORY",
    "shm_size": "EFFDET_MPI_SHM_SIZE",
}
# Every key of the ConfigMap; each is optional, a cluster sets only what differs.
CONFIG_KEYS = SERVICE_KEYS + tuple(SETTING_KEYS.values())

_INT_FIELDS = ("workers", "gpus_per_worker", "run_as_user")
_JSON_FIELDS = {"node_selector": dict[str, str], "tolerations": list[dict[str, Any]]}
_RULES = {
    "workers": v.PositiveInt,
    "gpus_per_worker": v.NonNegativeInt,
    "worker_cpu": v.Quantity,
    "worker_memory": v.Quantity,
    "shm_size": v.Quantity,
    "service_account": v.DNSSubdomain | None,
    "run_as_user": v.NonNegativeInt | None,
    "node_selector": dict[str, str],
    "tolerations": list[dict[str, Any]],
}


class ClusterSettingsError(ValueError):
    """A cluster setting is unusable; the message names its ConfigMap key."""


@dataclass(frozen=True)
class ClusterSettings:
    """What a training job gets from the cluster unless the run asks otherwise. The field
    defaults are the defaults of a cluster whose ConfigMap sets nothing."""

    s3_secret: str = ""  # Secret with S3_SECRET_KEYS ("" = the ranks get no S3 credentials)
    train_image: str = ""
    workers: int = 1
    gpus_per_worker: int = 0
    service_account: str | None = None
    ssh_auth_mount_path: str = "/root/.ssh"  # where the image's sshd reads authorized keys
    run_as_user: int | None = None
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict] = field(default_factory=list)
    worker_cpu: str = "4"
    worker_memory: str = "16Gi"
    shm_size: str = "8Gi"

    def __post_init__(self):
        for name, rule in _RULES.items():
            try:
                v.check(getattr(self, name), rule, f"{name} ({SETTING_KEYS[name]})")
            except ValueError as exc:
                raise ClusterSettingsError(str(exc)) from None

    @property
    def ranks(self) -> int:
        """Training processes: one per GPU, one per worker without GPUs."""
        return self.workers * max(1, self.gpus_per_worker)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ClusterSettings:
        """The settings the ConfigMap's keys in ENVIRON (default os.environ) give; an unset or
        empty key keeps the default."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, key in SETTING_KEYS.items():
            text = environ.get(key)
            if text:
                values[name] = _parse(name, key, text)
        return cls(**values)

    def override(self, **changes: Any) -> ClusterSettings:
        """A copy with CHANGES (field=value) applied; None keeps this value. Node selector
        entries are added to these settings' own, tolerations appended unless already there."""
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise TypeError(f"not a cluster setting: {', '.join(unknown)}")
        values = {k: value for k, value in changes.items() if value is not None}
        if "node_selector" in values:
            values["node_selector"] = {**self.node_selector, **values["node_selector"]}
        if "tolerations" in values:
            values["tolerations"] = self.tolerations + [
                t for t in values["tolerations"] if t not in self.tolerations]
        return replace(self, **values)

    def with_step_parameters(self, *, workers: int | None = None,
                             gpus_per_worker: int | None = None, train_image: str | None = None,
                             worker_cpu: str | None = None, worker_memory: str | None = None,
                             node_selector: str | None = None,
                             s3_secret: str | None = None) -> ClusterSettings:
        """The training step's pipeline parameters over these settings: None (or "") keeps the
        cluster's value; NODE_SELECTOR is 'k=v[,k=v]'."""
        if workers is not None and workers < 1:
            raise ClusterSettingsError(f"workers={workers}: need at least one worker")
        if gpus_per_worker is not None and gpus_per_worker < 0:
            raise ClusterSettingsError(f"gpus_per_worker={gpus_per_worker}: must be >= 0")
        return self.override(
            workers=workers, gpus_per_worker=gpus_per_worker,
            train_image=train_image or None, worker_cpu=worker_cpu or None,
            worker_memory=worker_memory or None, s3_secret=s3_secret or None,
            node_selector=key_value.parse_list(node_selector or "", "node_selector") or None)


def _parse(name: str, key: str, text: str) -> Any:
    if name in _INT_FIELDS:
        try:
            return int(text)
        except ValueError:
            raise ClusterSettingsError(f"{key}={text!r}: not an integer") from None
    if name in _JSON_FIELDS:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ClusterSettingsError(f"{key}={text!r}: not JSON ({exc.msg})") from None
        try:
            return v.check(value, _JSON_FIELDS[name], key)
        except ValueError as exc:
            raise ClusterSettingsError(str(exc)) from None
    return text


DEFAULTS = ClusterSettings()
