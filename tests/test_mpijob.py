"""MPIJob backend: the manifest, and the lifecycle through the real kubernetes client over HTTP
against a loopback server that answers like the API server (tests/fake_kube_api.py)."""

from __future__ import annotations

import threading

import pytest

from efficientdet import validation
from efficientdet.orchestration import mpijob
from efficientdet.orchestration.mpijob import (
    MPIJobError,
    MPIJobFailed,
    MPIJobRunner,
    MPIJobSpec,
    SecretEnv,
    build_manifest,
)
from tests.fake_kube_api import FakeKubeAPI

NS = "kubeflow"


def _spec(**overrides) -> MPIJobSpec:
    values = {
        "name": mpijob.job_name("run-123", "train"),
        "run_key": mpijob.run_key("run-123", "train"),
        "image": "registry.example/effdet-train:1.0",
        "command": ["effdet", "train", "--config", "d0-coco", "--set", "steps=10"],
        "namespace": NS, "workers": 2, "gpus_per_worker": 4,
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "node_selector": {"nvidia.com/gpu.product": "A100-SXM4-80GB"},
        "env": {"MLFLOW_TRACKING_URI": "http://mlflow.kubeflow:5000",
                "AWS_ENDPOINT_URL": "http://seaweedfs.kubeflow:8333"},
        "secret_env": [SecretEnv("AWS_ACCESS_KEY_ID", "s3-creds", "access-key"),
                       SecretEnv("AWS_SECRET_ACCESS_KEY", "s3-creds", "secret-key")],
        "env_from_secrets": ["mlflow-creds"],
        "active_deadline_seconds": 7200, "owner_pod": ("train-pod-abc", "uid-1"),
    }
    values.update(overrides)
    return MPIJobSpec(**values)


# -- the manifest ---------------------------------------------------------------------------------
def test_job_name_is_stable_per_run_and_task_and_dns_safe():
    a = mpijob.job_name("run-123", "train")
    assert a == mpijob.job_name("run-123", "train")
    assert a != mpijob.job_name("run-124", "train") != mpijob.job_name("run-123", "train-2")
    assert validation.check(a, validation.DNSLabel, "job name") == a  # raises when not
    with pytest.raises(ValueError, match="run id"):
        mpijob.job_name("", "train")


def test_manifest_ranks_resources_scheduling_secrets_and_policies():
    m = build_manifest(_spec())
    assert m["apiVersion"] == "kubeflow.org/v2beta1" and m["kind"] == "MPIJob"
    spec = m["spec"]
    assert spec["slotsPerWorker"] == 4
    assert spec["launcherCreationPolicy"] == "WaitForWorkersReady"
    assert spec["runPolicy"] == {"cleanPodPolicy": "Running", "backoffLimit": 0,
                                 "ttlSecondsAfterFinished": 3600, "activeDeadlineSeconds": 7200}
    launcher = spec["mpiReplicaSpecs"]["Launcher"]
    worker = spec["mpiReplicaSpecs"]["Worker"]
    assert launcher["replicas"] == 1 and worker["replicas"] == 2
    cmd = launcher["template"]["spec"]["containers"][0]["command"]
    assert cmd[cmd.index("-np") + 1] == "8"  # 2 workers x 4 GPUs
    assert cmd[-6:] == ["effdet", "train", "--config", "d0-coco", "--set", "steps=10"]
    assert "AWS_SECRET_ACCESS_KEY" in cmd and "MLFLOW_TRACKING_URI" in cmd  # forwarded by name
    wc = worker["template"]["spec"]["containers"][0]
    assert wc["resources"]["limits"]["nvidia.com/gpu"] == "4"
    for role in (launcher, worker):
        tpl = role["template"]
        assert tpl["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
        pod = tpl["spec"]
        assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
        assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "A100-SXM4-80GB"}
        assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}} in pod["volumes"]
        c = pod["containers"][0]
        assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
        env = {e["name"]: e for e in c["env"]}
        assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
            "name": "s3-creds", "key": "secret-key"}
        assert "value" not in env["AWS_ACCESS_KEY_ID"]
        assert c["envFrom"] == [{"secretRef": {"name": "mlflow-creds"}}]
    owner = m["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("Pod", "train-pod-abc", "uid-1")
    assert m["metadata"]["labels"][mpijob.RUN_KEY_LABEL] == mpijob.run_key("run-123", "train")


def test_manifest_pod_templates_are_valid_kubernetes_pods():
    import kubernetes_validate

    m = build_manifest(_spec())
    for role, rs in m["spec"]["mpiReplicaSpecs"].items():
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": role.lower(), **rs["template"]["metadata"]},
               "spec": rs["template"]["spec"]}
        kubernetes_validate.validate(pod, "1.31", strict=True)


