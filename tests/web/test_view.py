"""The status page's pure core: facts → view model → HTML, escaping and masking included."""

from __future__ import annotations

import re
import urllib.parse
from html.parser import HTMLParser
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gitsync.diff.classify import classify
from gitsync.model import Action, Change, Outcome, Phase, RolloutState, ServiceKey, StepKind
from gitsync.web import render
from gitsync.web.facts import (
    Clock,
    CommitInfo,
    DriftFacts,
    EnvironmentFacts,
    Forge,
    PreviewFacts,
    RolloutRecord,
    Step,
)
from gitsync.web.view import (
    as_json,
    environment_view,
    overview,
    rollout_state,
    rollout_view,
)

EVIL = '<script>alert("x")</script><img src=x onerror=alert(1)>'
SHA = "3f2c9a1b7d4e" + "0" * 28
CLOCK = Clock(wall=1_800_000_100.0, mono=500.0)
RANKER = ServiceKey("ray-staging", "ranker")
EMBEDDER = ServiceKey("ray-staging", "embedder")


def rayservice(
    name: str,
    *,
    apps: dict[str, Any],
    pending: dict[str, Any] | None = None,
    upgrading: bool = False,
    wave: int = 0,
) -> dict[str, Any]:
    status: dict[str, Any] = {
        "observedGeneration": 2,
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "NonZeroServeEndpoints",
                "lastTransitionTime": "2027-01-15T08:00:00Z",
            },
            {
                "type": "UpgradeInProgress",
                "status": "True" if upgrading else "False",
                "reason": "x",
                "lastTransitionTime": "2027-01-15T08:01:00Z",
            },
        ],
        "activeServiceStatus": {"rayClusterName": f"{name}-abcde", "applicationStatuses": apps},
    }
    if pending is not None:
        status["pendingServiceStatus"] = {"rayClusterName": f"{name}-fghij", **pending}
    return {
        "metadata": {
            "name": name,
            "namespace": "ray-staging",
            "generation": 2,
            "annotations": {"gitsync.ray.io/wave": str(wave), "gitsync.ray.io/revision": SHA},
        },
        "spec": {"serveConfigV2": "applications:\n- name: rank\n  import_path: r:app\n"},
        "status": status,
    }


RUNNING = {
    "rank": {"status": "RUNNING", "serveDeploymentStatuses": {"Ranker": {"status": "HEALTHY"}}}
}


def facts(**overrides: Any) -> EnvironmentFacts:
    record = RolloutRecord(
        "staging",
        "ray-staging",
        SHA,
        CommitInfo(SHA, "Ana", 1_800_000_000.0, "bump ranker"),
        (
            Change(EMBEDDER, Action.CLUSTER_SWAP, 0, "new RayCluster", ("image: a → b",)),
            Change(RANKER, Action.SERVE_UPDATE, 1, "in-place", ("app rank: x: 1 → 2",)),
        ),
        (
            Step(StepKind.STARTED, 1_800_000_000.0, 400.0),
            Step(
                StepKind.APPLYING, 1_800_000_001.0, 401.0, 1, 2, ((EMBEDDER, Action.CLUSTER_SWAP),)
            ),
            Step(
                StepKind.WAITING, 1_800_000_002.0, 402.0, 1, 2, ((EMBEDDER, Action.CLUSTER_SWAP),)
            ),
        ),
    )
    values: dict[str, Any] = {
        "name": "staging",
        "namespace": "ray-staging",
        "record": record,
        "live": {
            EMBEDDER: rayservice(
                "embedder", apps=RUNNING, pending={"applicationStatuses": {}}, upgrading=True
            ),
            RANKER: rayservice("ranker", apps=RUNNING, wave=1),
        },
        "last_actions": {EMBEDDER: (Action.CLUSTER_SWAP, 1_800_000_001.0)},
    }
    values.update(overrides)
    return EnvironmentFacts(**values)


def test_wave_progress_and_the_pending_cluster() -> None:
    view = environment_view(facts(), None, CLOCK)
    assert view.summary.state == "wave 1 of 2: waiting"
    assert view.summary.in_progress
    assert [w.number for w in view.waves] == [0, 1]
    embedder = view.waves[0].services[0]
    assert embedder.health == "Progressing"
    assert (embedder.active_cluster, embedder.pending_cluster) == (
        "embedder-abcde",
        "embedder-fghij",
    )
    assert embedder.last_action == "cluster-swap"
    assert view.waves[1].services[0].health == "Healthy"
    assert view.summary.health == "1/2 Healthy, 1 Progressing"
    assert view.summary.rolling_out is not None
    assert view.summary.rolling_out.message == "bump ranker"
    html = render.environment_page(view)
    assert '<code class="pending-cluster">embedder-fghij</code>' in html
    assert 'data-in-progress="true"' in html


