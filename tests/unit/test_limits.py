"""The limits that keep hostile input bounded, one by one, on the pure parts (the end-to-end
corpus is tests/reliability/): YAML depth, tags, values and NaN; message and problem caps;
objects, environments, paths; the per-revision byte budget and symlinks; webhook labels."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from gitsync.checkout import read_tree
from gitsync.errors import InvalidRevision
from gitsync.manifests.load import MAX_PROBLEMS, load_environment
from gitsync.manifests.repoconfig import MAX_ENVIRONMENTS, EnvironmentConfig, load_repo_config
from gitsync.manifests.yamldoc import MAX_DEPTH, parse_documents
from gitsync.metrics import Metrics
from gitsync.model import Problem, SourceFile
from gitsync.server import (
    MAX_CONNECTIONS,
    MAX_PER_CLIENT,
    AgentServer,
    Hooks,
    Throttle,
    printable,
)
from gitsync.serving import MAX_HEAD_BYTES, MAX_HEADERS, Limits, Listener
from gitsync.source.config import TokenAuth
from gitsync.source.failures import failure
from gitsync.source.runner import GitResult
from gitsync.webhooks import event_label, judge
from testbed.controlplane import free_port

ENV = EnvironmentConfig("staging", "environments/staging", "ray-staging")
SERVICE = """apiVersion: ray.io/v1
kind: RayService
metadata:
  name: {name}
spec:
  serveConfigV2: |
    applications:
      - name: app
        import_path: m:app
  rayClusterConfig:
    headGroupSpec:
      template:
        spec:
          containers:
            - name: ray-head
              image: ray:2
