"""A TLS-terminating HTTP proxy in front of the real kube-apiserver, answering chosen requests
itself: a Kubernetes ``Status`` with 409 (Conflict), 429 (TooManyRequests, ``Retry-After``) or
500 (InternalError), or no answer at all (``timeout``: the request is held until the client
gives up). Everything else is forwarded, watches streamed as they come; query parameters
named in :attr:`ApiFaultProxy.dropped` are taken off first (``allowWatchBookmarks``: an API
server, or a proxy in front of one, that sends no bookmarks).

It serves the control plane's own serving certificate (its SANs include 127.0.0.1) and forwards
with the admin client certificate, so a kubeconfig that differs from the test bed's only in
``server`` reaches it. Test support only: the API server behind it and the client in front are
real; the proxy only answers as an overloaded or failing API server would.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from testbed.controlplane import ControlPlane

REASONS = {409: "Conflict", 429: "TooManyRequests", 500: "InternalError"}
MESSAGES = {
    409: "Operation cannot be fulfilled: the object has been modified; please apply your "
    "changes to the latest version and try again",
    429: "Too many requests, please try again later.",
    500: "Internal error occurred: etcdserver: request timed out",
}
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host"}


@dataclass
class Rule:
    """Answer requests whose ``METHOD path?query`` matches ``pattern`` with ``fault`` (a status
    code or ``"timeout"``), ``times`` times (None: until removed); only once a request matching
    ``armed_by`` went through, when given (e.g. the apply that starts a health wait)."""

    pattern: str
    fault: int | str
    times: int | None = 1
    armed_by: str | None = None
    retry_after: int = 1
    hits: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._pattern = re.compile(self.pattern)
        self._armed = re.compile(self.armed_by) if self.armed_by else None

    def matches(self, request: str) -> bool:
        return self._armed is None and bool(self._pattern.search(request))

    def saw(self, request: str) -> None:
        if self._armed is not None and self._armed.search(request):
            self._armed = None

    @property
    def spent(self) -> bool:
        return self.times is not None and len(self.hits) >= self.times


class ApiFaultProxy:
    def __init__(self, plane: ControlPlane, workdir: Path) -> None:
        assert plane.workdir is not None
        pki = plane.workdir / "pki"
        target = urlsplit(plane.api_url)
        self.target = (target.hostname or "127.0.0.1", target.port or 443)
        self.upstream_tls = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self.upstream_tls.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        serving = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        serving.load_cert_chain(str(pki / "apiserver.crt"), str(pki / "apiserver.key"))
        self.rules: list[Rule] = []
        self.dropped: set[str] = set()  # query parameters taken off before forwarding
        self.requests: list[tuple[float, str, int | str]] = []  # (time, request, answer)
        self._lock = threading.Lock()
        self._closed = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            upstream: http.client.HTTPSConnection | None = None

            def _handle(self) -> None:
                proxy._handle(self)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle  # noqa: N815

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = serving.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.kubeconfig = workdir / "kubeconfig-proxy"
        document = yaml.safe_load(plane.kubeconfig.read_text())
        document["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{self.port}"
        self.kubeconfig.write_text(yaml.safe_dump(document))
        self.kubeconfig.chmod(0o600)

    def add(self, rule: Rule) -> Rule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def close(self) -> None:
        self._closed.set()
        self.clear()
        self.server.shutdown()
        self.server.server_close()

    # -- one request -------------------------------------------------------------------------

    def _fault_for(self, request: str) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if not rule.spent and rule.matches(request):
                    rule.hits.append(time.monotonic())
                    return rule
            for rule in self.rules:
                rule.saw(request)
        return None

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        request = f"{handler.command} {handler.path}"
        rule = self._fault_for(request)
        if rule is not None:
            self.requests.append((time.monotonic(), request, rule.fault))
            if rule.fault == "timeout":
                # Hold the request until the client gives up (or the rule is removed).
                held = time.monotonic() + 60
                while not self._closed.is_set() and rule in self.rules and time.monotonic() < held:
                    time.sleep(0.05)
                handler.close_connection = True
                return
            assert isinstance(rule.fault, int)
            self._status(handler, rule.fault, rule.retry_after)
            return
        try:
            status = self._forward(handler, body)
        except (OSError, http.client.HTTPException) as exc:
            self.requests.append((time.monotonic(), request, f"upstream: {exc}"))
            handler.close_connection = True
            with contextlib.suppress(OSError):
                handler.send_error(502)
            return
        self.requests.append((time.monotonic(), request, status))

    def _path(self, path: str) -> str:
        if not self.dropped or "?" not in path:
            return path
        base, query = path.split("?", 1)
        kept = [p for p in query.split("&") if p.split("=", 1)[0] not in self.dropped]
        return f"{base}?{'&'.join(kept)}" if kept else base

    @staticmethod
    def _status(handler: BaseHTTPRequestHandler, code: int, retry_after: int) -> None:
        payload = json.dumps(
            {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "message": MESSAGES[code],
                "reason": REASONS[code],
                "code": code,
            }
        ).encode()
        handler.send_response(code)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        if code == 429:
            handler.send_header("Retry-After", str(retry_after))
        handler.end_headers()
        handler.wfile.write(payload)

    def _forward(self, handler: BaseHTTPRequestHandler, body: bytes) -> int:
        upstream = http.client.HTTPSConnection(*self.target, context=self.upstream_tls, timeout=120)
        try:
            headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP_BY_HOP}
            upstream.request(
                handler.command, self._path(handler.path), body=body or None, headers=headers
            )
            response = upstream.getresponse()
            handler.send_response(response.status)
            for name, value in response.getheaders():
                if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                    handler.send_header(name, value)
            if response.getheader("Transfer-Encoding", "").lower() == "chunked":
                handler.send_header("Transfer-Encoding", "chunked")
                handler.end_headers()
                while chunk := response.read1(65536):  # a watch: each event as it comes
                    handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    handler.wfile.flush()
                handler.wfile.write(b"0\r\n\r\n")
            else:
                data = response.read()
                handler.send_header("Content-Length", str(len(data)))
                handler.end_headers()
                handler.wfile.write(data)
            return response.status
        finally:
            with contextlib.suppress(OSError):
                upstream.close()
