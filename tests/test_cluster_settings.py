"""The cluster's settings (ConfigMap env -> ClusterSettings), the one K=V parser, and the one
MPIJob builder: `effdet pipeline mpijob --dry-run` prints the job the training step creates."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from efficientdet import key_value
from efficientdet.cli import main
from efficientdet.orchestration import backends, mpijob
from efficientdet.orchestration.cluster_settings import (
    CONFIG_KEYS,
    SETTING_KEYS,
    ClusterSettings,
    ClusterSettingsError,
)

MANIFESTS = Path(__file__).resolve().parents[1] / "manifests"
CLUSTER_ENV = {
    "EFFDET_TRAIN_IMAGE": "reg/effdet-train:2", "EFFDET_S3_SECRET_NAME": "effdet-s3",
    "EFFDET_MPI_WORKERS": "3", "EFFDET_MPI_GPUS_PER_WORKER": "2",
    "EFFDET_MPI_SERVICE_ACCOUNT": "effdet-training", "EFFDET_MPI_RUN_AS_USER": "1000",
    "EFFDET_MPI_SSH_AUTH_MOUNT_PATH": "/home/mpiuser/.ssh",
    "EFFDET_MPI_NODE_SELECTOR": '{"pool": "a100"}',
    "EFFDET_MPI_TOLERATIONS": '[{"key": "dedicated", "operator": "Equal", "value": "ml", '
                              '"effect": "NoSchedule"}]',
    "EFFDET_MPI_WORKER_CPU": "8", "EFFDET_MPI_WORKER_MEMORY": "32Gi", "EFFDET_MPI_SHM_SIZE": "4Gi",
}


# -- settings from the environment -----------------------------------------------------------
def test_every_key_is_read_into_its_typed_field():
    s = ClusterSettings.from_env(CLUSTER_ENV)
    assert s == ClusterSettings(
        train_image="reg/effdet-train:2", s3_secret="effdet-s3", workers=3, gpus_per_worker=2,
        service_account="effdet-training", run_as_user=1000,
        ssh_auth_mount_path="/home/mpiuser/.ssh", node_selector={"pool": "a100"},
        tolerations=[{"key": "dedicated", "operator": "Equal", "value": "ml",
                      "effect": "NoSchedule"}],
        worker_cpu="8", worker_memory="32Gi", shm_size="4Gi")
    assert s.ranks == 6


def test_unset_and_empty_keys_keep_the_defaults():
    s = ClusterSettings.from_env({"EFFDET_MPI_WORKERS": "", "UNRELATED": "x"})
    assert s == ClusterSettings()
    assert (s.workers, s.gpus_per_worker, s.ranks) == (1, 0, 1)
    assert (s.worker_cpu, s.worker_memory, s.shm_size) == ("4", "16Gi", "8Gi")
    assert (s.ssh_auth_mount_path, s.run_as_user, s.service_account) == ("/root/.ssh", None, None)
    assert (s.train_image, s.s3_secret, s.node_selector, s.tolerations) == ("", "", {}, [])


@pytest.mark.parametrize("key, text, message", [
    ("EFFDET_MPI_WORKERS", "two", "EFFDET_MPI_WORKERS='two': not an integer"),
    ("EFFDET_MPI_RUN_AS_USER", "1000.0", "EFFDET_MPI_RUN_AS_USER='1000.0': not an integer"),
    ("EFFDET_MPI_NODE_SELECTOR", "pool=a100", "EFFDET_MPI_NODE_SELECTOR='pool=a100': not JSON"),
    ("EFFDET_MPI_TOLERATIONS", "[{", "EFFDET_MPI_TOLERATIONS='[{': not JSON"),
    ("EFFDET_MPI_NODE_SELECTOR", '["pool"]', "EFFDET_MPI_NODE_SELECTOR"),
    ("EFFDET_MPI_NODE_SELECTOR", '{"pool": 1}', "EFFDET_MPI_NODE_SELECTOR"),
    ("EFFDET_MPI_TOLERATIONS", '{"key": "x"}', "EFFDET_MPI_TOLERATIONS"),
    ("EFFDET_MPI_WORKERS", "0", "workers (EFFDET_MPI_WORKERS)"),
    ("EFFDET_MPI_GPUS_PER_WORKER", "-1", "gpus_per_worker (EFFDET_MPI_GPUS_PER_WORKER)"),
    ("EFFDET_MPI_WORKER_MEMORY", "lots", "worker_memory (EFFDET_MPI_WORKER_MEMORY)"),
    ("EFFDET_MPI_SERVICE_ACCOUNT", "Effdet_SA", "service_account (EFFDET_MPI_SERVICE_ACCOUNT)"),
])
def test_bad_values_fail_naming_their_key(key, text, message):
    with pytest.raises(ClusterSettingsError) as info:
        ClusterSettings.from_env({key: text})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_override_keeps_on_none_adds_selectors_and_appends_new_tolerations():
    base = ClusterSettings.from_env(CLUSTER_ENV)
    gpu = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    s = base.override(workers=None, worker_cpu="2", node_selector={"zone": "b"},
                      tolerations=[base.tolerations[0], gpu])
    assert (s.workers, s.worker_cpu) == (3, "2")
    assert s.node_selector == {"pool": "a100", "zone": "b"}
    assert s.tolerations == [base.tolerations[0], gpu]
    assert base.worker_cpu == "8"  # a copy; the original is unchanged
    with pytest.raises(TypeError, match="not a cluster setting: cpu"):
        base.override(cpu="2")
    with pytest.raises(ClusterSettingsError, match="workers"):
        base.override(workers=0)


def test_step_parameters_left_unset_keep_the_cluster_values():
    base = ClusterSettings.from_env(CLUSTER_ENV)
    assert base.with_step_parameters() == base
    assert base.with_step_parameters(train_image="", node_selector="") == base
    with pytest.raises(ClusterSettingsError, match="workers=0"):
        base.with_step_parameters(workers=0)
    with pytest.raises(ClusterSettingsError, match="gpus_per_worker=-1"):
        base.with_step_parameters(gpus_per_worker=-1)
    s = base.with_step_parameters(workers=1, gpus_per_worker=0, train_image="mine:1",
                                  worker_cpu="2", worker_memory="8Gi",
                                  node_selector="zone=b, disk=ssd", s3_secret="other-s3")
    assert (s.workers, s.gpus_per_worker, s.train_image, s.worker_cpu, s.worker_memory,
            s.s3_secret) == (1, 0, "mine:1", "2", "8Gi", "other-s3")
    assert s.node_selector == {"pool": "a100", "zone": "b", "disk": "ssd"}
    with pytest.raises(key_value.KeyValueError, match="node_selector 'zone'"):
        base.with_step_parameters(node_selector="zone")


def test_configmap_manifests_use_exactly_the_known_keys():
    """No dead keys in the ConfigMap, and the base spells out every cluster setting."""
    files = [MANIFESTS / "base/pipeline/pipeline-env.yaml",
             *sorted(MANIFESTS.glob("overlays/*/pipeline/pipeline-env.yaml"))]
    data = {f: yaml.safe_load(f.read_text())["data"] for f in files}
    for f, keys in data.items():
        assert set(keys) <= set(CONFIG_KEYS), f"{f}: unknown {set(keys) - set(CONFIG_KEYS)}"
        ClusterSettings.from_env(keys)  # and every value parses
    assert set(SETTING_KEYS.values()) <= set(data[files[0]])


def test_mpijob_backend_takes_cluster_defaults_from_the_settings_configmap(monkeypatch):
    monkeypatch.setenv("POD_NAMESPACE", "team-b")
    settings = ClusterSettings.from_env(CLUSTER_ENV).with_step_parameters(
        train_image="")
    spec = backends.backend_for("mpijob", settings, run_id="r", kfp_task="train").spec(
        ["--config", "x"], {})
    assert (spec.workers, spec.gpus_per_worker, spec.ranks) == (3, 2, 6)
    assert (spec.image, spec.cpu, spec.memory) == ("reg/effdet-train:2", "8", "32Gi")
    assert spec.node_selector == {"pool": "a100"}
    assert [t["key"] for t in spec.tolerations] == ["dedicated", "nvidia.com/gpu"]
    assert {s.secret for s in spec.secret_env} == {"effdet-s3"}
    m = mpijob.build_manifest(spec)
    assert m["spec"]["sshAuthMountPath"] == "/home/mpiuser/.ssh"
    worker = m["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]
    assert worker["serviceAccountName"] == "effdet-training"
    assert worker["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
        "seccompProfile": {"type": "RuntimeDefault"}}
    # explicit parameters win over the cluster's defaults
    settings = ClusterSettings.from_env(CLUSTER_ENV).with_step_parameters(
        workers=1, gpus_per_worker=0, train_image="mine:1", worker_cpu="2")
    spec = backends.backend_for("mpijob", settings, run_id="r", kfp_task="train").spec([], {})
    assert (spec.workers, spec.gpus_per_worker, spec.image, spec.cpu) == (1, 0, "mine:1", "2")


# -- the one K=V parser ------------------------------------------------------------------------
def test_key_value_parsing_and_errors():
    assert key_value.parse_pair(" a =b=c", "--env") == ("a", "b=c")
    assert key_value.parse_pairs(["a=1", "b=", "a=2"], "--env") == {"a": "2", "b": ""}
    assert key_value.parse_list("a=1, ,b=2", "--node-selector") == {"a": "1", "b": "2"}
    assert key_value.parse_list("", "x") == key_value.parse_list(None, "x") == {}
    with pytest.raises(key_value.KeyValueError, match="--param 'x': expected NAME=VALUE"):
        key_value.parse_pair("x", "--param", "NAME=VALUE")
    with pytest.raises(ValueError, match="--env '=v'"):
        key_value.parse_pairs(["=v"], "--env")
    with pytest.raises(ValueError, match=r"sel 'a=1,b': expected key=value\[,key=value\]"):
        key_value.parse_list("a=1,b", "sel")


# -- one builder: the dry run prints what the step creates -------------------------------------
def _step_manifest(train_args: list[str]) -> dict:
    """What the training component builds (components/train.py) from the same environment."""
    settings = ClusterSettings.from_env().with_step_parameters(
        train_image="", worker_cpu="", worker_memory="",
        node_selector="zone=b", s3_secret="")
    backend = backends.backend_for("mpijob", settings, run_id="run-7", kfp_task="train",
                                   mlflow_secret="effdet-mlflow", deadline_s=3600)
    return mpijob.build_manifest(backend.spec(train_args, backends.forwarded_env()))


def test_mpijob_dry_run_equals_the_job_the_training_step_creates(monkeypatch, capsys):
    env = {**CLUSTER_ENV, "POD_NAMESPACE": "team-a", "POD_NAME": "train-pod", "POD_UID": "u-1",
           "MLFLOW_TRACKING_URI": "http://mlflow:5000", "KFP_TASK_NAME": "train"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    train_args = ["--config", "efficientdet-d0-coco"]
    argv = ["pipeline", "mpijob", "--dry-run", "--run-id", "run-7", "--kfp-task", "train",
            "--node-selector", "zone=b", "--mlflow-secret", "effdet-mlflow",
            "--deadline", "3600", "--", *train_args]
    assert main(argv) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    step = _step_manifest(train_args)
    assert printed == step
    # and it carries the cluster's settings, not the CLI's own defaults
    worker = step["spec"]["mpiReplicaSpecs"]["Worker"]
    pod = worker["template"]["spec"]
    assert (worker["replicas"], step["spec"]["slotsPerWorker"]) == (3, 2)
    assert step["spec"]["sshAuthMountPath"] == "/home/mpiuser/.ssh"
    assert pod["securityContext"]["runAsUser"] == 1000
    assert pod["serviceAccountName"] == "effdet-training"
    assert pod["nodeSelector"] == {"pool": "a100", "zone": "b"}
    assert [t["key"] for t in pod["tolerations"]] == ["dedicated", "nvidia.com/gpu"]
    assert pod["containers"][0]["image"] == "reg/effdet-train:2"
    assert pod["containers"][0]["resources"]["limits"] == {
        "cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "2"}
    assert step["metadata"]["namespace"] == "team-a"


def test_mpijob_flags_override_single_settings(monkeypatch, capsys):
    for key, value in CLUSTER_ENV.items():
        monkeypatch.setenv(key, value)
    assert main(["pipeline", "mpijob", "--dry-run", "--image", "mine:1", "--workers", "1",
                 "--gpus-per-worker", "0", "--cpu", "2", "--namespace", "ns-x",
                 "--", "--config", "x"]) == 0
    job = yaml.safe_load(capsys.readouterr().out)
    worker = job["spec"]["mpiReplicaSpecs"]["Worker"]
    container = worker["template"]["spec"]["containers"][0]
    assert (worker["replicas"], container["image"], container["resources"]["limits"]) == (
        1, "mine:1", {"cpu": "2", "memory": "32Gi"})
    assert job["metadata"]["namespace"] == "ns-x"
    assert job["spec"]["sshAuthMountPath"] == "/home/mpiuser/.ssh"  # still the cluster's


def test_mpijob_without_image_anywhere_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.delenv("EFFDET_TRAIN_IMAGE", raising=False)
    assert main(["pipeline", "mpijob", "--", "--config", "x"]) == 2
    assert "no training image: set EFFDET_TRAIN_IMAGE" in capsys.readouterr().err


def test_mpijob_dry_run_alone_prints_the_steps_job_with_named_stand_ins(monkeypatch, capsys):
    from efficientdet.cli.pipeline import DRY_RUN_IMAGE, DRY_RUN_TRAIN_ARGS

    for key, value in CLUSTER_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("EFFDET_TRAIN_IMAGE")
    assert main(["pipeline", "mpijob", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    job = yaml.safe_load(out)
    pod = job["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]
    # the cluster's settings, as the step reads them; the stand-ins are named on stderr
    assert job["spec"]["sshAuthMountPath"] == "/home/mpiuser/.ssh"
    assert pod["serviceAccountName"] == "effdet-training"
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert pod["containers"][0]["image"] == DRY_RUN_IMAGE and DRY_RUN_IMAGE in err
    launcher = job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]
    assert launcher["command"][-4:] == ["effdet", "train", *DRY_RUN_TRAIN_ARGS]
    # a configured image is used as is
    monkeypatch.setenv("EFFDET_TRAIN_IMAGE", "reg/effdet-train:2")
    assert main(["pipeline", "mpijob", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert "reg/effdet-train:2" in out and DRY_RUN_IMAGE not in out + err
