"""A loopback HTTP server that answers like the Kubernetes API server for what the MPIJob
backend uses: mpijobs (create, get, list, watch, delete), pods listed by label selector, and
pods/log (plain or followed). The real `kubernetes` client talks to it over HTTP, so the tests
exercise the client's requests, (de)serialisation and watch machinery, not a patched copy.

Watches follow the API server's rules: `?watch=true&resourceVersion=N&timeoutSeconds=T` streams
chunked JSON lines of events newer than N until the timeout; a version older than the compacted
history gets one ERROR event with a 410 Status. Tests play the operator through the helper
methods (add_condition, add_pod, append_log, compact).
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlparse

from tests.loopback_http import LoopbackServer, send_body, send_json

MPIJOBS = re.compile(r"^/apis/kubeflow\.org/v2beta1/namespaces/([^/]+)/mpijobs(?:/([^/]+))?$")
PODS = re.compile(r"^/api/v1/namespaces/([^/]+)/pods(?:/([^/]+)(/log)?)?$")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def _match_labels(labels: dict, selector: str) -> bool:
    for term in filter(None, (selector or "").split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


def _match_fields(obj: dict, selector: str) -> bool:
    for term in filter(None, (selector or "").split(",")):
        key, _, value = term.partition("=")
        if key == "metadata.name" and obj["metadata"]["name"] != value:
            return False
    return True


class FakeKubeAPI:
    """State plus an HTTP server on 127.0.0.1; use as a context manager."""

    def __init__(self):
        self.cond = threading.Condition()
        self.rv = 100
        self.min_rv = 0  # watches from an older version get 410 Gone
        self.jobs: dict[tuple[str, str], dict] = {}
        self.events: list[tuple[int, str, str, dict]] = []  # (rv, ns, type, object)
        self.pods: dict[tuple[str, str], dict] = {}
        self.logs: dict[tuple[str, str], list[str]] = {}
        self.requests: list[tuple[str, str, dict, int]] = []  # (method, path, query, status)
        self.closing = False
        self.server = LoopbackServer(self._dispatch, ("GET", "POST", "DELETE"))
        self.url = self.server.url

    def __enter__(self):
        self.server.start()
        return self

    def __exit__(self, *exc):
        with self.cond:
            self.closing = True
            self.cond.notify_all()
        self.server.close()

    # -- a client configured for this server -------------------------------------------------
    def api_client(self):
        from kubernetes import client

        config = client.Configuration()
        config.host = self.url
        return client.ApiClient(config)

    # -- the operator's side (called by tests) -----------------------------------------------
    def _bump(self, ns: str, kind: str, obj: dict) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.events.append((self.rv, ns, kind, copy.deepcopy(obj)))
        self.cond.notify_all()

    def put_job(self, manifest: dict, namespace: str = "kubeflow") -> dict:
        with self.cond:
            job = copy.deepcopy(manifest)
            meta = job.setdefault("metadata", {})
            meta.update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=_now())
            self.jobs[(namespace, meta["name"])] = job
            self._bump(namespace, "ADDED", job)
            return copy.deepcopy(job)

    def add_condition(self, name: str, ctype: str, reason: str = "", message: str = "",
                      namespace: str = "kubeflow") -> None:
        with self.cond:
            job = self.jobs[(namespace, name)]
            conds = job.setdefault("status", {}).setdefault("conditions", [])
            for c in conds:  # like the operator: one of Running/Restarting at a time
                if c["type"] in ("Running", "Restarting") and c["type"] != ctype:
                    c["status"] = "False"
            conds.append({"type": ctype, "status": "True", "reason": reason, "message": message,
                          "lastTransitionTime": _now()})
            self._bump(namespace, "MODIFIED", job)

    def add_pod(self, name: str, job: str, role: str, phase: str = "Running",
                namespace: str = "kubeflow") -> None:
        with self.cond:
            self.pods[(namespace, name)] = {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4()),
                             "creationTimestamp": _now(),
                             "labels": {"training.kubeflow.org/job-name": job,
                                        "training.kubeflow.org/job-role": role}},
                "spec": {"containers": [{"name": role, "image": "img"}]},
                "status": {"phase": phase},
            }
            self.logs.setdefault((namespace, name), [])
            self.cond.notify_all()

    def append_log(self, pod: str, *lines: str, namespace: str = "kubeflow") -> None:
        with self.cond:
            self.logs[(namespace, pod)].extend(lines)
            self.cond.notify_all()

    def set_pod_phase(self, pod: str, phase: str, namespace: str = "kubeflow") -> None:
        with self.cond:
            self.pods[(namespace, pod)]["status"]["phase"] = phase
            self.cond.notify_all()

    def compact(self) -> None:
        """Forgets the event history: watches from any earlier version now get 410 Gone."""
        with self.cond:
            self.rv += 1
            self.min_rv = self.rv

    def wait_until(self, predicate, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("fake API: condition not reached")
                self.cond.wait(left)

    def count(self, method: str, pattern: str, **query) -> int:
        return sum(1 for m, p, q, _ in self.requests if m == method and re.search(pattern, p)
                   and all(q.get(k) == v for k, v in query.items()))

    # -- HTTP ------------------------------------------------------------------------------------
    def _dispatch(self, h: BaseHTTPRequestHandler, method: str) -> None:
        url = urlparse(h.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        for flag in ("watch", "follow"):  # the Python client sends "True"
            if flag in query:
                query[flag] = query[flag].lower()
        body = None
        length = int(h.headers.get("Content-Length") or 0)
        if length:
            body = json.loads(h.rfile.read(length))
        status = 404
        try:
            if m := MPIJOBS.match(url.path):
                status = self._mpijobs(h, method, m.group(1), m.group(2), query, body)
            elif (m := PODS.match(url.path)) and method == "GET":
                status = self._pods(h, m.group(1), m.group(2), bool(m.group(3)), query)
            else:
                status = self._json(h, 404, _status(404, "NotFound", f"no route {url.path}"))
        finally:
            with self.cond:
                self.requests.append((method, url.path, query, status))
                self.cond.notify_all()

    def _json(self, h, code: int, payload: dict) -> int:
        return send_json(h, code, payload)

    def _start_chunked(self, h, content_type: str) -> None:
        h.send_response(200)
        h.send_header("Content-Type", content_type)
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()

    @staticmethod
    def _chunk(h, data: bytes) -> None:
        h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        h.wfile.flush()

    def _mpijobs(self, h, method, ns, name, query, body) -> int:
        with self.cond:
            if method == "POST":
                name = body["metadata"]["name"]
                if "spec" not in body:
                    return self._json(h, 422, _status(
                        422, "Invalid", f'MPIJob.kubeflow.org "{name}" is invalid: spec: Required'))
                if (ns, name) in self.jobs:
                    return self._json(h, 409, _status(
                        409, "AlreadyExists", f'mpijobs.kubeflow.org "{name}" already exists'))
                job = self.put_job(body, ns)
                return self._json(h, 201, job)
            if method == "DELETE":
                job = self.jobs.pop((ns, name), None)
                if job is None:
                    return self._json(h, 404, _status(404, "NotFound", f"{name} not found"))
                self._bump(ns, "DELETED", job)
                return self._json(h, 200, {"kind": "Status", "apiVersion": "v1",
                                           "status": "Success", "details": {"name": name}})
            if name:
                job = self.jobs.get((ns, name))
                if job is None:
                    return self._json(h, 404, _status(404, "NotFound", f"{name} not found"))
                return self._json(h, 200, copy.deepcopy(job))
            if query.get("watch", "").lower() not in ("true", "1"):
                items = [copy.deepcopy(j) for (n, _), j in sorted(self.jobs.items())
                         if n == ns and _match_fields(j, query.get("fieldSelector", ""))]
                return self._json(h, 200, {"apiVersion": "kubeflow.org/v2beta1",
                                           "kind": "MPIJobList", "items": items,
                                           "metadata": {"resourceVersion": str(self.rv)}})
        return self._watch(h, ns, query)

    def _watch(self, h, ns, query) -> int:
        since = int(query.get("resourceVersion") or 0)
        timeout = float(query.get("timeoutSeconds") or 30)
        selector = query.get("fieldSelector", "")
        self._start_chunked(h, "application/json")
        with self.cond:
            gone = since < self.min_rv
        if gone:
            event = {"type": "ERROR", "object": _status(
                410, "Expired", f"too old resource version: {since} ({self.min_rv})")}
            self._chunk(h, json.dumps(event).encode() + b"\n")
            self._chunk(h, b"")
            return 410
        deadline = time.monotonic() + timeout
        sent = since
        while True:
            with self.cond:
                pending = [e for e in self.events if e[0] > sent and e[1] == ns
                           and _match_fields(e[3], selector)]
                if not pending:
                    left = deadline - time.monotonic()
                    if left <= 0 or self.closing:
                        break
                    self.cond.wait(min(left, 0.5))
                    # events that do not match still move the version on
                    continue
            for rv, _, kind, obj in pending:
                try:
                    self._chunk(h, json.dumps({"type": kind, "object": obj}).encode() + b"\n")
                except (BrokenPipeError, ConnectionResetError):
                    return 200
                sent = rv
        try:
            self._chunk(h, b"")
        except (BrokenPipeError, ConnectionResetError):
            pass
        return 200

    def _pods(self, h, ns, name, is_log, query) -> int:
        if not name:
            with self.cond:
                items = [copy.deepcopy(p) for (n, _), p in sorted(self.pods.items())
                         if n == ns and _match_labels(p["metadata"]["labels"],
                                                      query.get("labelSelector", ""))]
                return self._json(h, 200, {"apiVersion": "v1", "kind": "PodList", "items": items,
                                           "metadata": {"resourceVersion": str(self.rv)}})
        with self.cond:
            pod = self.pods.get((ns, name))
        if pod is None:
            return self._json(h, 404, _status(404, "NotFound", f'pods "{name}" not found'))
        if not is_log:
            return self._json(h, 200, copy.deepcopy(pod))
        if query.get("follow", "").lower() not in ("true", "1"):
            with self.cond:
                lines = list(self.logs[(ns, name)])
            if "tailLines" in query:
                lines = lines[-int(query["tailLines"]):]
            return send_body(h, 200, "text/plain", "".join(line + "\n" for line in lines).encode())
        # follow: stream lines as they come until the container has ended
        self._start_chunked(h, "text/plain")
        sent = 0
        while True:
            with self.cond:
                lines = self.logs[(ns, name)][sent:]
                done = pod["status"]["phase"] in ("Succeeded", "Failed") or self.closing
                if not lines and not done:
                    self.cond.wait(0.5)
                    continue
            if lines:
                self._chunk(h, "".join(line + "\n" for line in lines).encode())
                sent += len(lines)
            elif done:
                break
        self._chunk(h, b"")
        return 200
