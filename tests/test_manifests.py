"""The kustomize manifests: they render offline, validate against the Kubernetes OpenAPI schemas,
hold the security properties a platform team checks, and agree with each other (namespaces,
hosts, images). A real MLflow server runs with the Deployment's own arguments."""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.conftest import BIN, _stop, free_port, wait_http

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "manifests"
K8S_VERSIONS = ("1.30", "1.31", "1.32")
OVERLAYS = ("lab", "multinode")
# Every kustomization that must render offline (mpi-operator is a remote base, on purpose not here).
RENDERED = (
    "overlays/lab",
    "overlays/multinode",
    "smoke/lab",
    "smoke/multinode",
    "kfp-mlflow-plugin",
    "base/system",
    "base/pipeline",
    "smoke/base",
)
POD_OWNERS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job")
SECRET_NAME = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL|API_KEY",
                         re.IGNORECASE)
SECRET_VALUE = re.compile(
    r"-----BEGIN|\bAKIA[0-9A-Z]{16}\b|\bASIA[0-9A-Z]{16}\b|\bghp_[0-9A-Za-z]{20,}|"
    r"://[^/\s:@]+:[^/\s@]+@"  # credentials inside a URL
)
EXPECTED_TRAINING_RULES = [
    {"apiGroups": ["kubeflow.org"], "resources": ["mpijobs"],
     "verbs": ["create", "get", "list", "watch", "delete"]},
    {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list", "watch"]},
]
MLFLOW_LABELS = {"app.kubernetes.io/name": "mlflow", "app.kubernetes.io/component": "tracking-server"}


def _kubectl() -> str:
    path = shutil.which("kubectl")
    if not path:
        pytest.fail("kubectl is not installed (scripts/bootstrap.sh installs it): the manifests "
                    "cannot be rendered")
    return path


@functools.cache
def _render_text(rel: str) -> str:
    proc = subprocess.run([_kubectl(), "kustomize", str(MANIFESTS / rel)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"kubectl kustomize {rel} failed:\n{proc.stderr}"
    return proc.stdout


def render(rel: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(_render_text(rel)) if d]


def find(objs: list[dict], kind: str, name: str) -> dict:
    hits = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(hits) == 1, f"expected one {kind}/{name}, found {len(hits)}"
    return hits[0]


def pod_specs(objs: list[dict]):
    """(where, pod spec, pod metadata) of every pod any rendered object would create."""
    for o in objs:
        where = f"{o['kind']}/{o['metadata']['name']}"
        if o["kind"] in POD_OWNERS:
            tpl = o["spec"]["template"]
            yield where, tpl["spec"], tpl.get("metadata", {})
        elif o["kind"] == "CronJob":
            tpl = o["spec"]["jobTemplate"]["spec"]["template"]
            yield where, tpl["spec"], tpl.get("metadata", {})
        elif o["kind"] == "Pod":
            yield where, o["spec"], o["metadata"]
        elif o["kind"] == "MPIJob":
            for role, replica in o["spec"]["mpiReplicaSpecs"].items():
                yield f"{where}[{role}]", replica["template"]["spec"], replica["template"].get(
                    "metadata", {})


def containers(spec: dict):
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def mpijob_schema_validator():
    schema = json.loads((MANIFESTS / "schemas" / "mpijob-v2beta1.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def validate_mpijob(obj: dict, version: str) -> None:
    """MPIJob is a CRD, not in the Kubernetes schemas: its structure against our JSON schema of
    the v2beta1 API, each pod template as a core/v1 Pod against the Kubernetes schema."""
    errors = [e.message for e in mpijob_schema_validator().iter_errors(obj)]
    assert not errors, f"MPIJob {obj['metadata']['name']}: {errors}"
    for role, replica in obj["spec"]["mpiReplicaSpecs"].items():
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {**replica["template"].get("metadata", {}),
                            "name": f"{obj['metadata']['name']}-{role.lower()}"},
               "spec": replica["template"]["spec"]}
        kubernetes_validate.validate(pod, version, strict=True)


# -- rendering and schema validation ------------------------------------------------------------

def test_every_kustomization_is_rendered_by_these_tests_except_the_remote_mpi_operator():
    found = {str(p.parent.relative_to(MANIFESTS)) for p in MANIFESTS.rglob("kustomization.yaml")}
    components = {str(p.parent.relative_to(MANIFESTS)) for p in MANIFESTS.rglob("kustomization.yaml")
                  if yaml.safe_load(p.read_text()).get("kind") == "Component"}
    sub_parts = {f"overlays/{o}/{part}" for o in OVERLAYS for part in ("system", "pipeline")}
    assert found - components - sub_parts - {"mpi-operator"} == set(RENDERED)


@pytest.mark.parametrize("rel", RENDERED)
def test_renders_offline_and_validates_against_kubernetes_schemas(rel):
    objs = render(rel)
    assert objs, f"{rel} rendered nothing"
    for version in K8S_VERSIONS:
        for obj in objs:
            if obj["kind"] == "MPIJob":
                validate_mpijob(obj, version)
            else:
                kubernetes_validate.validate(obj, version, strict=True)


def test_schema_validation_catches_mistakes():
    """The validators used above do reject bad objects (a test that could not fail is no test)."""
    deployment = find(render("overlays/lab"), "Deployment", "mlflow")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)
    job = json.loads(json.dumps(find(render("smoke/lab"), "MPIJob", "effdet-smoke")))
    job["spec"]["slotPerWorker"] = 1
    assert list(mpijob_schema_validator().iter_errors(job))
    job = json.loads(json.dumps(find(render("smoke/lab"), "MPIJob", "effdet-smoke")))
    job["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["ports"][0][
        "containerPort"] = "ssh"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_mpijob(job, K8S_VERSIONS[-1])


def test_mpi_operator_is_a_separate_remote_step_pinned_to_v0_8():
    kust = yaml.safe_load((MANIFESTS / "mpi-operator" / "kustomization.yaml").read_text())
    (url,) = kust["resources"]
    assert re.fullmatch(r"https://raw\.githubusercontent\.com/kubeflow/mpi-operator/v0\.8\.\d+/"
                        r"deploy/v2beta1/mpi-operator\.yaml", url)
    for rel in RENDERED:
        assert "mpi-operator" not in _render_text(rel).replace("mpi-operator.yaml", "")


# -- security properties on the rendered objects -------------------------------------------------

@pytest.fixture(scope="module", params=("overlays/lab", "overlays/multinode", "smoke/lab",
                                        "smoke/multinode", "kfp-mlflow-plugin"))
def rendered(request):
    return request.param, render(request.param)


def test_no_secret_objects_and_no_literal_credentials(rendered):
    rel, objs = rendered
    assert not [o for o in objs if o["kind"] == "Secret"], f"{rel} renders a Secret"
    for o in objs:
        if o["kind"] == "ConfigMap":
            for key, value in (o.get("data") or {}).items():
                if key.endswith("_SECRET_NAME"):  # names a Secret: must be a name, not data
                    assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", value), f"{rel} {key}"
                else:
                    assert not SECRET_NAME.search(key) or not value, f"{rel} ConfigMap key {key}"
                assert not SECRET_VALUE.search(value), f"{rel} ConfigMap value of {key}"
    for where, spec, _ in pod_specs(objs):
        for c in containers(spec):
            for env in c.get("env", []):
                if "value" in env:
                    assert not SECRET_NAME.search(env["name"]), \
                        f"{rel} {where}: {env['name']} is a literal, use secretKeyRef"
                    assert not SECRET_VALUE.search(str(env["value"])), f"{rel} {where}: {env['name']}"
            for arg in c.get("args", []) + c.get("command", []):
                assert not SECRET_VALUE.search(arg), f"{rel} {where}: credential in {arg!r}"


def test_pods_run_non_root_unprivileged_with_seccomp_and_no_host_access(rendered):
    rel, objs = rendered
    for where, spec, _ in pod_specs(objs):
        pod_sc = spec.get("securityContext", {})
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(key), f"{rel} {where}: {key}"
        assert not [v for v in spec.get("volumes", []) if "hostPath" in v], f"{rel} {where}: hostPath"
        for c in containers(spec):
            sc = c.get("securityContext", {})
            label = f"{rel} {where}/{c['name']}"
            assert sc.get("privileged") is not True, f"{label}: privileged"
            assert sc.get("allowPrivilegeEscalation") is False, f"{label}: privilege escalation"
            assert "ALL" in sc.get("capabilities", {}).get("drop", []), f"{label}: drop ALL"
            assert not sc.get("capabilities", {}).get("add"), f"{label}: adds capabilities"
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, f"{label}: root"
            assert sc.get("runAsUser", pod_sc.get("runAsUser", 1000)) != 0, f"{label}: uid 0"
            seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", f"{label}: seccomp"


def test_images_are_pinned_and_containers_have_resources(rendered):
    rel, objs = rendered
    for where, spec, _ in pod_specs(objs):
        for c in containers(spec):
            image = c["image"]
            name_tag = image.split("@")[0]
            tag = name_tag.rsplit(":", 1)[1] if ":" in name_tag.split("/")[-1] else None
            assert "@sha256:" in image or (tag and tag != "latest"), f"{rel} {where}: {image}"
            for kind in ("requests", "limits"):
                res = c.get("resources", {}).get(kind, {})
                assert {"cpu", "memory"} <= set(res), f"{rel} {where}/{c['name']}: {kind}"
    for o in objs:
        if o["kind"] == "ConfigMap":
            for key, value in (o.get("data") or {}).items():
                if key.endswith("_IMAGE"):
                    assert re.search(r":[A-Za-z0-9_][A-Za-z0-9_.-]*$", value) and \
                        not value.endswith(":latest"), f"{rel} {key}={value}"


def test_rbac_is_exactly_what_the_training_step_needs():
    for overlay, runner in (("lab", ("pipeline-runner", "kubeflow")),
                            ("multinode", ("default-editor", "effdet"))):
        objs = render(f"overlays/{overlay}")
        assert not [o for o in objs if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
        for o in objs:
            for rule in o.get("rules", []) if o["kind"] == "Role" else []:
                for field in ("apiGroups", "resources", "verbs"):
                    assert "*" not in rule.get(field, []), f"{overlay} {o['metadata']['name']}"
        role = find(objs, "Role", "effdet-training-step")
        assert role["rules"] == EXPECTED_TRAINING_RULES
        binding = find(objs, "RoleBinding", "effdet-training-step")
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                      "name": "effdet-training-step"}
        assert binding["metadata"]["namespace"] == role["metadata"]["namespace"] == runner[1]
        assert [(s["kind"], s["name"], s["namespace"]) for s in binding["subjects"]] == [
            ("ServiceAccount", *runner)]
        training_sa = find(objs, "ServiceAccount", "effdet-training")
        assert training_sa["automountServiceAccountToken"] is False


# -- the MLflow server ---------------------------------------------------------------------------

def _mlflow(objs):
    deployment = find(objs, "Deployment", "mlflow")
    config = find(objs, "ConfigMap", "mlflow-server")["data"]
    return deployment, deployment["spec"]["template"]["spec"], config


def _expand(arg: str, env: dict) -> str:
    return re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_mlflow_server_is_hardened_and_configured(overlay):
    objs = render(f"overlays/{overlay}")
    _, spec, config = _mlflow(objs)
    (c,) = spec["containers"]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in spec["volumes"]}
    tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert tmp and "emptyDir" in volumes[tmp[0]["name"]]
    assert spec["automountServiceAccountToken"] is False
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == "/health"
    env = {e["name"]: e for e in c["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"] == {
        "name": "mlflow-backend-store", "key": "uri"}
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-artifact-store"
    assert {"configMapRef": {"name": "mlflow-server"}} in c["envFrom"]
    args = [_expand(a, config) for a in c["args"]]
    assert not any(a.startswith("--backend-store-uri") for a in args), "URI must stay off argv"
    destination = [a.split("=", 1)[1] for a in args if a.startswith("--artifacts-destination=")]
    assert len(destination) == 1 and destination[0].startswith("s3://")
    (hosts,) = [a.split("=", 1)[1].split(",") for a in args if a.startswith("--allowed-hosts=")]
    service = find(objs, "Service", "mlflow")
    port = service["spec"]["ports"][0]["port"]
    ns = service["metadata"]["namespace"]
    assert f"mlflow.{ns}.svc.cluster.local:{port}" in hosts
    assert "*" not in hosts
    assert service["spec"]["selector"] == MLFLOW_LABELS


def _peer_namespaces(policy: dict, pod_match) -> set[str]:
    names = set()
    for rule in policy["spec"]["ingress"]:
        for peer in rule["from"]:
            selector = peer.get("podSelector")
            if selector is not None and pod_match(selector):
                names.add(peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"])
    return names


def _is_step_pod(selector):
    return selector.get("matchLabels") == {"pipelines.kubeflow.org/v2_component": "true"}


def _is_argo_pod(selector):
    return selector.get("matchExpressions") == [
        {"key": "workflows.argoproj.io/workflow", "operator": "Exists"}]


def _is_mpijob_pod(selector):
    return any(e["key"] == "training.kubeflow.org/job-role" and set(e["values"]) == {
        "launcher", "worker"} for e in selector.get("matchExpressions", []))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_admit_only_pipeline_training_kfp_and_ui(overlay):
    objs = render(f"overlays/{overlay}")
    pipeline_ns = find(objs, "ConfigMap", "effdet-pipeline-env")["metadata"]["namespace"]
    deny = find(objs, "NetworkPolicy", "default-deny-ingress")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    policy = find(objs, "NetworkPolicy", "mlflow-ingress")
    assert policy["spec"]["podSelector"]["matchLabels"] == MLFLOW_LABELS
    assert _peer_namespaces(policy, _is_step_pod) == {pipeline_ns}
    assert _peer_namespaces(policy, _is_mpijob_pod) == {pipeline_ns}
    assert _peer_namespaces(policy, _is_argo_pod) == {pipeline_ns}
    assert _peer_namespaces(policy, lambda s: s.get("matchLabels") == {"app": "ml-pipeline"}) == {
        "kubeflow"}
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 5000}]
    for peer in rule["from"]:
        assert "ipBlock" not in peer
        # every peer names one namespace, and only a UI/ingress namespace is admitted whole
        ns = peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        if "podSelector" not in peer:
            assert ns in ("istio-system", "ingress-nginx"), ns
    if overlay == "lab":
        minio = find(objs, "NetworkPolicy", "minio-ingress")
        assert _peer_namespaces(minio, _is_step_pod) == {pipeline_ns}
        assert _peer_namespaces(minio, _is_mpijob_pod) == {pipeline_ns}
        postgres = find(objs, "NetworkPolicy", "mlflow-postgres-ingress")
        assert postgres["spec"]["ingress"][0]["from"] == [{"podSelector": {"matchLabels": MLFLOW_LABELS}}]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pipeline_env_points_at_the_rendered_services(overlay):
    objs = render(f"overlays/{overlay}")
    env = find(objs, "ConfigMap", "effdet-pipeline-env")["data"]
    _, _, config = _mlflow(objs)
    uri = urlparse(env["MLFLOW_TRACKING_URI"])
    assert uri.netloc in config["MLFLOW_ALLOWED_HOSTS"].split(",")
    host, port = uri.hostname.split("."), uri.port
    service = find(objs, "Service", host[0])
    assert host[1] == service["metadata"]["namespace"]
    assert port == service["spec"]["ports"][0]["port"]
    for name in ("effdet-pipeline-env", "mlflow-server"):  # consumed as env: empty = invalid
        empty = [k for k, v in find(objs, "ConfigMap", name)["data"].items() if not v]
        assert not empty, f"{overlay} {name}: empty values {empty}"
    assert ("AWS_ENDPOINT_URL" in env) == ("MLFLOW_S3_ENDPOINT_URL" in config)
    if "AWS_ENDPOINT_URL" in env:
        s3 = urlparse(env["AWS_ENDPOINT_URL"])
        minio = find(objs, "Service", s3.hostname.split(".")[0])
        assert s3.port == minio["spec"]["ports"][0]["port"]
        assert config["MLFLOW_S3_ENDPOINT_URL"] == env["AWS_ENDPOINT_URL"]
    assert env["EFFDET_MPI_SERVICE_ACCOUNT"] == "effdet-training"
    json.loads(env["EFFDET_MPI_NODE_SELECTOR"])
    tolerations = json.loads(env["EFFDET_MPI_TOLERATIONS"])
    workers, gpus = int(env["EFFDET_MPI_WORKERS"]), int(env["EFFDET_MPI_GPUS_PER_WORKER"])
    if overlay == "lab":
        assert (workers, gpus) == (1, 1) and tolerations == []
    else:
        assert workers >= 2 and gpus >= 1
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations
        assert json.loads(env["EFFDET_MPI_NODE_SELECTOR"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_smoke_mpijob_matches_its_overlay_and_the_training_image(overlay):
    env = find(render(f"overlays/{overlay}"), "ConfigMap", "effdet-pipeline-env")
    job = find(render(f"smoke/{overlay}"), "MPIJob", "effdet-smoke")
    assert job["metadata"]["namespace"] == env["metadata"]["namespace"]
    spec = job["spec"]
    launcher = spec["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]
    worker_pod = spec["mpiReplicaSpecs"]["Worker"]["template"]["spec"]
    (worker,) = worker_pod["containers"]
    assert worker["image"] == launcher["containers"][0]["image"] == env["data"]["EFFDET_TRAIN_IMAGE"]
    workers = spec["mpiReplicaSpecs"]["Worker"]["replicas"]
    slots = spec["slotsPerWorker"]
    assert (workers, slots) == (int(env["data"]["EFFDET_MPI_WORKERS"]),
                                int(env["data"]["EFFDET_MPI_GPUS_PER_WORKER"]))
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == str(slots)
    command = launcher["containers"][0]["command"]
    assert command[command.index("-np") + 1] == str(workers * slots)
    assert spec["sshAuthMountPath"] == "/home/mpiuser/.ssh"
    assert worker["command"][0] == "/usr/sbin/sshd"
    assert worker_pod["securityContext"]["runAsUser"] == 1000
    assert worker_pod["securityContext"]["fsGroup"] == 1000  # makes the mounted keys readable
    assert worker_pod["serviceAccountName"] == env["data"]["EFFDET_MPI_SERVICE_ACCOUNT"]
    assert job["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    if overlay == "multinode":
        assert worker_pod["nodeSelector"] == json.loads(env["data"]["EFFDET_MPI_NODE_SELECTOR"])
        assert worker_pod["tolerations"] == json.loads(env["data"]["EFFDET_MPI_TOLERATIONS"])


def test_kfp_launcher_plugin_entry_and_api_server_config():
    (cm,) = render("kfp-mlflow-plugin")
    assert (cm["kind"], cm["metadata"]["name"]) == ("ConfigMap", "kfp-launcher")
    assert "namespace" not in cm["metadata"], "applied with -n into the pipeline namespace"
    assert set(cm["data"]) == {"plugins.mlflow"}, "must not touch KFP's other keys"
    plugin = json.loads(cm["data"]["plugins.mlflow"])
    assert set(plugin) == {"settings"}
    assert set(plugin["settings"]) <= {"experimentDescription", "defaultExperimentName",
                                       "injectUserEnvVars", "credentialSecretRef"}
    assert plugin["settings"]["injectUserEnvVars"] is True
    server = json.loads((MANIFESTS / "kfp-mlflow-plugin" / "apiserver-config.json").read_text())
    mlflow = server["plugins"]["mlflow"]
    env = find(render("overlays/lab"), "ConfigMap", "effdet-pipeline-env")["data"]
    assert mlflow["endpoint"] == env["MLFLOW_TRACKING_URI"]
    assert mlflow["settings"]["authType"] in ("none", "basic-auth", "bearer", "kubernetes")


def test_pipeline_mpijob_builder_output_is_valid_for_the_cluster():
    """The MPIJob the training step creates (efficientdet.orchestration.mpijob) passes the same
    schema checks as the manifests, with this image's ssh and user settings."""
    from efficientdet.orchestration import mpijob

    spec = mpijob.MPIJobSpec(
        name="effdet-train-abc", image="registry.example.com/effdet/effdet-train:0.1.0",
        command=["python", "-m", "efficientdet", "train"], workers=2, gpus_per_worker=8,
        ssh_auth_mount_path="/home/mpiuser/.ssh", service_account="effdet-training",
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        node_selector={"nvidia.com/gpu.present": "true"})
    validate_mpijob(mpijob.build_manifest(spec), K8S_VERSIONS[-1])


# -- real runs of what the manifests start -------------------------------------------------------

def test_bucket_job_script_creates_buckets_idempotently(s3_env):
    import boto3

    job = find(render("overlays/lab"), "Job", "minio-buckets")
    (c,) = job["spec"]["template"]["spec"]["containers"]
    literal = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    env = {"PATH": "/usr/bin:/bin", "BUCKETS": literal["BUCKETS"], "AWS_ENDPOINT_URL": s3_env,
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing"}
    assert c["command"][:2] == ["python", "-c"]
    runs = [subprocess.run([sys.executable, "-c", c["command"][2]], env=env, capture_output=True,
                           text=True, timeout=60, check=False) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr
    assert "created" in runs[0].stdout and "exists" in runs[1].stdout
    names = {b["Name"] for b in boto3.client("s3", endpoint_url=s3_env).list_buckets()["Buckets"]}
    assert set(literal["BUCKETS"].split(",")) <= names


@pytest.mark.slow
def test_mlflow_server_runs_with_the_deployment_arguments(tmp_path, s3_env, s3_bucket):
    """`mlflow server` (the image's entrypoint) with the rendered args: it starts, answers
    /health for any Host (kubelet probes), serves the API to the in-cluster Service host,
    rejects other hosts, and proxies artifacts to the S3 destination."""
    import boto3

    objs = render("overlays/lab")
    _, spec, config = _mlflow(objs)
    (c,) = spec["containers"]
    port = free_port()
    env_vars = dict(config)
    env_vars["MLFLOW_ARTIFACTS_DESTINATION"] = f"s3://{s3_bucket}/artifacts"
    args = [_expand(a, env_vars) for a in c["args"]]
    args = [f"--port={port}" if a.startswith("--port=") else a for a in args]
    args = ["--host=127.0.0.1" if a.startswith("--host=") else a for a in args]
    service_host = "mlflow.effdet-system.svc.cluster.local:5000"
    assert any(a.startswith("--allowed-hosts=") and service_host in a for a in args)
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path),
           "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "MLFLOW_S3_ENDPOINT_URL": s3_env, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen([str(BIN / "mlflow"), "server", *args], env=env, cwd=tmp_path,
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/health", proc, timeout=120)

        def call(path, host, body=None):
            req = urllib.request.Request(base + path, headers={"Host": host,
                                                               "Content-Type": "application/json"},
                                         data=json.dumps(body).encode() if body else None)
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    return resp.status, resp.read()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read()

        assert call("/health", "10.1.2.3:5000")[0] == 200
        status, body = call("/api/2.0/mlflow/experiments/create", service_host,
                            {"name": "manifest-check"})
        assert status == 200, body
        experiment_id = json.loads(body)["experiment_id"]
        status, body = call("/api/2.0/mlflow/runs/create", service_host,
                            {"experiment_id": experiment_id})
        run_id = json.loads(body)["run"]["info"]["run_id"]
        status, _ = call("/api/2.0/mlflow/experiments/search", "evil.example.com",
                         {"max_results": 1})
        assert status in (400, 403)
        put = urllib.request.Request(
            f"{base}/api/2.0/mlflow-artifacts/artifacts/{experiment_id}/{run_id}/artifacts/x.txt",
            data=b"hello", method="PUT", headers={"Host": service_host})
        with urllib.request.urlopen(put, timeout=30) as resp:
            assert resp.status == 200
        keys = [o["Key"] for o in boto3.client("s3", endpoint_url=s3_env).list_objects_v2(
            Bucket=s3_bucket).get("Contents", [])]
        assert any(k.startswith("artifacts/") and k.endswith("x.txt") for k in keys), keys
    finally:
        _stop(proc)
        log.close()


def test_security_checks_catch_violations():
    """Each property check above fails on an object that breaks it."""
    def mutated(change):
        objs = json.loads(json.dumps(render("overlays/lab")))
        change({(o["kind"], o["metadata"]["name"]): o for o in objs})
        return ("mutated", objs)

    def mlflow_container(by):
        return by[("Deployment", "mlflow")]["spec"]["template"]["spec"]["containers"][0]

    cases = [
        (test_pods_run_non_root_unprivileged_with_seccomp_and_no_host_access,
         lambda by: mlflow_container(by)["securityContext"].update(privileged=True)),
        (test_pods_run_non_root_unprivileged_with_seccomp_and_no_host_access,
         lambda by: mlflow_container(by)["securityContext"].update(runAsUser=0)),
        (test_pods_run_non_root_unprivileged_with_seccomp_and_no_host_access,
         lambda by: by[("StatefulSet", "minio")]["spec"]["template"]["spec"].update(hostNetwork=True)),
        (test_images_are_pinned_and_containers_have_resources,
         lambda by: mlflow_container(by).update(image="registry.example.com/effdet/mlflow:latest")),
        (test_images_are_pinned_and_containers_have_resources,
         lambda by: mlflow_container(by).update(image="registry.example.com/effdet/mlflow")),
        (test_no_secret_objects_and_no_literal_credentials,
         lambda by: mlflow_container(by)["env"].append({"name": "DB_PASSWORD", "value": "hunter2"})),
        (test_no_secret_objects_and_no_literal_credentials,
         lambda by: by[("ConfigMap", "mlflow-server")]["data"].update(
             MLFLOW_BACKEND_URI="postgresql://mlflow:hunter2@db:5432/mlflow")),
    ]
    for check, change in cases:
        with pytest.raises(AssertionError):
            check(mutated(change))
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
              "data": {"k": "aGk="}}
    with pytest.raises(AssertionError):
        test_no_secret_objects_and_no_literal_credentials(("mutated", [*render("overlays/lab"),
                                                                        secret]))
