"""Slow clients against the agent's real HTTP server (real sockets, no cluster needed): a
flood of connections trickling a byte at a time can neither hold their slots past the request
head's deadline, nor take more than their share from one address, nor reach the probes, which
the kubelet reads on a listener of their own."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from gitsync.metrics import Metrics
from gitsync.server import MAX_CONNECTIONS, MAX_PER_CLIENT, AgentServer, Hooks
from testbed.controlplane import free_port

# Timing- or memory-sensitive: `make test` runs it alone, after the parallel phase.
pytestmark = pytest.mark.serial

HEAD_SECONDS = 2.0
REQUEST = b"GET /healthz HTTP/1.1\r\nHost: gitsync\r\nX-Slow: " + b"x" * 200 + b"\r\n\r\n"


@pytest.fixture
def server() -> Iterator[AgentServer]:
    hooks = Hooks(lambda: b"s", "https://example.com/r.git", "main", lambda: None,
                  lambda: None, lambda: True, lambda: True)  # fmt: skip
    served = AgentServer(
        "127.0.0.1", free_port(), hooks, Metrics(),
        probes=("127.0.0.1", free_port()), head_seconds=HEAD_SECONDS,
    ).start()  # fmt: skip
    yield served
    served.stop()


def get(port: int, path: str, source: str = "127.0.0.1") -> int:
    connection = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=5, source_address=(source, 0)
    )
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()


class Trickler:
    """A client that sends its request one byte every ``every`` seconds, as the attack does
    (a byte every 20 s against a 30 s per-read timeout), until the server hangs up."""

    def __init__(self, port: int, source: str, every: float) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10,
                                             source_address=(source, 0))  # fmt: skip
        self.every = every
        self.cut_after: float | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.started = time.monotonic()
        self.thread.start()

    def _run(self) -> None:
        try:
            for byte in REQUEST:
                self.sock.sendall(bytes([byte]))
                time.sleep(self.every)
        except OSError:  # reset or broken pipe: the server hung up
            pass
        self.cut_after = time.monotonic() - self.started

    def close(self) -> None:
        self.sock.close()


def wait_for(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_a_slow_client_flood_does_not_take_the_probes_down(server: AgentServer) -> None:
    assert server.probe_port is not None
    sources = [f"127.0.0.{10 + n // MAX_PER_CLIENT}" for n in range(MAX_CONNECTIONS)]
    flood = [Trickler(server.port, source, every=0.25) for source in sources]
    try:
        wait_for(
            lambda: server.listener.gate.open == MAX_CONNECTIONS,
            10,
            "the flood never held every slot",
        )
        # Every slot of the main port is held: a newcomer gets 503 there …
        assert get(server.port, "/healthz", "127.0.0.99") == 503
        # … and the kubelet's probes, on their own listener, answer all along.
        for _ in range(10):
            assert get(server.probe_port, "/healthz") == 200
            assert get(server.probe_port, "/readyz") == 200
            time.sleep(0.1)
        assert get(server.probe_port, "/metrics") == 404  # probes only there
        # The head's deadline cuts every trickler off, though each byte came well within the
        # per-read timeout, and the main port serves again.
        wait_for(lambda: all(t.cut_after is not None for t in flood), HEAD_SECONDS + 10,
                 "a trickling client kept its connection past the head deadline")  # fmt: skip
        assert max(t.cut_after or 0 for t in flood) < HEAD_SECONDS + 5
        wait_for(lambda: server.listener.gate.open == 0, 10, "slots not freed")
        assert get(server.port, "/healthz") == 200
    finally:
        for trickler in flood:
            trickler.close()


def test_one_address_gets_at_most_its_share_of_connections(server: AgentServer) -> None:
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=10,
                                     source_address=("127.0.0.2", 0))
            for _ in range(MAX_PER_CLIENT)]  # fmt: skip
    try:
        wait_for(lambda: server.listener.gate.clients.get("127.0.0.2") == MAX_PER_CLIENT, 10,
                 "the connections were not accepted")  # fmt: skip
        assert get(server.port, "/healthz", "127.0.0.2") == 503  # one more from there: no
        assert get(server.port, "/healthz", "127.0.0.3") == 200  # another address: served
    finally:
        for sock in held:
            sock.close()
    wait_for(lambda: "127.0.0.2" not in server.listener.gate.clients, 10, "slots not given back")
    assert get(server.port, "/healthz", "127.0.0.2") == 200


def test_a_webhook_body_within_its_deadline_is_still_read(server: AgentServer) -> None:
    """The deadline bounds the head; a body sent in pieces within BODY_SECONDS is served."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        body = b"{}"
        sock.sendall(b"POST /webhooks HTTP/1.1\r\nHost: g\r\nX-Gitea-Event: push\r\n"
                     b"Content-Length: 2\r\n\r\n")  # fmt: skip
        time.sleep(HEAD_SECONDS + 0.5)  # past the head's deadline, within the body's
        sock.sendall(body)
        answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 401"), answer  # judged (unsigned), not cut off
    finally:
        sock.close()
