"""A local HTTP server standing in for the GitHub and GitLab APIs, which cannot be reached.

It records every request (method, raw path, headers, JSON body) and answers from a script of
responses, then from a default. The tests check the recorded requests against the forges'
documented APIs; the server itself accepts anything.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Request:
    method: str
    path: str  # raw, as sent (percent-encoding kept)
    headers: dict[str, str]
    body: Any


@dataclass
class Reply:
    status: int = 201
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


Responder = Callable[[Request], Reply]


class ForgeServer:
    def __init__(self, default: Responder | None = None) -> None:
        self.requests: list[Request] = []
        self.script: list[Reply] = []
        self.default: Responder = default or (lambda request: Reply(201, {}))
        self.gate: threading.Event | None = None  # when set, requests wait for it
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                request = Request(
                    self.command,
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    json.loads(raw) if raw else None,
                )
                if server.gate is not None:
                    server.gate.wait(30)
                with server._lock:
                    server.requests.append(request)
                    reply = server.script.pop(0) if server.script else None
                reply = reply or server.default(request)
                payload = json.dumps(reply.body).encode() if reply.body is not None else b""
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PATCH = do_PUT = _handle  # noqa: N815 - BaseHTTPRequestHandler names

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=lambda: self.httpd.serve_forever(poll_interval=0.05), daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def posts(self) -> list[Request]:
        return [r for r in self.requests if r.method == "POST"]

    def __enter__(self) -> ForgeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.gate is not None:
            self.gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()
