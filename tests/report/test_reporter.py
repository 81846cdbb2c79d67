"""The reporter never blocks a rollout: posts are queued, identical consecutive statuses are
skipped (also against what the forge already shows), an obsolete queued status gives way to
a newer one, failures are retried then counted, and no token reaches a log line."""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path

import pytest

from gitsync.config import AgentConfig, StatusConfig
from gitsync.metrics import Metrics
from gitsync.report.factory import build_provider
from gitsync.report.github import GitHubProvider, token_headers
from gitsync.report.gitlab import GitLabProvider, gitlab_headers
from gitsync.report.http import JsonClient, RetryPolicy
from gitsync.report.reporter import Reporter
from gitsync.report.status import CommitStatus, State
from gitsync.source.config import RepoSource, TokenAuth
from tests.report.forge import ForgeServer, GitLabStatuses, Reply, Request

SHA = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "ghp_never-log-me-0123456789"


def status(state: State, text: str, context: str = "gitsync/staging") -> CommitStatus:
    return CommitStatus(context, state, text)


def combined(statuses: list[dict[str, str]]) -> Reply:
    return Reply(200, {"state": "pending", "statuses": statuses})


def on_get(post: Reply, get: Reply | None = None) -> object:
    return lambda request: (get or combined([])) if request.method == "GET" else post