def test_timeline_durations_and_total() -> None:
    env = facts()
    assert env.record is not None
    done = RolloutRecord(
        **{
            **env.record.__dict__,
            "outcome": Outcome.SUCCEEDED,
            "steps": (*env.record.steps, Step(Outcome.SUCCEEDED, 1_800_000_064.0, 464.0)),
        }
    )
    view = rollout_view(facts(record=done), None, CLOCK)
    assert view is not None
    assert [(s.kind, s.duration) for s in view.timeline] == [
        ("started", "1.0s"),
        ("applying", "1.0s"),
        ("waiting", "1m02s"),
        ("succeeded", ""),
        ("total", "1m04s"),
    ]
    assert view.state == "idle"
    assert not view.in_progress
    in_flight = rollout_view(facts(), None, CLOCK)
    assert in_flight is not None
    assert in_flight.timeline[-1].duration == "1m38s"


@pytest.mark.parametrize(
    ("outcome", "failed", "expected"),
    [
        (Outcome.FAILED, RANKER, "failed at ranker"),
        (Outcome.ROLLED_BACK, RANKER, "rolled back"),
        (Outcome.SUCCEEDED, None, "idle"),
        (Outcome.SUPERSEDED, None, "superseded by a newer commit"),
    ],
)
def test_rollout_state_words(outcome: Outcome, failed: ServiceKey | None, expected: str) -> None:
    record = RolloutRecord("staging", "ray-staging", SHA, outcome=outcome, failed=failed)
    assert rollout_state(record, facts()) == expected


def test_state_configmap_when_this_agent_saw_no_rollout() -> None:
    state = RolloutState("staging", SHA, Phase.IN_PROGRESS, 1, last_healthy_revision="a" * 40)
    env = facts(record=None, state=state)
    view = environment_view(env, None, CLOCK)
    assert view.summary.state == "in progress at wave 1"
    assert view.summary.applied is not None
    assert view.summary.applied.short == "a" * 12


def test_failed_app_shows_kuberay_message() -> None:
    failing = {
        "rank": {
            "status": "DEPLOY_FAILED",
            "message": "ModuleNotFoundError: no ranker2",
            "serveDeploymentStatuses": {"Ranker": {"status": "UNHEALTHY", "message": "boom"}},
        }
    }
    env = facts(
        live={RANKER: rayservice("ranker", apps=failing, wave=1)},
        record=RolloutRecord(
            "staging",
            "ray-staging",
            SHA,
            outcome=Outcome.FAILED,
            failed=RANKER,
            message="ray-staging/ranker is Degraded: app rank is DEPLOY_FAILED",
        ),
    )
    view = environment_view(env, None, CLOCK)
    service = view.waves[0].services[0]
    assert service.health == "Degraded"
    assert "ModuleNotFoundError: no ranker2" in service.message
    assert service.apps[0].message == "ModuleNotFoundError: no ranker2"
    assert service.apps[0].deployments[0].status == "UNHEALTHY"
    assert view.summary.state == "failed at ranker"
    assert view.summary.failed


def test_the_rollout_page_shows_the_record_as_planned_never_a_value() -> None:
    """The record holds details planned with masking (gitsync.mask): neither the page nor its
    JSON has a value, for an env var in a container, in an app and in actor options."""
    old = "applications: [{name: rank, import_path: a:b}]"
    new = (
        "applications: [{name: rank, import_path: a:b, runtime_env: {env_vars: {K: app-secret}},"
        " deployments: [{name: R, ray_actor_options: {runtime_env: {env_vars: {K: actor-secret}}}}]}]"
    )

    def service(serve: str, value: str) -> dict[str, Any]:
        container = {"name": "h", "env": [{"name": "T", "value": value}]}
        head = {"template": {"spec": {"containers": [container]}}}
        return {
            "apiVersion": "ray.io/v1",
            "kind": "RayService",
            "metadata": {"name": "ranker", "namespace": "ray-staging"},
            "spec": {"serveConfigV2": serve, "rayClusterConfig": {"headGroupSpec": head}},
        }

    before, after = service(old, "old-secret"), service(new, "new-secret")
    change = classify(before, after)
    env = facts(record=RolloutRecord("staging", "ray-staging", SHA, changes=(change,)))
    view = rollout_view(env, None, CLOCK)
    assert view is not None
    text = render.rollout_page("staging", view) + repr(as_json(view))
    assert "env_vars" in text  # which variables changed is shown
    assert "env[T]" in text
    for secret in ("app-secret", "actor-secret", "old-secret", "new-secret"):
        assert secret not in text


