"""Notifications from a live agent to real HTTP receivers on 127.0.0.1 (Slack, Teams and a
signed webhook), against the test bed's API server and the simulator: a rollout, a drift
healed, a failure, a rollback, a fight over a field and a Gitea pull request's preview told
in Ray terms with valid signatures; receivers that are down, hang
past the timeout or answer 500 never hold up the rollout and get their message after
retries; a full queue drops the oldest; no secret reaches a log line."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from gitsync.agent import Agent
from gitsync.config import (
    DriftSettings,
    LeaderElection,
    NotificationTarget,
    StatusConfig,
    UiSettings,
)
from gitsync.metrics import Metrics
from gitsync.model import Outcome, ServiceKey
from gitsync.notify import Event, Notice, verify
from gitsync.report.factory import build_notifier, build_pulls
from gitsync.report.notifier import Notifier
from gitsync.source.config import TokenAuth
from testbed.gitea import Gitea
from testbed.simulator import FailureRule, Simulator

from .gitops import GitOpsRepo
from .test_drift import edit_serve_config
from .test_previews import Forge, scale_ranker

SIGNING_SECRET = "whsec-notify-5f0c1d2e3a4b"
SLACK_PATH = "/services/T0000/B0000/tok-slack-8c1f2e"
TEAMS_PATH = "/workflows/7a1/triggers/manual/paths/invoke?api-version=1&sig=teams-sig-4d2b"
SECRETS = (SIGNING_SECRET, "tok-slack-8c1f2e", "teams-sig-4d2b", "tok-down-77aa", "tok-flaky-31cc")


Answer = int | str | tuple[int, dict[str, str]]  # a status, "hang", "hold", or with headers


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """A real HTTP server on 127.0.0.1 that records every POST and answers each path from a
    script, in order (the last answer repeats): a status code, ``hang`` (never answers until
    the receiver closes: the client times out) or ``hold`` (answers 200 once ``release``)."""

    def __init__(self, *, listening: bool = True) -> None:
        """``listening`` False: the port is bound (reserved) but refuses connections, as a
        receiver that is down, until :meth:`listen`."""
        self.requests: list[Received] = []
        self.scripts: dict[str, list[Answer]] = defaultdict(lambda: [200])
        self.release = threading.Event()
        self.closed = threading.Event()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    receiver.requests.append(Received(self.path, dict(self.headers), body))
                    script = receiver.scripts[self.path.partition("?")[0]]
                    answer = script.pop(0) if len(script) > 1 else script[0]
                if answer == "hang":
                    receiver.closed.wait(60)
                    return
                if answer == "hold":
                    receiver.release.wait(60)
                    answer = 200
                status, headers = answer if isinstance(answer, tuple) else (answer, {})
                assert isinstance(status, int)
                # A failing receiver that quotes the URL back: it must not reach the logs.
                text = b"ok" if status < 300 else f"failed at {self.path}".encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
        self.server.daemon_threads = True
        self.server.server_bind()
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        if listening:
            self.listen()

    def listen(self) -> None:
        self.server.server_activate()
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def answer(self, path: str, *answers: Answer) -> None:
        self.scripts[path] = list(answers)

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.path.partition("?")[0] == path.partition("?")[0]]

    def events(self, path: str, key: Callable[[Any], str] = lambda b: b["event"]) -> list[str]:
        return [key(r.json) for r in self.at(path)]

    def close(self) -> None:
        self.release.set()
        self.closed.set()
        if self.thread.is_alive():
            self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.close()


def wait_for(predicate: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def count(metrics: Metrics, target: str, result: str) -> float:
    value = metrics.registry.get_sample_value(
        "gitsync_notifications_total", {"target": target, "result": result}
    )
    return value or 0.0


def webhook(name: str, url: str, *events: Event, **more: Any) -> NotificationTarget:
    return NotificationTarget(name, "webhook", url, events=tuple(str(e) for e in events), **more)


def break_embedder(repo: GitOpsRepo, sim: Simulator, namespace: str) -> str:
    """A commit ("Use embedder v2") whose Serve app KubeRay reports DEPLOY_FAILED."""
    sim.add_rule(
        FailureRule(
            namespace=namespace,
            import_path="embedder.v2:app",
            message="ModuleNotFoundError: No module named 'embedder.v2'",
        )
    )
    return repo.commit(
        lambda root: repo.edit("embedder.yaml", "embedder.serve:app", "embedder.v2:app"),
        "Use embedder v2",
    )


def test_rollouts_drift_and_a_failure_are_told_to_slack_teams_and_a_signed_webhook(
    api: client.ApiClient,
    sim: Simulator,
    namespace: str,
    tmp_path: Path,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG, logger="gitsync")
    repo = GitOpsRepo(tmp_path / "gitops", namespace, self_heal=True)
    (tmp_path / "signing").write_text(SIGNING_SECRET + "\n")
    (tmp_path / "slack-url").write_text(receiver.url(SLACK_PATH))
    monkeypatch.setenv("TEAMS_URL", receiver.url(TEAMS_PATH))
    targets = (
        NotificationTarget("audit", "webhook", receiver.url("/hooks/gitsync"),
                           secret=TokenAuth(token_file=tmp_path / "signing")),
        NotificationTarget("slack", "slack", url_from=TokenAuth(token_file=tmp_path / "slack-url"),
                           environments=("staging",)),
        NotificationTarget("teams", "teams", url_from=TokenAuth(token_env="TEAMS_URL"),
                           events=("rollout.failed", "rollout.rolledBack")),
        NotificationTarget("prod-only", "webhook", receiver.url("/prod"),
                           environments=("production",)),
    )  # fmt: skip
    config = replace(
        repo.agent_config(tmp_path / "cache"),
        leader_election=LeaderElection(enabled=False),
        status=replace(StatusConfig(), target_url="https://ci.example.com/{context}/{short}"),
        ui=replace(UiSettings(), external_url="https://gitsync.example.com"),
        notifications=targets,
    )
    metrics = Metrics()
    agent = Agent(config, api, "notify", metrics=metrics, notifier=build_notifier(config, metrics))
    try:
        first = repo.revisions[0]
        agent.poll()  # the first pass creates staging's services
        assert agent.last_ok
        wait_for(
            lambda: len(receiver.at(SLACK_PATH)) == len(receiver.at("/hooks/gitsync")) == 2,
            "the first rollout's messages",
        )
        assert receiver.events("/hooks/gitsync") == ["rollout.started", "rollout.succeeded"]
        started, succeeded = (r.json for r in receiver.at("/hooks/gitsync"))
        assert (started["version"], started["environment"], started["revision"]) == (
            1,
            "staging",
            first,
        )
        assert started["subject"] == "initial"
        assert {s["name"]: s["action"] for s in started["services"]} == {
            "embedder": "create",
            "ranker": "create",
            "summarizer": "create",
        }
        assert succeeded["links"] == {
            "status": f"https://ci.example.com/gitsync/staging/{first[:12]}",
            "page": "https://gitsync.example.com/environments/staging",
        }
        slack = receiver.at(SLACK_PATH)[1].json
        assert slack["text"] == f":large_green_circle: staging: {first[:12]} rolled out, Healthy"
        assert slack["blocks"][0]["type"] == "header"

        # Someone edits a Serve config: found, then healed (self-heal is on).
        edit_serve_config(api, namespace, "summarizer", "kubectl-edit", seen_by=agent)
        [report] = agent.drift()
        assert report.healed is not None
        wait_for(lambda: len(receiver.at("/hooks/gitsync")) == 4, "the drift messages")
        found, healed = (r.json for r in receiver.at("/hooks/gitsync")[2:])
        assert (found["event"], healed["event"]) == ("drift.found", "drift.healed")
        assert found["services"][0]["name"] == "summarizer"
        assert "kubectl-edit" in found["services"][0]["summary"]
        assert [s["name"] for s in healed["services"]] == ["summarizer"]
        [again] = agent.drift()
        assert not again.drifts
        assert len(receiver.at("/hooks/gitsync")) == 4  # nothing new: nothing said

        # A commit whose Serve app cannot deploy: KubeRay reports DEPLOY_FAILED.
        broken = break_embedder(repo, sim, namespace)
        agent.poll()
        wait_for(lambda: receiver.at(TEAMS_PATH), "the failure on Teams")
        wait_for(lambda: len(receiver.at("/hooks/gitsync")) == 6, "the failure's messages")
        assert receiver.events("/hooks/gitsync")[4:] == ["rollout.started", "rollout.failed"]
        failed = receiver.at("/hooks/gitsync")[5].json
        assert (failed["revision"], failed["subject"]) == (broken, "Use embedder v2")
        assert failed["failure"] == {
            "service": f"{namespace}/embedder",
            "app": "embed",
            "message": "DEPLOY_FAILED: ModuleNotFoundError: No module named 'embedder.v2', "
            "deployment Embedder UNHEALTHY: ModuleNotFoundError: No module named 'embedder.v2'",
        }
        assert [(s["name"], s["action"]) for s in failed["services"]] == [
            ("embedder", "serve-update")
        ]
        [teams] = receiver.at(TEAMS_PATH)
        card = teams.json["attachments"][0]["content"]
        assert card["body"][0]["text"] == f"staging: rollout of {broken[:12]} failed"
        text = json.dumps(card)
        assert "Serve app embed DEPLOY_FAILED: ModuleNotFoundError" in text
        assert "Serve apps updated in place" in text

        # An invalid commit: nothing applied, told once as failed with where it is wrong.
        invalid = repo.commit(
            lambda root: repo.edit("ranker.yaml", "kind: RayService", "kind: [RayService"),
            "Break the ranker's YAML",
        )
        agent.poll()
        wait_for(lambda: len(receiver.at("/hooks/gitsync")) == 7, "the invalid commit's message")
        told = receiver.at("/hooks/gitsync")[6].json
        assert (told["event"], told["revision"], told["subject"]) == (
            "rollout.failed",
            invalid,
            "Break the ranker's YAML",
        )
        assert "invalid, nothing applied (staging's manifests)" in told["message"]
        assert "environments/staging/ranker.yaml:" in told["message"], told["message"]
        agent.poll()  # the failed pass runs again at every poll: told once
        wait_for(lambda: len(receiver.at(TEAMS_PATH)) == 2, "the invalid commit on Teams")
        assert len(receiver.at("/hooks/gitsync")) == 7
    finally:
        assert agent.shutdown(timeout=10)
    assert receiver.at("/prod") == []  # filtered: staging only happened

    # Every webhook request is signed: HMAC-SHA256 of "<timestamp>." and the raw body.
    for request in receiver.at("/hooks/gitsync"):
        timestamp = request.headers["X-Gitsync-Timestamp"]
        signature = request.headers["X-Gitsync-Signature"]
        mac = hmac.new(SIGNING_SECRET.encode(), f"{timestamp}.".encode() + request.body,
                       hashlib.sha256)  # fmt: skip
        assert signature == f"sha256={mac.hexdigest()}"
        assert verify(SIGNING_SECRET.encode(), timestamp, signature, request.body, time.time())
        assert request.headers["X-Gitsync-Event"] == request.json["event"]
        assert request.headers["X-Gitsync-Delivery"] == request.json["id"]
        assert request.headers["Content-Type"] == "application/json"
    assert "X-Gitsync-Signature" not in receiver.at(SLACK_PATH)[0].headers
    assert count(metrics, "audit", "delivered") == 7
    assert count(metrics, "slack", "delivered") == 7
    assert count(metrics, "teams", "delivered") == 2
    assert not any(secret in caplog.text for secret in SECRETS), caplog.text
    assert "notification rollout.failed (staging" in caplog.text


def test_a_rollback_and_a_fight_over_a_field_are_told(
    api: client.ApiClient, sim: Simulator, namespace: str, tmp_path: Path, receiver: Receiver
) -> None:
    """``rollout.rolledBack`` names the Serve app that failed and the revision the service
    went back to; ``drift.fight`` names the other writer, once, when self-heal stops."""
    repo = GitOpsRepo(tmp_path / "gitops", namespace, self_heal=True)
    targets = (webhook("audit", receiver.url("/audit")),)
    config = replace(
        repo.agent_config(tmp_path / "cache", rollback="auto"),
        leader_election=LeaderElection(enabled=False),
        drift=DriftSettings(limit=1, window=3600.0),  # one correction, then a fight
        notifications=targets,
    )
    metrics = Metrics()
    agent = Agent(
        config, api, "notify-rollback", metrics=metrics, notifier=build_notifier(config, metrics)
    )
    try:
        first = repo.revisions[0]
        agent.poll()
        assert agent.last_ok
        wait_for(lambda: len(receiver.at("/audit")) == 2, "the first rollout's messages")

        # A commit whose Serve app cannot deploy, with rollback: auto.
        broken = break_embedder(repo, sim, namespace)
        agent.poll()
        wait_for(lambda: len(receiver.at("/audit")) == 4, "the rollback's messages")
        assert receiver.events("/audit")[2:] == ["rollout.started", "rollout.rolledBack"]
        rolled = receiver.at("/audit")[3].json
        assert (rolled["revision"], rolled["subject"]) == (broken, "Use embedder v2")
        assert rolled["failure"]["service"] == f"{namespace}/embedder"
        assert rolled["failure"]["app"] == "embed"
        assert rolled["failure"]["message"].startswith(
            "DEPLOY_FAILED: ModuleNotFoundError: No module named 'embedder.v2'"
        )
        assert f"rolled {namespace}/embedder back to {first[:12]}" in rolled["message"]
        assert [(s["name"], s["action"]) for s in rolled["services"]] == [
            ("embedder", "serve-update")
        ]

        # Another writer keeps setting the summarizer's replicas: healed once, then a fight.
        edit_serve_config(api, namespace, "summarizer", "autoscaler-x", seen_by=agent)
        [report] = agent.drift()
        assert report.healed is not None
        assert report.healed.outcome is Outcome.SUCCEEDED
        edit_serve_config(api, namespace, "summarizer", "autoscaler-x", seen_by=agent)
        [report] = agent.drift()
        assert (report.healed, report.fighting) == (None, (ServiceKey(namespace, "summarizer"),))
        [report] = agent.drift()  # still fought over: not told again
        assert report.fighting == (ServiceKey(namespace, "summarizer"),)
        wait_for(lambda: "drift.fight" in receiver.events("/audit"), "the fight")
    finally:
        assert agent.shutdown(timeout=10)
    assert receiver.events("/audit")[4:] == [
        "drift.found",
        "drift.healed",
        "drift.found",
        "drift.fight",
    ]
    fight = receiver.at("/audit")[-1].json
    assert fight["environment"] == "staging"
    assert fight["revision"] == first  # drift is judged at the last Healthy revision
    [service] = fight["services"]
    assert (service["name"], service["action"]) == ("summarizer", "fighting")
    assert "autoscaler-x" in service["summary"]
    assert "gitsync stops correcting it" in fight["message"]
    assert count(metrics, "audit", "delivered") == 8


def test_a_pull_requests_preview_ready_then_failed_is_told(
    api: client.ApiClient,
    sim: Simulator,
    gitea: Gitea,
    namespace: str,
    tmp_path: Path,
    receiver: Receiver,
) -> None:
    """A pull request on a real Gitea, previewed by the agent: ``preview.ready``, then a push
    whose Serve app cannot deploy: ``preview.failed`` in Ray terms. Told once per head."""
    forge = Forge(gitea, tmp_path, namespace)
    events = (Event.PREVIEW_READY, Event.PREVIEW_FAILED)
    targets = (webhook("previews", receiver.url("/previews"), *events),)
    config = replace(
        forge.config, leader_election=LeaderElection(enabled=False), notifications=targets
    )
    metrics = Metrics()
    agent = Agent(
        config, api, "notify-previews", metrics=metrics, notifier=build_notifier(config, metrics),
        pulls=build_pulls(config, metrics),
    )  # fmt: skip
    try:
        sha = forge.branch("scale-ranker", scale_ranker)
        number = forge.open_pr("scale-ranker")
        [result] = agent.previews()
        assert result.outcome == "succeeded", result
        wait_for(lambda: receiver.at("/previews"), "preview.ready")
        sim.add_rule(
            FailureRule(
                namespace=forge.previews_ns,
                import_path="ranker.v2:app",
                message="ModuleNotFoundError: No module named 'ranker.v2'",
            )
        )

        def broken(root: Path) -> None:
            scale_ranker(root)
            forge.repo.edit("ranker.yaml", "ranker.serve:app", "ranker.v2:app")

        bad = forge.branch("scale-ranker", broken, "Use ranker v2")
        [result] = agent.previews()
        assert result.outcome == "failed", result
        assert agent.previews()[0].outcome in ("unchanged", "failed")  # not told again
        wait_for(lambda: len(receiver.at("/previews")) == 2, "preview.failed")
    finally:
        assert agent.shutdown(timeout=10)
    ready, failed = (r.json for r in receiver.at("/previews"))
    assert (ready["event"], ready["revision"], ready["pullRequest"]) == (
        "preview.ready",
        sha,
        number,
    )
    assert ready["environment"] == "preview"
    assert [(s["namespace"], s["name"]) for s in ready["services"]] == [
        (forge.previews_ns, f"ranker-pr-{number}")
    ]
    assert (failed["event"], failed["revision"], failed["pullRequest"]) == (
        "preview.failed",
        bad,
        number,
    )
    assert failed["failure"]["app"] == "rank"
    assert failed["failure"]["message"].startswith(
        "DEPLOY_FAILED: ModuleNotFoundError: No module named 'ranker.v2'"
    )
    assert count(metrics, "previews", "delivered") == 2


def test_receivers_down_hanging_or_failing_never_hold_up_a_rollout(
    api: client.ApiClient,
    sim: Simulator,
    namespace: str,
    tmp_path: Path,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="gitsync")
    repo = GitOpsRepo(tmp_path / "gitops", namespace)
    down = Receiver(listening=False)  # refuses connections until the rollout is over
    receiver.answer("/flaky/tok-flaky-31cc", 500, 200)
    receiver.answer("/slow", "hang", 200)  # the first attempt hangs past the 1s timeout
    receiver.answer("/stuck", "hold")  # every request waits until released
    succeeded = Event.ROLLOUT_SUCCEEDED
    targets = (
        webhook("flaky", receiver.url("/flaky/tok-flaky-31cc"), succeeded),
        webhook("slow", receiver.url("/slow"), succeeded, timeout=1.0),
        webhook("stuck", receiver.url("/stuck"), timeout=120.0),
        webhook("down", down.url("/down/tok-down-77aa"), succeeded),
    )
    config = replace(
        repo.agent_config(tmp_path / "cache"),
        leader_election=LeaderElection(enabled=False),
        notifications=targets,
    )
    metrics = Metrics()
    # Short waits between attempts, and enough of them (minutes) to outlast the rollout and
    # the test's checks after it for `down`, however loaded the machine.
    notifier = Notifier(targets, metrics, attempts=1000, backoff=0.1, max_wait=0.3)
    agent = Agent(config, api, "notify-faults", metrics=metrics, notifier=notifier)
    try:
        agent.poll()  # returns when the rollout is over, whatever the receivers do
        assert agent.last_ok
        assert (
            metrics.registry.get_sample_value(
                "gitsync_sync_total", {"environment": "staging", "result": "succeeded"}
            )
            == 1
        )
        # Over while `stuck` still holds its first request and `down` has no listener: the
        # rollout waited for neither.
        wait_for(lambda: receiver.at("/stuck"), "the stuck receiver's first request")
        assert count(metrics, "stuck", "delivered") == 0
        assert count(metrics, "down", "delivered") == 0
        # (its thread may not have tried yet on a loaded machine: let it meet the refusal)
        wait_for(lambda: "to down failed, retrying" in caplog.text, "down's refused attempt")
        down.listen()
        wait_for(lambda: down.events("/down/tok-down-77aa") == ["rollout.succeeded"], "down")
        wait_for(lambda: count(metrics, "flaky", "delivered") == 1, "flaky's retry")
        wait_for(lambda: count(metrics, "slow", "delivered") == 1, "slow's retry")
        # 500, then 200; timed out, then 200 (a loaded machine may time out a second time)
        assert len(receiver.at("/flaky/tok-flaky-31cc")) == 2
        slow = [r.json for r in receiver.at("/slow")]
        assert len(slow) >= 2
        assert all(body == slow[0] for body in slow)  # the same delivery (id), sent again
        receiver.release.set()
        wait_for(lambda: count(metrics, "stuck", "delivered") == 2, "stuck's messages")
        assert receiver.events("/stuck") == ["rollout.started", "rollout.succeeded"]
    finally:
        assert agent.shutdown(timeout=10)
        down.close()
    for name in ("flaky", "slow", "stuck", "down"):
        assert count(metrics, name, "failed") == count(metrics, name, "dropped") == 0, name
    retried = caplog.text
    for name in ("flaky", "slow", "down"):
        assert f"notification rollout.succeeded (staging {repo.revisions[0][:12]}) to {name} " \
               "failed, retrying" in retried, name  # fmt: skip
    assert "HTTP 500: failed at ***" in retried
    assert not any(secret in retried for secret in SECRETS), retried


def test_a_full_queue_drops_the_oldest_and_shutdown_drains_what_it_can(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.answer("/stuck", "hold")
    metrics = Metrics()
    target = webhook("stuck", receiver.url("/stuck"), timeout=120.0)
    notifier = Notifier([target], metrics, queue_size=2)

    def notice(n: int) -> Notice:
        return Notice(Event.ROLLOUT_FAILED, f"env-{n}", "0" * 40)

    notifier.notify(notice(1))
    wait_for(lambda: receiver.at("/stuck"), "the first message in flight")
    for n in (2, 3, 4, 5):  # the queue holds two: 2 and 3 go
        notifier.notify(notice(n))
    assert count(metrics, "stuck", "dropped") == 2
    assert "queue full (2), dropped the oldest message (rollout.failed, env-2)" in caplog.text
    receiver.release.set()
    wait_for(lambda: count(metrics, "stuck", "delivered") == 3, "the queue delivered")
    assert receiver.events("/stuck", lambda b: b["environment"]) == ["env-1", "env-4", "env-5"]

    # Shutdown: what cannot be delivered by the deadline is dropped, counted and logged.
    receiver.release.clear()
    notifier.notify(notice(6))
    wait_for(lambda: len(receiver.at("/stuck")) == 4, "the sixth message in flight")
    notifier.notify(notice(7))
    assert notifier.close(timeout=0.3) == 1
    assert count(metrics, "stuck", "dropped") == 3
    assert (
        "notification target stuck: 1 message(s) not delivered before shutdown, dropped"
        in caplog.text
    )
    notifier.notify(notice(8))  # after close: dropped at once
    assert count(metrics, "stuck", "dropped") == 4
    receiver.release.set()
    wait_for(lambda: count(metrics, "stuck", "delivered") == 4, "the sixth, released")


def test_retry_after_is_honoured_a_refusal_is_final_and_an_unreadable_url_is_not_logged(
    receiver: Receiver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.answer("/busy", (429, {"Retry-After": "0"}), 200)
    receiver.answer("/gone/tok-flaky-31cc", 404)
    metrics = Metrics()
    targets = [
        webhook("busy", receiver.url("/busy")),
        webhook("gone", receiver.url("/gone/tok-flaky-31cc")),
        NotificationTarget("missing", "slack", url_from=TokenAuth(token_file=tmp_path / "nope")),
    ]
    notifier = Notifier(targets, metrics, backoff=30.0)  # only Retry-After makes it quick
    notifier.notify(Notice(Event.ROLLOUT_FAILED, "production", "0" * 40))
    wait_for(lambda: count(metrics, "busy", "delivered") == 1, "busy's retry")
    wait_for(lambda: count(metrics, "gone", "rejected") == 1, "gone's refusal")
    wait_for(lambda: count(metrics, "missing", "failed") == 1, "missing's URL")
    assert notifier.close(timeout=1) == 0
    assert len(receiver.at("/busy")) == 2
    assert "to busy failed, retrying in 0.0s: HTTP 429" in caplog.text  # as asked, not 30s
    assert len(receiver.at("/gone/tok-flaky-31cc")) == 1  # a 404 is not asked again
    assert "refused by gone (HTTP 404: failed at ***), not sent again" in caplog.text
    assert f"cannot read the URL from file {tmp_path / 'nope'}: No such file" in caplog.text
    assert "tok-flaky-31cc" not in caplog.text
