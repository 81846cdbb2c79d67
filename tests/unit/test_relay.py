"""A standby relays verified webhooks to the leader: two real HTTP servers on loopback, with
callbacks in place of agents (the two-process version is in tests/integration/test_agent.py)."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
from collections.abc import Callable

import pytest

from gitsync.metrics import Metrics
from gitsync.relay import RELAYED
from gitsync.server import AgentServer, Hooks
from testbed.controlplane import free_port

SECRET = b"relay-secret"
REPO = "https://example.com/r.git"
PUSH = json.dumps({"ref": "refs/heads/main", "repository": {"clone_url": REPO}}).encode()


def server(polls: list[str], name: str, leader: Callable[[], str | None]) -> AgentServer:
    hooks = Hooks(lambda: SECRET, REPO, "main", lambda: polls.append(name), lambda: None,
                  lambda: True, lambda: True, leader)  # fmt: skip
    return AgentServer("127.0.0.1", free_port(), hooks, Metrics()).start()


def post(
    port: int, body: bytes, signed: bytes | None = None, **extra: str
) -> tuple[int, str | None, dict[str, object]]:
    signature = hmac.new(SECRET, body if signed is None else signed, hashlib.sha256).hexdigest()
    headers = {"X-Gitea-Event": "push", "X-Gitea-Signature": signature, **extra}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", "/webhooks", body, headers)
        response = connection.getresponse()
        return response.status, response.getheader("Retry-After"), json.loads(response.read())
    finally:
        connection.close()


def results(target: AgentServer) -> dict[str, float]:
    return {
        sample.labels["result"]: sample.value
        for metric in target.metrics.registry.collect()
        if metric.name == "gitsync_webhook_requests"
        for sample in metric.samples
        if sample.name.endswith("_total")
    }


def test_a_standby_relays_a_verified_push_and_answers_with_the_leaders_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gitsync.server")
    polls: list[str] = []
    leader = server(polls, "leader", lambda: None)
    standby = server(polls, "standby", lambda: f"http://127.0.0.1:{leader.port}/")
    try:
        status, retry, answer = post(standby.port, PUSH, **{"X-Gitea-Delivery": "d1"})
        assert (status, retry) == (202, None)
        assert (answer["result"], answer["leader"]) == ("relayed", "poll")
        assert polls == ["leader"]
        # The leader deduplicates the delivery, whichever replica it came through.
        assert post(standby.port, PUSH, **{"X-Gitea-Delivery": "d1"})[2]["leader"] == "duplicate"
        # A forged request is rejected by the standby itself: the leader never sees it.
        assert post(standby.port, PUSH.replace(b"main", b"evil"), PUSH)[0] == 401
        assert polls == ["leader"]
        assert results(standby) == {"relayed": 2, "rejected-401": 1}
        assert results(leader) == {"poll": 1, "duplicate": 1}
        # Log lines carry their fields as attributes (keys of --log-format json).
        fields = {
            (r.provider, r.event, r.delivery, r.result)  # type: ignore[attr-defined]
            for r in caplog.records
            if hasattr(r, "result")
        }
        assert {("gitea", "push", "d1", "relayed"), ("gitea", "push", "d1", "poll")} <= fields
    finally:
        standby.stop()
        leader.stop()


def test_without_a_reachable_leader_a_standby_answers_503_with_retry_after() -> None:
    polls: list[str] = []
    closed = free_port()
    unknown = server(polls, "a", lambda: "")
    unreachable = server(polls, "b", lambda: f"http://127.0.0.1:{closed}")
    try:
        for target in (unknown, unreachable):
            status, retry, answer = post(target.port, PUSH)
            assert (status, retry, answer["result"]) == (503, "2", "relay-failed")
            assert results(target) == {"relay-failed": 1}
        # A relayed request reaching a replica that does not lead either is not relayed again
        # (two replicas disagreeing about the leader would bounce it between them).
        loop = server(polls, "c", lambda: f"http://127.0.0.1:{unknown.port}")
        try:
            assert post(loop.port, PUSH, **{RELAYED: "1"})[0] == 503
            assert results(unknown) == {"relay-failed": 1}  # never reached
        finally:
            loop.stop()
        assert polls == []
    finally:
        unknown.stop()
        unreachable.stop()
