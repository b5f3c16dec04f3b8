"""`effdet pipeline submit` through the real kfp.Client over HTTP against a loopback server that
answers the KFP v2beta1 API (healthz, experiments, pipelines, upload, versions, runs): upload as
a new version, start a run, --wait with the exit code following the final state, bearer token
from the environment and never printed."""

from __future__ import annotations

import json
import re
import uuid
from urllib.parse import parse_qs, urlparse

import pytest

from efficientdet.cli import main
from tests.loopback_http import LoopbackServer, send_json

TOKEN = "tok-" + uuid.uuid4().hex


class FakeKFP:
    def __init__(self, final_state: str = "SUCCEEDED"):
        self.final_state = final_state
        self.experiments: dict[str, dict] = {}
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, list[dict]] = {}
        self.runs: dict[str, dict] = {}
        self.auth: list[str] = []
        self.uploads: list[bytes] = []
        self.server = LoopbackServer(self.handle, ("GET", "POST")).start()
        self.url = self.server.url

    def close(self):
        self.server.close()

    @staticmethod
    def _name_filter(query) -> str | None:
        if "filter" not in query:
            return None
        preds = json.loads(query["filter"])["predicates"]
        return next((p.get("stringValue") or p.get("string_value") for p in preds), None)

    def _reply(self, h, code, payload):
        send_json(h, code, payload)

    def handle(self, h, method):
        url = urlparse(h.path)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        self.auth.append(h.headers.get("Authorization", ""))
        path = url.path
        if path == "/apis/v2beta1/healthz":
            return self._reply(h, 200, {"multi_user": False})
        if path == "/apis/v2beta1/experiments" and method == "GET":
            name = self._name_filter(q)
            found = [e for e in self.experiments.values() if e["display_name"] == name]
            return self._reply(h, 200, {"experiments": found, "total_size": len(found)})
        if path == "/apis/v2beta1/experiments" and method == "POST":
            exp = {**json.loads(body), "experiment_id": uuid.uuid4().hex}
            self.experiments[exp["experiment_id"]] = exp
            return self._reply(h, 200, exp)
        if path == "/apis/v2beta1/pipelines" and method == "GET":
            name = self._name_filter(q)
            found = [p for p in self.pipelines.values() if p["display_name"] == name]
            return self._reply(h, 200, {"pipelines": found, "total_size": len(found)})
        if path == "/apis/v2beta1/pipelines/upload":
            self.uploads.append(body)
            pid = uuid.uuid4().hex
            self.pipelines[pid] = {"pipeline_id": pid, "display_name": q["name"]}
            self.versions[pid] = [{"pipeline_id": pid, "pipeline_version_id": uuid.uuid4().hex,
                                   "display_name": q["name"]}]
            return self._reply(h, 200, self.pipelines[pid])
        if path == "/apis/v2beta1/pipelines/upload_version":
            self.uploads.append(body)
            pid = q["pipelineid"]
            version = {"pipeline_id": pid, "pipeline_version_id": uuid.uuid4().hex,
                       "display_name": q["name"]}
            self.versions[pid].insert(0, version)
            return self._reply(h, 200, version)
        if m := re.fullmatch(r"/apis/v2beta1/pipelines/([^/]+)/versions", path):
            versions = self.versions.get(m.group(1), [])
            return self._reply(h, 200, {"pipeline_versions": versions,
                                        "total_size": len(versions)})
        if path == "/apis/v2beta1/runs" and method == "POST":
            run = {**json.loads(body), "run_id": uuid.uuid4().hex, "state": "PENDING"}
            self.runs[run["run_id"]] = run
            return self._reply(h, 200, run)
        if m := re.fullmatch(r"/apis/v2beta1/runs/([^/]+)", path):
            run = dict(self.runs[m.group(1)], state=self.final_state)
            return self._reply(h, 200, run)
        return self._reply(h, 404, {"error": f"no route {method} {path}"})


@pytest.fixture
def kfp_api(monkeypatch):
    fake = FakeKFP()
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    yield fake
    fake.close()


def _argv(fake, *extra):
    return ["pipeline", "submit", "--host", fake.url, "--experiment", "ci-detection",
            "--param", "train_annotations_uri=s3://d/train.json",
            "--param", "train_images_uri=s3://d/train", "--param", "val_annotations_uri=s3://d/v.json",
            "--param", "val_images_uri=s3://d/val", "--param", "workers=4",
            "--param", "amp=false", *extra]


