"""A standby relays verified webhooks to the leader: two real HTTP servers on loopback, with
callbacks in place of agents (the two-process version is in tests/integration/test_agent.py)."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from gitsync.metrics import Metrics
from gitsync.relay import RELAYED, not_loopback, not_the_holder, outside
from gitsync.server import POLL_BURST, POLL_SECONDS, AgentServer, Hooks, PollLimiter
from gitsync.webhooks import RELAY_SIGNATURE, judge, relay_headers
from testbed.controlplane import free_port

SECRET = b"relay-secret"
REPO = "https://example.com/r.git"
PUSH = json.dumps({"ref": "refs/heads/main", "repository": {"clone_url": REPO}}).encode()


def server(
    polls: list[str],
    name: str,
    leader: Callable[[], str | None],
    poll_limit: tuple[int, float] = (POLL_BURST, POLL_SECONDS),
) -> AgentServer:
    hooks = Hooks(lambda: SECRET, REPO, "main", lambda: polls.append(name), lambda: None,
                  lambda: True, lambda: True, leader)  # fmt: skip
    return AgentServer("127.0.0.1", free_port(), hooks, Metrics(), poll_limit=poll_limit).start()


def post(
    port: int, body: bytes, signed: bytes | None = None, source: str = "127.0.0.1", **extra: str
) -> tuple[int, str | None, dict[str, object]]:
    signature = hmac.new(SECRET, body if signed is None else signed, hashlib.sha256).hexdigest()
    headers = {"X-Gitea-Event": "push", "X-Gitea-Signature": signature, **extra}
    connection = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=10, source_address=(source, 0)
    )
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


def test_the_poll_limiter_is_a_token_bucket_per_source() -> None:
    limiter = PollLimiter(burst=3, seconds=2.0, sources=2)
    assert [limiter.take("a", 100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a", 100.0) == 2.0  # empty: the next token in one period
    assert limiter.take("a", 101.0) == 1.0  # half refilled
    assert limiter.take("a", 102.0) == 0.0  # one token back, taken
    assert limiter.take("b", 102.0) == 0.0  # another source has its own bucket
    assert limiter.take("a", 200.0) == 0.0  # refilled, never beyond the burst:
    assert [limiter.take("a", 200.0) for _ in range(3)] == [0.0, 0.0, 2.0]
    limiter.take("c", 200.0)  # a third source: the least recently used ("b") is dropped
    assert [limiter.take("b", 200.0) for _ in range(4)] == [0.0, 0.0, 0.0, 2.0]


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_pushes_with_fresh_delivery_ids_are_rate_limited_per_source_and_none_is_lost() -> None:
    """The delivery ID is not signed: a captured push replayed with new IDs passes the
    signature check and the dedup. Past the burst each source gets 429 (Retry-After), and the
    leader polls once more when the bucket refills, however many were limited."""
    polls: list[str] = []
    leader = server(polls, "leader", lambda: None, poll_limit=(2, 2.0))
    try:
        answers = [post(leader.port, PUSH, **{"X-Gitea-Delivery": f"r{n}"}) for n in range(6)]
        assert [a[0] for a in answers] == [202, 202, 429, 429, 429, 429]
        _, retry, answer = answers[2]
        assert (retry, answer["result"]) == ("2", "rate-limited")
        assert "one per 2 s" in str(answer["reason"])
        assert polls == ["leader", "leader"]
        assert len(leader._trailing) == 1  # four limited pushes, one poll armed
        wait_for(lambda: len(polls) == 3, "the limited pushes were never polled")
        wait_for(lambda: not leader._trailing, "the trailing poll stayed armed")
        # Another source has its own bucket; a replay of a seen ID costs no token.
        assert post(leader.port, PUSH, source="127.0.0.2", **{"X-Gitea-Delivery": "o1"})[0] == 202
        assert post(leader.port, PUSH, **{"X-Gitea-Delivery": "r0"})[2]["result"] == "duplicate"
        assert results(leader) == {"poll": 3, "rate-limited": 4, "duplicate": 1}
    finally:
        leader.stop()


def test_a_standby_does_not_relay_what_is_over_the_limit() -> None:
    polls: list[str] = []
    leader = server(polls, "leader", lambda: None)
    standby = server(polls, "standby", lambda: f"http://127.0.0.1:{leader.port}/", (1, 60.0))
    try:
        assert post(standby.port, PUSH, **{"X-Gitea-Delivery": "s1"})[0] == 202
        status, retry, answer = post(standby.port, PUSH, **{"X-Gitea-Delivery": "s2"})
        assert (status, retry) == (429, "60")
        assert "the next poll picks it up" in str(answer["reason"])
        assert polls == ["leader"]  # relayed once; the standby never polls itself
        assert results(standby) == {"relayed": 1, "rate-limited": 1}
    finally:
        standby.stop()


class Capture(BaseHTTPRequestHandler):
    """Whatever a Lease may name: records what a relay sends it."""

    seen: ClassVar[list[dict[str, str]]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        type(self).seen.append({k.lower(): v for k, v in self.headers.items()})
        answer = b'{"result": "poll"}'
        self.send_response(202)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


def test_a_relay_carries_no_forge_credential_only_its_own_signature() -> None:
    """A GitLab webhook's token is the shared secret itself: whatever URL the Lease names, a
    relay sends it the event headers and an HMAC under a key derived from the secret."""
    capture = ThreadingHTTPServer(("127.0.0.1", 0), Capture)
    Capture.seen = []
    thread = threading.Thread(target=capture.serve_forever, daemon=True)
    thread.start()
    polls: list[str] = []
    standby = server(polls, "standby", lambda: f"http://127.0.0.1:{capture.server_port}")
    try:
        gitlab = json.dumps({"ref": "refs/heads/main", "project": {"git_http_url": REPO}}).encode()
        headers = {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": SECRET.decode(),
                   "X-Gitlab-Event-UUID": "u1", "Content-Type": "application/json"}  # fmt: skip
        connection = http.client.HTTPConnection("127.0.0.1", standby.port, timeout=10)
        connection.request("POST", "/webhooks", gitlab, headers)
        assert connection.getresponse().status == 202
        connection.close()
        post(standby.port, PUSH, **{"X-Gitea-Delivery": "d2"})
        [from_gitlab, from_gitea] = Capture.seen
        for seen in (from_gitlab, from_gitea):
            assert SECRET.decode() not in " ".join(seen.values())
            assert not {"x-gitlab-token", "x-gitea-signature", "x-hub-signature-256"} & set(seen)
            assert seen[RELAY_SIGNATURE]
        assert from_gitlab["x-gitlab-event-uuid"] == "u1"
        assert from_gitea["x-gitea-delivery"] == "d2"
    finally:
        standby.stop()
        capture.shutdown()
        capture.server_close()


def test_the_leader_accepts_a_relay_only_with_a_fresh_valid_relay_signature() -> None:
    polls: list[str] = []
    leader = server(polls, "leader", lambda: None)
    event = {"x-gitea-event": "push", "x-gitea-delivery": "r1"}
    now = time.time()
    try:
        good = relay_headers(event, PUSH, SECRET, now)
        forged = relay_headers(event, PUSH, b"not the secret", now)
        stale = relay_headers(event, PUSH, SECRET, now - 3600)
        other_body = relay_headers(event, PUSH.replace(b"main", b"evil"), SECRET, now)
        for headers, status in ((forged, 401), (stale, 401), (other_body, 401), (good, 202)):
            connection = http.client.HTTPConnection("127.0.0.1", leader.port, timeout=10)
            connection.request("POST", "/webhooks", PUSH, {**headers, RELAYED: "1"})
            assert connection.getresponse().status == status, headers
            connection.close()
        assert polls == ["leader"]
    finally:
        leader.stop()


@pytest.mark.parametrize("offset", [-61.0, 61.0])
def test_a_relay_signature_is_valid_for_a_minute(offset: float) -> None:
    headers = relay_headers({"x-gitea-event": "push"}, PUSH, SECRET, 1_000_000.0)
    assert judge(headers, PUSH, SECRET, REPO, "main", now=1_000_030.0).status == 202
    late = judge(headers, PUSH, SECRET, REPO, "main", now=1_000_000.0 + offset)
    assert (late.status, late.reason) == (401, "relay time missing or more than 60 s off")
    # Without a clock (a caller that does not take relays), a relay is refused.
    assert judge(headers, PUSH, SECRET, REPO, "main").status == 401
    # The relay signature is not the forge's: it cannot be replayed as a Gitea signature.
    assert headers[RELAY_SIGNATURE] != hmac.new(SECRET, PUSH, hashlib.sha256).hexdigest()


def test_with_relay_networks_a_standby_relays_only_to_a_leader_inside_them() -> None:
    polls: list[str] = []
    leader = server(polls, "leader", lambda: None)
    hooks = lambda networks, url: Hooks(  # noqa: E731
        lambda: SECRET, REPO, "main", lambda: None, lambda: None, lambda: True, lambda: True,
        lambda: url, lambda base: outside(base, networks),
    )  # fmt: skip
    at = f"http://127.0.0.1:{leader.port}"
    cases = [
        (("10.244.0.0/16",), at, 503, "is outside webhooks.relayNetworks"),
        (("127.0.0.0/8",), f"http://localhost:{leader.port}", 503, "names no IP address"),
        (("10.244.0.0/16", "127.0.0.0/8"), at, 202, None),
    ]
    try:
        for networks, url, status, reason in cases:
            standby = AgentServer("127.0.0.1", free_port(), hooks(networks, url), Metrics()).start()
            try:
                got, _, answer = post(standby.port, PUSH)
                assert got == status, answer
                if reason is not None:
                    assert reason in str(answer["reason"])
            finally:
                standby.stop()
        assert polls == ["leader"]  # only the relay inside the networks reached it
    finally:
        leader.stop()


def test_by_default_a_standby_relays_only_to_the_lease_holders_own_pod() -> None:
    pod = {"ip": "10.244.1.7", "serviceAccount": "gitsync"}
    url = "http://10.244.1.7:8080"
    assert not_the_holder(url, "gitsync-a", pod, "gitsync") is None
    assert not_the_holder("http://[fd00::7]:8080", "a", {**pod, "ip": "fd00::7"}, "gitsync") is None
    refusals = [
        (not_the_holder("http://evil.example:8080", "gitsync-a", pod, "gitsync"), "names no IP"),
        (not_the_holder(url, "gitsync-a", None, "gitsync"), "is no pod in the Lease's namespace"),
        (not_the_holder("http://10.244.9.9:8080", "gitsync-a", pod, "gitsync"),
         "not the address of the holder's pod 'gitsync-a' (10.244.1.7)"),
        (not_the_holder(url, "gitsync-a", {**pod, "ip": ""}, "gitsync"), "(none yet)"),
        (not_the_holder(url, "gitsync-a", pod, "other"),
         "runs as service account 'gitsync', not as this replica ('other')"),
    ]  # fmt: skip
    for refusal, why in refusals:
        assert why in str(refusal), (refusal, why)
    # Outside a pod: a leader on this machine only.
    assert not_loopback("http://127.0.0.1:8080") is None
    assert not_loopback("http://[::1]:8080") is None
    for url in ("http://10.0.0.1:8080", "http://localhost:8080", "http://169.254.169.254/"):
        assert "runs outside a pod" in str(not_loopback(url))
