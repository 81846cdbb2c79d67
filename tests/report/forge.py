"""A local HTTP server standing in for the GitHub and GitLab APIs, which cannot be reached.

It records every request (method, raw path, headers, JSON body) and answers from a script of
responses, then from a default. The tests check the recorded requests against the forges'
documented APIs; the server itself accepts anything.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit


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


class GitLabStatuses:
    """GitLab's commit statuses of one project, kept as its API keeps them, to answer
    ``POST /projects/:id/statuses/:sha`` and ``GET /projects/:id/repository/commits/:sha/statuses``.

    GitLab's ``Ci::CreateCommitStatusService`` finds the open (``running_or_pending``) status of
    that name, sha and ref and fires a state-machine event on it: ``pending`` → ``enqueue!``,
    ``running`` → ``enqueue`` then ``run!``, ``success``/``failed``/``canceled`` finish it. Firing
    ``enqueue`` on a pending or running status, or ``run`` on a running one, is an invalid
    transition: HTTP 400, and nothing is saved (not even a new description). With no open
    status a new one is created and the older ones of that name become ``retried``. The list
    is ordered by id ascending, paginated (``per_page`` ≤ 100, default 20, ``X-Next-Page``), and
    holds only the latest (not retried) status per name unless ``all=true``; ``name`` filters.
    """

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def __call__(self, request: Request) -> Reply:
        parts = urlsplit(request.path)
        if request.method == "POST" and "/statuses/" in parts.path:
            return self.post(parts.path.rpartition("/")[2], request.body or {})
        if request.method == "GET" and parts.path.endswith("/statuses"):
            sha = parts.path.split("/")[-2]
            return self._list(sha, dict(parse_qsl(parts.query)))
        return Reply(404, {"message": "404 Not Found"})

    def post(self, sha: str, body: dict[str, Any]) -> Reply:
        state, name, ref = body.get("state"), body.get("name") or "default", body.get("ref")
        if state not in ("pending", "running", "success", "failed", "canceled", "skipped"):
            return Reply(400, {"error": "state does not have a valid value"})
        same = [e for e in self.entries if (e["sha"], e["name"], e["ref"]) == (sha, name, ref)]
        open_ = next((e for e in reversed(same) if e["status"] in ("pending", "running")), None)
        if open_ is not None and state in ("pending", "running"):
            event = "enqueue" if state == "pending" or open_["status"] == "pending" else "run"
            if state == "pending" or open_["status"] == "running":
                return Reply(400, {"message": _refused(event, open_["status"])})
        if open_ is None:
            for older in same:
                older["retried"] = True
            open_ = {"id": len(self.entries) + 1, "sha": sha, "name": name, "ref": ref,
                     "retried": False}  # fmt: skip
            self.entries.append(open_)
        open_.update(
            status=state,
            description=body.get("description"),
            target_url=body.get("target_url"),
        )
        return Reply(201, _public(open_))

    def _list(self, sha: str, query: dict[str, str]) -> Reply:
        found = [e for e in self.entries if e["sha"] == sha]
        if query.get("all") != "true":
            found = [e for e in found if not e["retried"]]
        if "name" in query:
            found = [e for e in found if e["name"] == query["name"]]
        per_page = min(int(query.get("per_page") or 20), 100)
        page = max(int(query.get("page") or 1), 1)
        chunk = found[(page - 1) * per_page : page * per_page]
        more = len(found) > page * per_page
        headers = {"X-Page": str(page), "X-Per-Page": str(per_page),
                   "X-Next-Page": str(page + 1) if more else ""}  # fmt: skip
        return Reply(200, [_public(e) for e in chunk], headers)

    def latest(self, sha: str, name: str) -> dict[str, Any]:
        return next(e for e in reversed(self.entries) if (e["sha"], e["name"]) == (sha, name))


def _refused(event: str, current: str) -> str:
    return (
        f"Cannot transition status via :{event} from :{current} "
        f'(Reason(s): Status cannot transition via "{event}")'
    )


def _public(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k != "retried"}


@contextlib.contextmanager
def hanging_forge() -> Iterator[str]:
    """The URL of a forge that accepts connections and never answers (the kernel completes
    the handshake into the listen backlog; nothing ever reads or writes)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


class GitHubStatuses:
    """GitHub's commit statuses of one repository: ``POST /repos/{o}/{r}/statuses/{sha}`` adds
    one; the combined status (``GET /repos/{o}/{r}/commits/{ref}/status``) holds the latest per
    context, most recent first, paginated (``per_page`` ≤ 100, default 30) with ``total_count``
    the number of contexts."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def add(self, sha: str, context: str, state: str, description: str = "") -> None:
        self.entries.append({"id": len(self.entries) + 1, "sha": sha, "context": context,
                             "state": state, "description": description, "target_url": None})  # fmt: skip

    def __call__(self, request: Request) -> Reply:
        parts = urlsplit(request.path)
        segments = parts.path.split("/")
        if request.method == "POST" and segments[-2] == "statuses":
            body = request.body or {}
            self.add(segments[-1], body.get("context") or "default", body["state"],
                     body.get("description") or "")  # fmt: skip
            return Reply(201, self.entries[-1])
        if request.method == "GET" and segments[-1] == "status":
            query = dict(parse_qsl(parts.query))
            latest: dict[str, dict[str, Any]] = {}
            for entry in reversed([e for e in self.entries if e["sha"] == segments[-2]]):
                latest.setdefault(entry["context"], entry)
            per_page = min(int(query.get("per_page") or 30), 100)
            page = max(int(query.get("page") or 1), 1)
            listed = list(latest.values())[(page - 1) * per_page : page * per_page]
            return Reply(200, {"state": "pending", "total_count": len(latest), "statuses": listed})
        return Reply(404, {"message": "Not Found"})