def test_submit_uploads_a_new_version_runs_it_and_waits(kfp_api, capsys):
    code = main(_argv(kfp_api, "--pipeline-name", "efficientdet-detection",
                      "--version-name", "abc123", "--run-name", "ci-1", "--wait"))
    out = capsys.readouterr()
    assert code == 0
    assert "final state: SUCCEEDED" in out.out
    assert TOKEN not in out.out + out.err  # the token is used, never printed
    assert all(a == f"Bearer {TOKEN}" for a in kfp_api.auth)
    (run,) = kfp_api.runs.values()
    assert run["display_name"] == "ci-1"
    assert run["runtime_config"]["parameters"]["workers"] == 4
    assert run["runtime_config"]["parameters"]["amp"] is False
    (pid,) = kfp_api.pipelines
    assert run["pipeline_version_reference"]["pipeline_id"] == pid
    assert b"efficientdet-detection" in kfp_api.uploads[0]  # the compiled YAML went up
    # a second submission adds a version to the same pipeline and runs that version
    assert main(_argv(kfp_api, "--pipeline-name", "efficientdet-detection",
                      "--version-name", "def456")) == 0
    assert len(kfp_api.pipelines) == 1 and len(kfp_api.versions[pid]) == 2
    newest = kfp_api.versions[pid][0]["pipeline_version_id"]
    last = list(kfp_api.runs.values())[-1]
    assert last["pipeline_version_reference"]["pipeline_version_id"] == newest
    assert len(kfp_api.experiments) == 1  # found by name the second time


def test_submit_wait_exit_code_follows_a_failed_run(kfp_api, capsys):
    kfp_api.final_state = "FAILED"
    assert main(_argv(kfp_api, "--wait")) == 1
    assert "final state: FAILED" in capsys.readouterr().out
    (run,) = kfp_api.runs.values()
    assert "efficientdet-detection" in json.dumps(run["pipeline_spec"])  # the package itself


def test_submit_without_wait_returns_at_once(kfp_api, capsys):
    kfp_api.final_state = "FAILED"  # not looked at without --wait
    assert main(_argv(kfp_api)) == 0
    assert "/#/runs/details/" in capsys.readouterr().out


# -- a GPU step on a cluster without a GPU node ---------------------------------------------------

class FakeNodes:
    """CoreV1Api.list_node over NODES ({name: allocatable}); RAISE instead when given."""

    def __init__(self, nodes=None, raise_=None):
        self.nodes, self.raise_ = nodes or {}, raise_

    def list_node(self):
        from types import SimpleNamespace

        if self.raise_:
            raise self.raise_
        return SimpleNamespace(items=[
            SimpleNamespace(metadata=SimpleNamespace(name=name),
                            status=SimpleNamespace(allocatable=allocatable))
            for name, allocatable in self.nodes.items()])


def test_gpu_nodes_are_the_nodes_with_an_allocatable_gpu():
    from efficientdet.orchestration.gpu_nodes import NoGPUNode, check_gpu_node, gpu_nodes

    nodes = FakeNodes({"cpu-1": {"cpu": "8"}, "gpu-1": {"nvidia.com/gpu": "8"},
                       "drained": {"nvidia.com/gpu": "0"}})
    assert gpu_nodes(nodes) == ["gpu-1"]
    assert check_gpu_node("x", nodes) is None
    with pytest.raises(NoGPUNode, match="the step needs a node with nvidia.com/gpu"):
        check_gpu_node("the step", FakeNodes({"cpu-1": {"cpu": "8"}}))
    note = check_gpu_node("x", FakeNodes(raise_=PermissionError("403 Forbidden: nodes")))
    assert note.startswith("could not list nodes") and "403 Forbidden" in note


def _kube(monkeypatch, core):
    from efficientdet.orchestration import mpijob

    monkeypatch.setattr(mpijob, "kube_apis", lambda api_client=None: (None, core))


def test_submit_refuses_tf_trt_where_no_node_has_a_gpu(kfp_api, capsys, monkeypatch):
    _kube(monkeypatch, FakeNodes({"cpu-1": {"cpu": "8"}}))
    code = main(_argv(kfp_api, "--param", "export_formats=saved_model,tf-trt"))
    err = capsys.readouterr().err
    assert code == 2 and not kfp_api.runs  # refused before anything reached KFP
    assert "export_formats=saved_model,tf-trt (the export-tftrt step) needs a node with " \
        "nvidia.com/gpu" in err and "leave tf-trt out of export_formats" in err


def test_submit_with_tf_trt_goes_ahead_with_a_gpu_node_or_a_note(kfp_api, capsys, monkeypatch):
    _kube(monkeypatch, FakeNodes({"gpu-1": {"nvidia.com/gpu": "1"}}))
    assert main(_argv(kfp_api, "--param", "export_formats=tf-trt")) == 0
    assert len(kfp_api.runs) == 1
    _kube(monkeypatch, FakeNodes(raise_=PermissionError("403 Forbidden")))
    assert main(_argv(kfp_api, "--param", "export_formats=tf-trt")) == 0
    assert len(kfp_api.runs) == 2
    assert "note: could not list nodes" in capsys.readouterr().err
