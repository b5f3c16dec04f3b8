"""The HTTP plumbing of the tests' fake API servers: a threading server on 127.0.0.1 (free port)
that hands every request to one callback, and replies with a body of known length."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LoopbackServer(ThreadingHTTPServer):
    """Serves on 127.0.0.1 (`url`) in a daemon thread once started; HANDLE(handler, method) is
    called for every request whose method is in METHODS (others get the stock 501)."""

    daemon_threads = True

    def __init__(self, handle: Callable[[BaseHTTPRequestHandler, str], object],
                 methods: tuple[str, ...] = ("GET", "POST")):
        def do(method):
            return lambda h: handle(h, method)

        attrs = {"protocol_version": "HTTP/1.1", "log_message": lambda h, *args: None,
                 **{f"do_{m}": do(m) for m in methods}}
        super().__init__(("127.0.0.1", 0), type("Handler", (BaseHTTPRequestHandler,), attrs))
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def start(self) -> LoopbackServer:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stops serving (only after start) and closes the socket."""
        self.shutdown()
        self.server_close()


def send_body(h: BaseHTTPRequestHandler, code: int, content_type: str, data: bytes) -> int:
    h.send_response(code)
    h.send_header("Content-Type", content_type)
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    h.wfile.write(data)
    return code


def send_json(h: BaseHTTPRequestHandler, code: int, payload) -> int:
    return send_body(h, code, "application/json", json.dumps(payload).encode())