def test_non_root_pods_get_fs_group_and_drop_all_capabilities():
    job = build_manifest(_spec(run_as_user=1000, ssh_auth_mount_path="/home/mpiuser/.ssh"))
    assert job["spec"]["sshAuthMountPath"] == "/home/mpiuser/.ssh"
    for role in ("Launcher", "Worker"):
        pod = job["spec"]["mpiReplicaSpecs"][role]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["fsGroup"] == 1000
        ctx = pod["containers"][0]["securityContext"]
        assert ctx == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def test_cpu_job_has_one_slot_and_no_gpu_limit():
    m = build_manifest(_spec(gpus_per_worker=0, workers=3))
    assert m["spec"]["slotsPerWorker"] == 1
    worker = m["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in worker["resources"]["limits"]


@pytest.mark.parametrize("bad, match", [
    ({"name": "Bad_Name"}, "DNS-1123"),
    ({"workers": 0}, "workers"),
    ({"env": {"AWS_SECRET_ACCESS_KEY": "literal"}}, "credential"),
    ({"clean_pod_policy": "Sometimes"}, "clean_pod_policy"),
])
def test_manifest_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        build_manifest(_spec(**bad))


# -- the lifecycle, through the real client -------------------------------------------------------
@pytest.fixture
def kube():
    with FakeKubeAPI() as fake:
        yield fake


def _runner(kube, lines, **kw):
    from kubernetes import client

    api = kube.api_client()
    kw.setdefault("watch_timeout", 5)
    return MPIJobRunner(client.CustomObjectsApi(api), client.CoreV1Api(api), NS,
                        log=lines.append, **kw)


def _operator(kube, name, script):
    """Plays the mpi-operator in a thread once the job exists."""
    def play():
        kube.wait_until(lambda: (NS, name) in kube.jobs)
        script()
    t = threading.Thread(target=play, daemon=True)
    t.start()
    return t


def test_success_streams_launcher_log_and_deletes_job(kube):
    spec = _spec()
    name = spec.name

    def script():
        kube.add_condition(name, "Created", "MPIJobCreated")
        kube.add_pod(f"{name}-worker-0", name, "worker")
        kube.add_pod(f"{name}-launcher-x1", name, "launcher")
        kube.append_log(f"{name}-launcher-x1", "step 1 loss 3.2")
        kube.add_condition(name, "Running", "MPIJobRunning")
        kube.append_log(f"{name}-launcher-x1", "step 2 loss 2.9", "done")
        kube.set_pod_phase(f"{name}-launcher-x1", "Succeeded")
        kube.add_condition(name, "Succeeded", "MPIJobSucceeded", "finished")

    lines: list[str] = []
    t = _operator(kube, name, script)
    outcome = _runner(kube, lines).run(build_manifest(spec), deadline_s=30)
    t.join(5)
    assert (outcome.state, outcome.adopted, outcome.log_lines) == ("Succeeded", False, 3)
    log = [line for line in lines if not line.startswith("[mpijob]")]
    assert log == ["step 1 loss 3.2", "step 2 loss 2.9", "done"]
    assert (NS, name) not in kube.jobs  # deleted on success
    delete = [q for m, p, q, s in kube.requests if m == "DELETE"]
    assert delete and delete[0].get("propagationPolicy") == "Foreground"
    # the server saw exactly what build_manifest made
    assert kube.count("POST", "/mpijobs$") == 1


def test_retry_adopts_existing_job_on_409(kube):
    spec = _spec()
    kube.put_job(build_manifest(spec), NS)
    kube.add_condition(spec.name, "Running")
    kube.add_pod(f"{spec.name}-launcher-a", spec.name, "launcher", phase="Succeeded")
    kube.append_log(f"{spec.name}-launcher-a", "from the first attempt")
    kube.add_condition(spec.name, "Succeeded")

    lines: list[str] = []
    outcome = _runner(kube, lines, cleanup="keep").run(build_manifest(spec), deadline_s=30)
    assert outcome.adopted and outcome.state == "Succeeded"
    assert [s for m, p, q, s in kube.requests if m == "POST"] == [409]
    assert "from the first attempt" in lines
    assert (NS, spec.name) in kube.jobs  # cleanup="keep" leaves it


def test_409_for_a_job_of_another_run_is_an_error(kube):
    spec = _spec()
    kube.put_job(build_manifest(_spec(run_key="someone-else")), NS)
    with pytest.raises(MPIJobError, match="another run"):
        _runner(kube, []).run(build_manifest(spec))


def test_watch_expiry_resumes_and_410_gone_relists(kube):
    spec = _spec()
    name = spec.name

    def watches():
        return kube.count("GET", "/mpijobs$", watch="true")

    def script():
        kube.add_condition(name, "Created")
        kube.wait_until(lambda: watches() >= 2, timeout=15)  # one watch expired, a new one open
        kube.compact()  # history gone: the next resume from the old version gets 410
        kube.wait_until(lambda: any(s == 410 for *_, s in kube.requests), timeout=15)
        kube.add_pod(f"{name}-launcher-z", name, "launcher", phase="Succeeded")
        kube.append_log(f"{name}-launcher-z", "trained")
        kube.add_condition(name, "Succeeded")

    lines: list[str] = []
    t = _operator(kube, name, script)
    outcome = _runner(kube, lines, watch_timeout=1).run(build_manifest(spec), deadline_s=60)
    t.join(5)
    assert outcome.state == "Succeeded"
    assert any("410 Gone" in line for line in lines)
    statuses = [s for m, p, q, s in kube.requests if q.get("watch") == "true"]
    assert 410 in statuses and statuses.count(200) >= 2
    # after the 410 it listed again (no watch flag) before watching anew
    after = kube.requests[[s for *_, s in kube.requests].index(410) + 1:]
    assert any(m == "GET" and p.endswith("/mpijobs") and "watch" not in q for m, p, q, s in after)
    assert "trained" in lines


def test_failure_raises_with_launcher_last_lines_and_keeps_job(kube):
    spec = _spec()
    name = spec.name

    def script():
        kube.add_condition(name, "Created")
        kube.add_pod(f"{name}-launcher-f", name, "launcher")
        kube.add_condition(name, "Running")
        kube.append_log(f"{name}-launcher-f", *[f"step {i}" for i in range(100)])
        kube.append_log(f"{name}-launcher-f", "Traceback (most recent call last):",
                        "ValueError: loss is NaN at step 100")
        kube.set_pod_phase(f"{name}-launcher-f", "Failed")
        kube.add_condition(name, "Failed", "BackoffLimitExceeded", "launcher failed")

    t = _operator(kube, name, script)
    with pytest.raises(MPIJobFailed) as info:
        _runner(kube, [], tail_lines=5).run(build_manifest(spec), deadline_s=30)
    t.join(5)
    err = info.value
    assert err.reason == "BackoffLimitExceeded"
    assert err.log_tail[-1] == "ValueError: loss is NaN at step 100" and len(err.log_tail) == 5
    assert "ValueError: loss is NaN" in str(err) and "step 50" not in str(err)
    assert (NS, name) in kube.jobs  # delete-on-success keeps a failed job for inspection


def test_failure_with_cleanup_delete_removes_job(kube):
    spec = _spec()

    def script():
        kube.add_condition(spec.name, "Failed", "Evicted", "node lost")

    t = _operator(kube, spec.name, script)
    with pytest.raises(MPIJobFailed, match="node lost"):
        _runner(kube, [], cleanup="delete").run(build_manifest(spec), deadline_s=30)
    t.join(5)
    assert (NS, spec.name) not in kube.jobs


def test_job_deleted_underneath_is_reported(kube):
    spec = _spec()

    def script():
        kube.add_condition(spec.name, "Created")
        kube.wait_until(lambda: kube.count("GET", "/mpijobs$", watch="true") >= 1)
        with kube.cond:
            job = kube.jobs.pop((NS, spec.name))
            kube._bump(NS, "DELETED", job)

    t = _operator(kube, spec.name, script)
    with pytest.raises(MPIJobError, match="deleted"):
        _runner(kube, [], cleanup="keep", watch_timeout=1).run(build_manifest(spec), deadline_s=30)
    t.join(5)


def test_create_rejected_by_server_names_the_job(kube):
    manifest = build_manifest(_spec())
    del manifest["spec"]  # the API server answers 422 Invalid
    with pytest.raises(MPIJobError, match=f"creating MPIJob {manifest['metadata']['name']}.*422"):
        _runner(kube, []).run(manifest)


def test_restarted_launcher_logs_are_streamed_too(kube):
    spec = _spec(backoff_limit=2)
    name = spec.name

    def script():
        kube.add_pod(f"{name}-launcher-1", name, "launcher")
        kube.append_log(f"{name}-launcher-1", "attempt 1", "OSError: worker lost")
        kube.add_condition(name, "Running")
        kube.set_pod_phase(f"{name}-launcher-1", "Failed")
        kube.wait_until(lambda: kube.count("GET", "/pods/.*-launcher-1/log$") >= 1)
        kube.add_condition(name, "Restarting", "MPIJobRestarting")
        kube.add_pod(f"{name}-launcher-2", name, "launcher")
        kube.append_log(f"{name}-launcher-2", "attempt 2", "done")
        kube.add_condition(name, "Running")
        kube.set_pod_phase(f"{name}-launcher-2", "Succeeded")
        kube.add_condition(name, "Succeeded")

    lines: list[str] = []
    t = _operator(kube, name, script)
    outcome = _runner(kube, lines, watch_timeout=2).run(build_manifest(spec), deadline_s=30)
    t.join(5)
    assert outcome.state == "Succeeded"
    log = [line for line in lines if not line.startswith("[mpijob]")]
    assert log == ["attempt 1", "OSError: worker lost", "attempt 2", "done"]


def test_training_backend_creates_its_spec_through_the_shared_client_wiring(kube, monkeypatch):
    """MPIJobBackend.run -> mpijob.run_job (the wiring `effdet pipeline mpijob` uses too): the
    server gets exactly the manifest of `spec`, and a failed job is a LaunchError with the
    launcher's last lines."""
    from efficientdet.orchestration import backends
    from efficientdet.orchestration.cluster_settings import ClusterSettings

    monkeypatch.setenv("POD_NAMESPACE", NS)
    for key in ("POD_NAME", "POD_UID", "KFP_POD_NAME", "KFP_POD_UID"):
        monkeypatch.delenv(key, raising=False)
    lines: list[str] = []
    backend = backends.MPIJobBackend(
        ClusterSettings(train_image="reg/t:1", workers=2), run_id="run-9", kfp_task="train",
        cleanup="keep", log=lines.append, api_client=kube.api_client())
    spec = backend.spec(["--config", "x"], {"MLFLOW_TRACKING_URI": "http://m"})
    name = spec.name

    def script():
        kube.add_condition(name, "Created")
        kube.add_pod(f"{name}-launcher-q", name, "launcher")
        kube.add_condition(name, "Running")
        kube.append_log(f"{name}-launcher-q", "step 1", "ValueError: boom")
        kube.set_pod_phase(f"{name}-launcher-q", "Failed")
        kube.add_condition(name, "Failed", "BackoffLimitExceeded", "launcher failed")

    t = _operator(kube, name, script)
    with pytest.raises(backends.LaunchError, match="ValueError: boom"):
        backend.run(["--config", "x"], env={"MLFLOW_TRACKING_URI": "http://m"})
    t.join(5)
    created = kube.jobs[(NS, name)]
    assert created["spec"] == build_manifest(spec)["spec"]
    assert "step 1" in lines