def test_commit_and_pull_links_per_forge() -> None:
    assert (
        Forge("gitea", "https://git.example", "o/r").commit_url("abc")
        == "https://git.example/o/r/commit/abc"
    )
    assert (
        Forge("github", "https://github.com", "o/r").pull_url(7) == "https://github.com/o/r/pull/7"
    )
    assert (
        Forge("gitlab", "https://gl.example", "g/r").commit_url("abc")
        == "https://gl.example/g/r/-/commit/abc"
    )
    assert (
        Forge("gitlab", "https://gl.example", "g/r").pull_url(7)
        == "https://gl.example/g/r/-/merge_requests/7"
    )
    view = overview(
        [facts(applied=CommitInfo(SHA))],
        [PreviewFacts(7, SHA, ("ranker-pr-7",), "succeeded", "Healthy")],
        Forge("gitea", "https://git.example", "o/r"),
        CLOCK,
    )
    html = render.overview_page(view)
    assert f'href="https://git.example/o/r/commit/{SHA}"' in html
    assert 'href="https://git.example/o/r/pulls/7"' in html


class _Text(HTMLParser):
    """The document as a browser would parse it: its elements and its visible text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes += attrs

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parsed(html: str) -> _Text:
    parser = _Text()
    parser.feed(html)
    return parser


def test_everything_from_git_and_the_cluster_is_escaped() -> None:
    evil_key = ServiceKey("ray-staging", "ranker")
    app = {
        EVIL: {
            "status": "DEPLOY_FAILED",
            "message": EVIL,
            "serveDeploymentStatuses": {EVIL: {"status": "UNHEALTHY", "message": EVIL}},
        }
    }
    record = RolloutRecord(
        EVIL,
        "ray-staging",
        SHA,
        CommitInfo(SHA, EVIL, 1_800_000_000.0, EVIL),
        (
            Change(
                evil_key,
                Action.SERVE_UPDATE,
                0,
                EVIL,
                (f"app {EVIL}: x: {EVIL} → {EVIL}",),
                (EVIL,),
            ),
        ),
        (
            Step(StepKind.STARTED, 1_800_000_000.0, 400.0),
            Step(Outcome.FAILED, 1_800_000_001.0, 401.0, message=EVIL),
        ),
        outcome=Outcome.FAILED,
        message=EVIL,
        failed=ServiceKey("ray-staging", EVIL),
    )
    env = facts(
        name=EVIL,
        record=record,
        live={evil_key: rayservice("ranker", apps=app)},
        drift=DriftFacts(1.0, ((evil_key, EVIL),)),
    )
    pages = [
        render.overview_page(
            overview([env], [PreviewFacts(1, SHA, (EVIL,), EVIL, EVIL)], None, CLOCK)
        ),
        render.environment_page(environment_view(env, None, CLOCK)),
        render.rollout_page(EVIL, rollout_view(env, None, CLOCK)),
    ]
    for html in pages:
        document = parsed(html)
        assert document.tags.count("script") == 1  # only /ui/app.js
        assert "img" not in document.tags
        assert not any(name.startswith("on") for name, _ in document.attributes)
        assert EVIL in "".join(document.text) or "<script>" in "".join(document.text)
        assert not re.search(r"<script>alert", html)


def test_json_is_the_same_view() -> None:
    data = as_json(environment_view(facts(), None, CLOCK))
    assert data["summary"]["state"] == "wave 1 of 2: waiting"
    assert data["waves"][0]["services"][0]["pending_cluster"] == "embedder-fghij"
    assert data["rollout"]["changes"][0]["action"] == "cluster-swap"


def event(name: str, kind: str, reason: str, last: str, **more: Any) -> dict[str, Any]:
    return {"object": name, "type": kind, "reason": reason, "message": f"<b>{reason}</b>",
            "count": 1, "last": last, "source": "kuberay-operator", **more}  # fmt: skip


def test_events_show_warnings_first_each_newest_first_escaped_and_bounded() -> None:
    events = (
        event("ranker", "Normal", "Applied", "2027-01-15T08:01:30Z"),
        event("ranker", "Warning", "OldWarning", "2027-01-15T07:00:00Z"),
        event("embedder", "Normal", "Healthy", "2027-01-15T08:01:35Z"),
        event("embedder", "Warning", "FailedToUpdateService", "2027-01-15T08:00:00Z", count=3),
        *(event("ranker", "Normal", f"Old{i}", "2027-01-01T00:00:00Z") for i in range(30)),
    )
    env = EnvironmentFacts("staging", "ray-staging", events=events)
    view = environment_view(env, None, CLOCK)
    assert [(e.service, e.reason) for e in view.events[:4]] == [
        ("embedder", "FailedToUpdateService"),
        ("ranker", "OldWarning"),
        ("embedder", "Healthy"),
        ("ranker", "Applied"),
    ]
    assert len(view.events) == 20
    assert view.events[0].count == 3
    assert view.events[0].age == "1m40s"  # CLOCK is 08:01:40
    html = render.environment_page(view)
    assert "FailedToUpdateService" in html
    assert "<b>" not in html  # an Event's message is text, escaped
    assert as_json(view)["events"][0]["type"] == "Warning"


@given(st.text())
def test_quote_is_urllib_quote_with_nothing_safe(text: str) -> None:
    assert render.quote(text) == urllib.parse.quote(text, safe="")