"""


def messages(text: str, **kwargs: int) -> list[tuple[int | None, str]]:
    return [(p.line, p.message) for p in parse_documents(text, "f.yaml", **kwargs)[1]]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("a:\n  b: " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5), 2, "nested more than 100"),
        ("a: !!python/object:os.system []\n", 1, "unsupported YAML tag"),
        ("a: !!set {x}\n", 1, "unsupported YAML tag 'tag:yaml.org,2002:set'"),
        ("a: 1\nb: !!binary aGk=\n", 2, "unsupported YAML tag 'tag:yaml.org,2002:binary'"),
        ("a: 1\nb: !Custom x\n", 2, "unsupported YAML tag '!Custom'"),
        ("a:\n  - .nan\n", 2, "'.nan' is not a finite number"),
        ("a: -.inf\n", 1, "'-.inf' is not a finite number"),
        ("a: 1\nb: x\0y\n", 2, "unacceptable character #x0000"),
    ],
)
def test_yaml_that_has_no_json_form_is_refused_at_its_line(
    text: str, line: int, message: str
) -> None:
    [(found_line, found)] = messages(text)
    assert found_line == line
    assert message in found


def test_plain_scalars_still_load() -> None:
    [doc], problems = parse_documents("a: 1\nb: 1.5\nc: true\nd: null\ne: 2026-01-01\n", "f")
    assert problems == []
    assert doc.data == {"a": 1, "b": 1.5, "c": True, "d": None, "e": "2026-01-01"}


def test_too_many_values_are_counted_before_composing_and_name_the_line() -> None:
    text = "a: 1\nb: [" + "1," * 600 + "]\n"
    assert messages(text, max_nodes=500) == [
        (
            2,
            "YAML holds or expands to more than 500 values (aliases nested inside aliases, or "
            "far too many documents?); refusing to load it: remove the aliases or split the file",
        )
    ]


def test_a_problem_message_and_file_name_are_kept_printable_and_short() -> None:
    problem = Problem("env/a\nb.yaml", 1, "name " + "x" * 5000 + " is bad; rename it")
    assert problem.file == "env/a\\nb.yaml"
    assert len(problem.message) < Problem.MAX_MESSAGE + 40
    assert problem.message.startswith("name xxx")
    assert problem.message.endswith("is bad; rename it")
    assert "…[" in problem.message


def test_an_invalid_revision_lists_its_first_problems_only() -> None:
    problems = tuple(Problem("f.yaml", n, "bad") for n in range(1, 51))
    text = str(InvalidRevision("revision abc", problems))
    assert "(50 problem(s))" in text
    assert "f.yaml:20: bad" in text
    assert "f.yaml:21: bad" not in text
    assert text.endswith("  … 29 more …\n  f.yaml:50: bad")


def test_objects_per_environment_are_capped() -> None:
    files = [SourceFile(f"environments/staging/{n}.yaml", SERVICE.format(name=f"s{n}").encode())
             for n in range(3)]  # fmt: skip
    loaded = load_environment(ENV, files, max_objects=2)
    assert loaded.services == ()
    [problem] = loaded.problems
    assert str(problem) == (
        "environments/staging/2.yaml:1: environment 'staging' declares more than 2 objects, "
        "the limit per environment; split it into several environments"
    )


def test_problems_per_environment_are_capped() -> None:
    text = "--- []\n" * (MAX_PROBLEMS * 3)
    loaded = load_environment(ENV, [SourceFile("environments/staging/x.yaml", text.encode())])
    assert len(loaded.problems) == MAX_PROBLEMS + 1
    assert "reading stopped here: fix these first" in loaded.problems[-1].message


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("env\0x", "path must not contain control characters"),
        ("env\tx", "path must not contain control characters"),
        ("a/" * 600, "path is 1200 characters; paths are limited to 1024"),
        ("x" * 256, "at most 255 per folder name"),
        ("/abs", "must be relative and stay inside the repository"),
        ("a/../../b", "must be relative and stay inside the repository"),
    ],
)
def test_environment_paths_are_checked(path: str, message: str) -> None:
    escaped = path.replace("\\", "\\\\").replace("\0", "\\0").replace("\t", "\\t")
    text = f'environments:\n  - name: s\n    namespace: n\n    path: "{escaped}"\n'
    config, problems = load_repo_config(text)
    assert config is None
    assert [(p.line, message in p.message) for p in problems] == [(4, True)], problems


def test_environments_are_capped() -> None:
    entries = "".join(
        f"  - {{name: e{n}, path: e{n}, namespace: n{n}}}\n" for n in range(MAX_ENVIRONMENTS + 1)
    )
    _, problems = load_repo_config("environments:\n" + entries)
    assert [p.message.split(";")[0] for p in problems] == [
        f"{MAX_ENVIRONMENTS + 1} environments are declared"
    ]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "gitsync.yaml").write_text(
        "environments:\n  - {name: staging, path: environments/staging, namespace: ray-staging}\n"
    )
    (tmp_path / "environments" / "staging").mkdir(parents=True)
    return tmp_path


def test_the_revision_byte_budget_stops_reading_and_names_the_file(repo: Path) -> None:
    for n in range(3):
        (repo / f"environments/staging/{n}.yaml").write_text(SERVICE.format(name=f"s{n}"))
    size = len(SERVICE.format(name="s0"))
    [problem] = read_tree(repo, max_tree_bytes=2 * size + 1).problems
    assert problem.file == "environments/staging/2.yaml"
    assert f"add up to more than {2 * size + 1} bytes, the limit per revision" in problem.message


def test_broken_and_looping_symlinks_are_problems(repo: Path) -> None:
    os.symlink("missing.yaml", repo / "environments/staging/a.yaml")
    os.symlink("b.yaml", repo / "environments/staging/b.yaml")
    assert [str(p) for p in read_tree(repo).problems] == [
        "environments/staging/a.yaml: symlink is broken or loops (to missing.yaml); "
        "replace it with the file",
        "environments/staging/b.yaml: symlink is broken or loops (to b.yaml); "
        "replace it with the file",
    ]


def test_the_repo_config_must_be_a_small_regular_file(repo: Path) -> None:
    (repo / "real.yaml").write_text((repo / "gitsync.yaml").read_text())
    (repo / "gitsync.yaml").unlink()
    os.symlink("real.yaml", repo / "gitsync.yaml")
    [problem] = read_tree(repo).problems
    assert str(problem) == (
        "gitsync.yaml: gitsync.yaml is a symlink (to real.yaml); it must be a regular file"
    )
    (repo / "gitsync.yaml").unlink()
    (repo / "gitsync.yaml").write_text("# padding\n" * 200)
    [problem] = read_tree(repo, max_file_bytes=1000).problems
    assert str(problem) == "gitsync.yaml: file is 2000 bytes; it is limited to 1000"


def test_webhook_event_labels_are_bounded() -> None:
    assert event_label("Push Hook") == "push hook"
    assert event_label("pull_request") == "pull_request"
    assert event_label("") == "-"
    assert {event_label(f"made-up-{n}") for n in range(100)} == {"other"}


def test_deeply_nested_json_is_a_400_not_a_crash() -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    signature = hmac.new(b"s", body, hashlib.sha256).hexdigest()
    headers = {"x-gitea-event": "push", "x-gitea-signature": signature}
    verdict = judge(headers, body, b"s", "https://example.com/r.git", "main")
    assert (verdict.status, verdict.reason) == (400, "body is not JSON (or is nested too deeply)")


def test_header_values_are_printable_and_short_in_logs() -> None:
    assert printable("push\r\nlevel=error forged") == "push??level=error forged"
    assert printable("x" * 500) == "x" * 80 + "…"


def test_what_a_hostile_git_server_sent_is_made_printable() -> None:
    stderr = "fatal: protocol error: bad line length character: \x1b[31m\ufffd\x00\nx\x07y\n"
    error = failure("ls-remote", "http://h/r.git", GitResult(128, "", stderr, False), 3.0)
    assert str(error).endswith("bad line length character: ?[31m?? | x?y")


def test_the_server_refuses_a_negative_length_and_bounds_event_labels() -> None:
    """The real HTTP server with callbacks in place of an agent (no cluster needed)."""
    polls: list[int] = []
    hooks = Hooks(lambda: b"s", "https://example.com/r.git", "main", lambda: polls.append(1),
                  lambda: None, lambda: True, lambda: True)  # fmt: skip
    metrics = Metrics()
    server = AgentServer("127.0.0.1", free_port(), hooks, metrics).start()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        connection.putrequest("POST", "/webhooks")
        connection.putheader("X-Gitea-Event", "push")
        connection.putheader("Content-Length", "-1")
        connection.endheaders()
        assert connection.getresponse().status == 411
        connection.close()
        for n in range(50):
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            connection.request("POST", "/webhooks", b"{}", {"X-Gitea-Event": f"made-up-{n}"})
            assert connection.getresponse().status == 401
            connection.close()
    finally:
        server.stop()
    events = {
        sample.labels["event"]
        for metric in metrics.registry.collect()
        if metric.name == "gitsync_webhook_requests"
        for sample in metric.samples
    }
    assert events == {"other"}
    assert polls == []


def test_connections_over_the_cap_get_a_503_and_the_server_recovers() -> None:
    """Idle connections each hold a slot; past MAX_CONNECTIONS the server answers 503 at once
    (no thread started, nothing read), and serves again when they go."""
    hooks = Hooks(lambda: b"s", "https://example.com/r.git", "main", lambda: None,
                  lambda: None, lambda: True, lambda: True)  # fmt: skip
    server = AgentServer("127.0.0.1", free_port(), hooks, Metrics()).start()
    idle: list[socket.socket] = []
    try:
        for n in range(MAX_CONNECTIONS):  # from several addresses: each has its own cap
            source = (f"127.0.0.{10 + n // MAX_PER_CLIENT}", 0)
            idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=10,
                                                 source_address=source))  # fmt: skip
        deadline = time.monotonic() + 30
        while server.listener.gate.open < MAX_CONNECTIONS:  # every idle connection is held
            assert time.monotonic() < deadline, "the idle connections were not accepted"
            time.sleep(0.02)
        threads = threading.active_count()
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        assert (response.status, response.getheader("Retry-After")) == (503, "1")
        connection.close()
        assert threading.active_count() == threads
        assert server.listener.gate.refused == 1
        for sock in idle:
            sock.close()
        idle.clear()
        while server.listener.gate.open > 0:
            assert time.monotonic() < deadline, "closed connections kept their slots"
            time.sleep(0.02)
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        connection.request("GET", "/healthz")
        assert connection.getresponse().status == 200
        connection.close()
    finally:
        for sock in idle:
            sock.close()
        server.stop()


def test_rejected_webhooks_are_logged_once_per_interval_with_a_count() -> None:
    throttle = Throttle(10.0)
    assert throttle.allow(("gitea", 401), 100.0) == 0
    assert [throttle.allow(("gitea", 401), 100.0 + n / 10) for n in range(1, 50)] == [None] * 49
    assert throttle.allow(("gitea", 413), 101.0) == 0  # another kind is its own line
    assert throttle.allow(("gitea", 401), 110.5) == 49


def test_a_flood_of_forged_webhooks_writes_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    hooks = Hooks(lambda: b"s", "https://example.com/r.git", "main", lambda: None,
                  lambda: None, lambda: True, lambda: True)  # fmt: skip
    metrics = Metrics()
    server = AgentServer("127.0.0.1", free_port(), hooks, metrics).start()
    try:
        with caplog.at_level(logging.INFO, logger="gitsync.server"):
            for _ in range(40):
                connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
                connection.request("POST", "/webhooks", b"{}", {"X-Gitea-Event": "push"})
                assert connection.getresponse().status == 401
                connection.close()
    finally:
        server.stop()
    warnings = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "status=401" in warnings[0].getMessage()
    counted = metrics.registry.get_sample_value(
        "gitsync_webhook_requests_total",
        {"provider": "gitea", "event": "push", "result": "rejected-401"},
    )
    assert counted == 40


def get(port: int, path: str, token: str | None = None) -> tuple[int, str | None, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, response.getheader("WWW-Authenticate"), response.read()
    finally:
        connection.close()


def test_metrics_on_a_port_of_their_own_behind_a_bearer_token(tmp_path: Path) -> None:
    """metrics.listen and metrics.auth with the real HTTP server: the main (public) port no
    longer serves /metrics; the metrics port serves only /metrics, only with the token, read
    at each request (a rotated Secret is picked up), and says so when it cannot be read."""
    hooks = Hooks(lambda: b"s", "https://example.com/r.git", "main", lambda: None,
                  lambda: None, lambda: True, lambda: True)  # fmt: skip
    metrics = Metrics()
    metrics.leader.set(1)
    token = tmp_path / "token"
    token.write_text("first\n")
    server = AgentServer(
        "127.0.0.1",
        free_port(),
        hooks,
        metrics,
        metrics_listen=("127.0.0.1", 0),
        metrics_token=TokenAuth(token_file=token),
    ).start()
    try:
        assert server.metrics_port not in (None, server.port)
        port = server.metrics_port
        assert port is not None
        assert get(server.port, "/metrics", "first")[0] == 404
        assert get(server.port, "/healthz")[0] == 200
        assert get(port, "/healthz", "first")[0] == 404
        status, challenge, _ = get(port, "/metrics")
        assert (status, challenge) == (401, 'Bearer realm="gitsync"')
        assert get(port, "/metrics", "wrong")[0] == 401
        status, _, body = get(port, "/metrics", "first")
        assert status == 200
        assert b"gitsync_leader 1.0" in body
        token.write_text("second\n")
        assert get(port, "/metrics", "first")[0] == 401
        assert get(port, "/metrics", "second")[0] == 200
        token.unlink()
        status, _, body = get(port, "/metrics", "second")
        assert status == 500
        assert b"metrics.auth" in body
    finally:
        server.stop()
    # The token alone, on the main port (no port of its own).
    token.write_text("only\n")
    server = AgentServer("127.0.0.1", free_port(), hooks, metrics,
                         metrics_token=TokenAuth(token_file=token)).start()  # fmt: skip
    try:
        assert get(server.port, "/metrics")[0] == 401
        assert get(server.port, "/metrics", "only")[0] == 200
    finally:
        server.stop()


def exchange(port: int, request: bytes) -> bytes:
    """``request`` sent as it is; the answer, up to the server's hang-up."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def test_malformed_heads_are_answered_with_what_is_wrong() -> None:
    """What h11 refuses gets the status it deserves, as JSON, and the connection closed."""
    hooks = Hooks(lambda: b"s", "https://example.com/r.git", "main", lambda: None,
                  lambda: None, lambda: True, lambda: True)  # fmt: skip
    server = AgentServer("127.0.0.1", free_port(), hooks, Metrics()).start()
    try:
        for length in (b"-1", b"abc", b"1, 2"):
            answer = exchange(server.port, b"POST /webhooks HTTP/1.1\r\nHost: g\r\n"
                              b"Content-Length: " + length + b"\r\n\r\n")  # fmt: skip
            assert answer.startswith(b"HTTP/1.1 411 "), answer
            assert b'{"error": "Content-Length required' in answer
        chunked = exchange(server.port, b"POST /webhooks HTTP/1.1\r\nHost: g\r\nX-Gitea-Event: "
                           b"push\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n")  # fmt: skip
        assert chunked.startswith(b"HTTP/1.1 411 "), chunked
        big = b"X-Big: " + b"x" * (MAX_HEAD_BYTES + 1) + b"\r\n"
        answer = exchange(server.port, b"GET /healthz HTTP/1.1\r\nHost: g\r\n" + big + b"\r\n")
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        many = b"".join(b"X-H%d: v\r\n" % n for n in range(MAX_HEADERS + 1))
        answer = exchange(server.port, b"GET /healthz HTTP/1.1\r\nHost: g\r\n" + many + b"\r\n")
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert exchange(server.port, b"NOT HTTP\r\n\r\n").startswith(b"HTTP/1.1 400 Bad Request")
        no_host = exchange(server.port, b"GET /healthz HTTP/1.1\r\n\r\n")  # HTTP/1.1 needs one
        assert no_host.startswith(b"HTTP/1.1 400 Bad Request"), no_host
        answer = exchange(server.port, b"GET /webhooks HTTP/1.1\r\nHost: g\r\nConnection: close"
                          b"\r\n\r\n")  # fmt: skip
        assert answer.startswith(b"HTTP/1.1 405 "), answer
        assert b"\r\nallow: post\r\n" in answer.lower()
        answer = exchange(
            server.port, b"GET /nowhere HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n"
        )
        assert answer.startswith(b"HTTP/1.1 404 "), answer
        assert answer.endswith(b'{"error": "not found"}')
        assert b"\r\nserver: gitsync\r\n" in answer.lower()
    finally:
        server.stop()