@pytest.fixture
def reporter_for(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("GH_TOKEN", TOKEN)
    made: list[Reporter] = []

    def make(
        forge: ForgeServer, metrics: Metrics, attempts: int = 2, redeliver: float = 10.0
    ) -> Reporter:
        client = JsonClient(
            forge.url,
            token_headers(TokenAuth(token_env="GH_TOKEN")),
            timeout=5,
            policy=RetryPolicy(attempts=attempts, backoff=0.01),
            sleep=lambda seconds: None,
        )
        reporter = Reporter(
            GitHubProvider(client, "o/r"), metrics, attempts=2, backoff=0.01, redeliver=redeliver
        )
        made.append(reporter)
        return reporter

    yield make
    for reporter in made:
        reporter.close(timeout=5)


def count(metrics: Metrics, state: str, result: str) -> float:
    value = metrics.registry.get_sample_value(
        "gitsync_status_post_total", {"provider": "github", "state": state, "result": result}
    )
    return value or 0.0


def test_posting_returns_at_once_while_the_forge_hangs(reporter_for) -> None:  # type: ignore[no-untyped-def]
    metrics = Metrics()
    with ForgeServer(on_get(Reply(201, {}))) as forge:
        forge.gate = threading.Event()
        reporter = reporter_for(forge, metrics)
        reporter.post(SHA, status(State.PENDING, "applying wave 1/1: ranker serve-update"))
        reporter.post(SHA, status(State.SUCCESS, "Healthy"))
        # Both calls returned although the forge has not answered anything yet.
        assert forge.requests == []
        assert not reporter.flush(0.2)
        forge.gate.set()
        assert reporter.flush(10)
    assert [r.body["state"] for r in forge.posts()] == ["success"]  # the pending one was obsolete
    assert count(metrics, "pending", "dropped") == 1
    assert count(metrics, "success", "posted") == 1


def test_identical_consecutive_statuses_are_posted_once(reporter_for) -> None:  # type: ignore[no-untyped-def]
    metrics = Metrics()
    with ForgeServer(on_get(Reply(201, {}))) as forge:
        reporter = reporter_for(forge, metrics)
        for text in ("waiting", "waiting", "waiting", "Healthy", "Healthy"):
            reporter.post(SHA, status(State.SUCCESS if text == "Healthy" else State.PENDING, text))
            assert reporter.flush(10)
    assert [r.body["description"] for r in forge.posts()] == ["waiting", "Healthy"]
    assert count(metrics, "pending", "skipped") == 2
    assert count(metrics, "success", "skipped") == 1
    # Seeding read the commit's statuses once.
    assert [r.method for r in forge.requests].count("GET") == 1


def test_what_the_forge_already_shows_is_not_posted_again(reporter_for) -> None:  # type: ignore[no-untyped-def]
    metrics = Metrics()
    shown = combined(
        [
            {
                "context": "gitsync/staging",
                "state": "success",
                "description": "Healthy",
                "target_url": "",
            }
        ]
    )
    with ForgeServer(on_get(Reply(201, {}), shown)) as forge:
        reporter = reporter_for(forge, metrics)
        reporter.post(SHA, status(State.SUCCESS, "Healthy"))
        reporter.post(SHA, status(State.SUCCESS, "Healthy", "gitsync/production"))
        assert reporter.flush(10)
    assert [r.body["context"] for r in forge.posts()] == ["gitsync/production"]


def test_failures_are_retried_then_counted_and_logged_without_the_token(
    reporter_for,
    caplog: pytest.LogCaptureFixture,  # type: ignore[no-untyped-def]
) -> None:
    metrics = Metrics()
    caplog.set_level(logging.DEBUG)
    with ForgeServer(on_get(Reply(502, {"message": "bad gateway"}))) as forge:
        reporter = reporter_for(forge, metrics)
        reporter.post(SHA, status(State.FAILURE, "ranker Degraded"))
        assert reporter.flush(10)
    # 2 reporter attempts, 2 HTTP attempts each.
    assert len(forge.posts()) == 4
    assert count(metrics, "failure", "failed") == 1
    assert (
        metrics.registry.get_sample_value(
            "gitsync_status_post_retries_total", {"provider": "github"}
        )
        or 0
    ) >= 1
    assert "not posted (failed; delivered again in 10s)" in caplog.text
    assert TOKEN not in caplog.text
    assert all(TOKEN in r.headers["authorization"] for r in forge.requests)


def test_a_newer_status_replaces_one_being_retried(reporter_for) -> None:  # type: ignore[no-untyped-def]
    metrics = Metrics()
    replies = iter([Reply(502, {}), Reply(502, {})])
    posted: list[str] = []
    go = threading.Event()

    def respond(request: Request) -> Reply:
        if request.method == "GET":
            return combined([])
        posted.append(request.body["state"])
        if request.body["state"] == "pending":
            go.wait(10)
            return next(replies, Reply(201, {}))
        return Reply(201, {})

    with ForgeServer(respond) as forge:
        reporter = reporter_for(forge, metrics, attempts=1)
        reporter.post(SHA, status(State.PENDING, "applying"))
        while not posted:
            threading.Event().wait(0.01)
        reporter.post(SHA, status(State.SUCCESS, "Healthy"))  # arrives while pending fails
        go.set()
        assert reporter.flush(10)
    assert posted == ["pending", "success"]
    assert count(metrics, "pending", "dropped") == 1
    assert count(metrics, "success", "posted") == 1


def test_latency_is_measured(reporter_for) -> None:  # type: ignore[no-untyped-def]
    metrics = Metrics()
    with ForgeServer(on_get(Reply(201, {}))) as forge:
        reporter = reporter_for(forge, metrics)
        reporter.post(SHA, status(State.SUCCESS, "Healthy"))
        assert reporter.flush(10)
    assert (
        metrics.registry.get_sample_value(
            "gitsync_status_post_latency_seconds_count", {"provider": "github"}
        )
        == 1
    )


def test_a_status_that_failed_is_delivered_again_once_the_forge_is_back(reporter_for) -> None:  # type: ignore[no-untyped-def]
    """Regression: a status whose retries all failed was dropped for good, so a forge down
    longer than the retries never showed the rollout's final status."""
    metrics = Metrics()
    down = threading.Event()
    down.set()

    def respond(request: Request) -> Reply:
        if request.method == "GET":
            return combined([])
        return Reply(503, {"message": "down"}) if down.is_set() else Reply(201, {})

    with ForgeServer(respond) as forge:
        reporter = reporter_for(forge, metrics, redeliver=0.05)
        reporter.post(SHA, status(State.SUCCESS, "Healthy"))
        while count(metrics, "success", "failed") < 3:  # three rounds failed
            threading.Event().wait(0.01)
        assert reporter.waiting == 1
        down.clear()
        while count(metrics, "success", "posted") == 0:
            threading.Event().wait(0.01)
        assert reporter.waiting == 0
    assert [r.body["state"] for r in forge.posts()][-1] == "success"


def test_a_newer_status_replaces_one_waiting_for_redelivery(reporter_for) -> None:  # type: ignore[no-untyped-def]
    metrics = Metrics()
    with ForgeServer(on_get(Reply(502, {}))) as forge:
        reporter = reporter_for(forge, metrics, redeliver=3600)
        reporter.post(SHA, status(State.PENDING, "applying"))
        assert reporter.flush(10)
        assert reporter.waiting == 1
        forge.default = on_get(Reply(201, {}))  # type: ignore[assignment]
        reporter.post(SHA, status(State.SUCCESS, "Healthy"))
        assert reporter.flush(10)
        assert reporter.waiting == 0
    assert [r.body["state"] for r in forge.posts()][-1] == "success"
    assert count(metrics, "success", "posted") == 1


def test_shutdown_hands_back_what_waits_for_redelivery(reporter_for) -> None:  # type: ignore[no-untyped-def]
    metrics = Metrics()
    with ForgeServer(on_get(Reply(502, {}))) as forge:
        reporter = reporter_for(forge, metrics, redeliver=3600)
        reporter.post(SHA, status(State.SUCCESS, "Healthy"))
        assert reporter.flush(10)
        assert reporter.close(timeout=5) == [(SHA, status(State.SUCCESS, "Healthy"))]
    assert count(metrics, "success", "dropped") == 1


def test_shutdown_hands_back_the_post_a_hung_forge_never_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The forge accepts the connection and never answers: close() returns within its
    timeout with the status in flight, and the one queued behind it, oldest first."""
    monkeypatch.setenv("GH_TOKEN", TOKEN)
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)
    try:
        port = hung.getsockname()[1]
        client = JsonClient(
            f"http://127.0.0.1:{port}",
            token_headers(TokenAuth(token_env="GH_TOKEN")),
            timeout=30,
            policy=RetryPolicy(attempts=1, backoff=0.01),
            sleep=lambda seconds: None,
        )
        reporter = Reporter(GitHubProvider(client, "o/r"), Metrics(), attempts=1)
        reporter.post(SHA, status(State.PENDING, "applying"))
        reporter.post("b" * 40, status(State.SUCCESS, "Healthy"))
        began = time.monotonic()
        left = reporter.close(timeout=1.0)
        assert time.monotonic() - began < 2.0
        assert left == [
            (SHA, status(State.PENDING, "applying")),
            ("b" * 40, status(State.SUCCESS, "Healthy")),
        ]
    finally:
        hung.close()


def test_gitlab_wave_updates_are_not_redelivered(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each wave posts ``running`` again; GitLab refuses an unchanged state. That is not a
    failed post: nothing waits for redelivery and the final state is posted."""
    monkeypatch.setenv("GL_TOKEN", TOKEN)
    metrics, gitlab = Metrics(), GitLabStatuses()
    with ForgeServer(gitlab) as forge:
        client = JsonClient(
            forge.url,
            lambda: gitlab_headers(TokenAuth(token_env="GL_TOKEN")),
            timeout=5,
            policy=RetryPolicy(attempts=2, backoff=0.01),
            sleep=lambda seconds: None,
        )
        reporter = Reporter(GitLabProvider(client, "g/p"), metrics, attempts=2, backoff=0.01)
        try:
            for text in ("applying wave 1/2", "waiting for wave 1/2", "applying wave 2/2"):
                reporter.post(SHA, status(State.PENDING, text))
                assert reporter.flush(10)
            assert reporter.waiting == 0
            reporter.post(SHA, status(State.SUCCESS, "Healthy"))
            assert reporter.flush(10)
        finally:
            reporter.close(timeout=5)
    assert gitlab.latest(SHA, "gitsync/staging")["status"] == "success"
    failed = metrics.registry.get_sample_value(
        "gitsync_status_post_total", {"provider": "gitlab", "state": "pending", "result": "failed"}
    )
    assert not failed


@pytest.mark.parametrize("code", [401, 403, 404, 422])
def test_a_permanent_refusal_is_logged_once_counted_and_not_delivered_again(
    reporter_for,  # type: ignore[no-untyped-def]
    caplog: pytest.LogCaptureFixture,
    code: int,
) -> None:
    metrics = Metrics()
    caplog.set_level(logging.DEBUG)
    refused = Reply(code, {"message": f"refused {TOKEN}"})  # a 403 without rate-limit headers
    with ForgeServer(on_get(refused, combined([]))) as forge:
        reporter = reporter_for(forge, metrics, redeliver=0.01)
        reporter.post(SHA, status(State.SUCCESS, "Healthy"))
        assert reporter.flush(10)
        threading.Event().wait(0.2)  # twenty redelivery intervals
        assert reporter.waiting == 0
        assert len(forge.posts()) == 1  # neither retried nor delivered again
    assert count(metrics, "success", "rejected") == 1
    assert count(metrics, "success", "failed") == 0
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    message = errors[0].getMessage()
    assert f"gitsync/staging on {SHA[:12]} refused by github with HTTP {code}" in message
    assert TOKEN not in caplog.text


def test_a_rate_limited_403_is_not_a_refusal(reporter_for) -> None:  # type: ignore[no-untyped-def]
    metrics = Metrics()
    limited = Reply(403, {"message": "secondary rate limit"}, {"Retry-After": "0"})
    with ForgeServer(on_get(limited)) as forge:
        reporter = reporter_for(forge, metrics, redeliver=0.01)
        reporter.post(SHA, status(State.SUCCESS, "Healthy"))
        while count(metrics, "success", "failed") < 2:  # delivered again, and again
            threading.Event().wait(0.01)
    assert count(metrics, "success", "rejected") == 0


def test_each_retried_request_is_counted_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The HTTP client counts the requests it sends again within one post (``on_retry``), the
    reporter the posts it makes again; no request is counted twice: retries = requests - 1
    per delivery round."""
    monkeypatch.setenv("GH_TOKEN", TOKEN)
    metrics = Metrics()
    with ForgeServer(on_get(Reply(502, {"message": "bad gateway"}))) as forge:
        config = AgentConfig(
            RepoSource(forge.url + "/o/r.git", "main", Path("/nonexistent")),
            status=StatusConfig("github", forge.url, "o/r", TokenAuth(token_env="GH_TOKEN")),
        )
        provider = build_provider(config, metrics)
        assert isinstance(provider, GitHubProvider)
        provider.client.sleep = lambda seconds: None
        provider.client.policy = RetryPolicy(attempts=3, backoff=0.01)
        reporter = Reporter(provider, metrics, attempts=2, backoff=0.01, redeliver=3600)
        try:
            reporter.post(SHA, status(State.SUCCESS, "Healthy"))
            assert reporter.flush(10)
        finally:
            reporter.close(timeout=5)
    assert len(forge.posts()) == 6  # 2 reporter attempts of 3 HTTP attempts
    retries = metrics.registry.get_sample_value(
        "gitsync_status_post_retries_total", {"provider": "github"}
    )
    assert retries == 5