def test_a_body_is_counted_as_it_streams_and_cut_at_the_limit() -> None:
    """serving.BodyLimit with a real uvicorn listener and an app that reads whatever comes: a
    chunked body (no length declared) is answered 413 once it passes the limit, and the app
    never sees more than the limit; a body within it is read whole."""
    seen: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        total, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                seen.append(-total)
                return
            total += len(message.get("body", b""))
            more = message.get("more_body", False)
        seen.append(total)
        body = b"read %d" % total
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    listener = Listener("test-http", "127.0.0.1", 0, app, Limits(max_body_bytes=1000))
    listener.start()
    try:

        def chunked(size: int) -> bytes:
            return exchange(listener.port, b"POST / HTTP/1.1\r\nHost: g\r\nConnection: close\r\n"
                            b"Transfer-Encoding: chunked\r\n\r\n" + b"".join(
                                b"64\r\n" + b"x" * 100 + b"\r\n" for _ in range(size // 100)
                            ) + b"0\r\n\r\n")  # fmt: skip

        assert chunked(1000).endswith(b"read 1000")
        answer = chunked(5000)
        assert answer.startswith(b"HTTP/1.1 413 "), answer
        assert answer.endswith(b'{"error": "body larger than 1000 bytes"}')
        assert seen[0] == 1000
        assert -1000 <= seen[1] <= 0  # the app was told the client went, past the limit
    finally:
        listener.stop(time.monotonic() + 5)
