"""gitsync.notify: notices in Ray terms, the three payloads, the filters, the signature; and
the links the agent config gives them (report.factory)."""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import replace
from pathlib import Path

import pytest

from gitsync.config import StatusConfig, UiSettings, load_agent_config
from gitsync.diff.drift import Drift, DriftKind
from gitsync.model import Action, Change, Outcome, RolloutResult, ServiceKey
from gitsync.notify import (
    EVENTS,
    DriftSeen,
    Event,
    Failure,
    LinkTemplates,
    Notice,
    drift_notices,
    failure_of,
    preview_notice,
    revision_invalid,
    rollout_finished,
    rollout_started,
    sign,
    slack_message,
    teams_message,
    title,
    verify,
    wanted,
    webhook_message,
    with_links,
)
from gitsync.plan import Plan, Wave
from gitsync.report.factory import build_notifier, commit_url_template
from gitsync.source.config import TokenAuth

REV = "3f2c9a1b7d4e" + "0" * 28
RANKER, EMBEDDER, OLD = (ServiceKey("ray-prod", n) for n in ("ranker", "embedder", "old"))
SWAP = "new RayCluster, traffic switched when its Serve apps are RUNNING"
SERVE = "in-place Serve update on the running cluster (apps embed)"
PLAN = Plan(
    "production",
    "ray-prod",
    "a" * 40,
    REV,
    (
        Wave(0, (Change(RANKER, Action.CLUSTER_SWAP, 0, SWAP),)),
        Wave(1, (Change(EMBEDDER, Action.SERVE_UPDATE, 1, SERVE),
                 Change(ServiceKey("ray-prod", "same"), Action.UNCHANGED, 1, "unchanged"))),
        Wave(2, (Change(OLD, Action.PRUNE, 2, "no longer in Git"),), prune=True),
    ),
)  # fmt: skip
FAILED = (
    "ray-prod/embedder is Degraded: app embed is DEPLOY_FAILED: ModuleNotFoundError: No module "
    "named 'embedder.v2'; later waves were not applied"
)


def test_a_rollout_start_says_which_services_swap_clusters_and_which_update_serve() -> None:
    notice = rollout_started(PLAN, "Fix ranker OOM")
    assert notice is not None
    assert (notice.event, notice.environment, notice.revision) == (
        Event.ROLLOUT_STARTED,
        "production",
        REV,
    )
    assert [(str(s.key), s.action) for s in notice.services] == [
        ("ray-prod/ranker", "cluster-swap"),
        ("ray-prod/embedder", "serve-update"),
        ("ray-prod/old", "prune"),
    ]
    assert notice.message == "rolling out 3 change(s) in 3 wave(s)"
    assert title(notice) == "production: rolling out 3f2c9a1b7d4e (3 service(s))"
    nothing = replace(PLAN, waves=(Wave(0, (Change(RANKER, Action.UNCHANGED, 0, "unchanged"),)),))
    assert rollout_started(nothing) is None


def test_a_success_names_what_was_applied_and_an_up_to_date_pass_says_nothing() -> None:
    done = RolloutResult("production", REV, Outcome.SUCCEEDED, "2 applied", applied=(RANKER,))
    notice = rollout_finished(done, PLAN, "Fix ranker OOM")
    assert notice is not None
    assert notice.event is Event.ROLLOUT_SUCCEEDED
    assert [s.key for s in notice.services] == [RANKER]
    assert notice.failure is None
    quiet = RolloutResult("production", REV, Outcome.SUCCEEDED, "up to date")
    assert rollout_finished(quiet, PLAN) is None
    # A resumed rollout announced as started is told when it ends, even with nothing applied.
    told = rollout_finished(quiet, PLAN, announced=True)
    assert told is not None
    assert told.event is Event.ROLLOUT_SUCCEEDED
    for outcome in (Outcome.SUPERSEDED, Outcome.INTERRUPTED, Outcome.HELD, Outcome.BLOCKED):
        assert rollout_finished(replace(done, outcome=outcome), PLAN) is None


@pytest.mark.parametrize(
    ("message", "app", "why"),
    [
        (FAILED, "embed", "DEPLOY_FAILED: ModuleNotFoundError: No module named 'embedder.v2'"),
        (
            "ns/a is Degraded: app rank is DEPLOY_FAILED on pending cluster a-x7k: import "
            "failed; later waves were not applied; rolled ns/a back to abc, which is Healthy",
            "rank",
            "DEPLOY_FAILED on pending cluster a-x7k: import failed",
        ),
        (
            "ns/a is Degraded: app rank is UNHEALTHY: replica died, deployment Ranker "
            "UNHEALTHY: OOM; later waves were not applied",
            "rank",
            "UNHEALTHY: replica died, deployment Ranker UNHEALTHY: OOM",
        ),
        (
            "ns/a not Healthy after 30s (wave 0): app rank is DEPLOYING; later waves were not "
            "applied",
            "rank",
            "DEPLOYING",
        ),
        (
            "ns/a is Degraded: Ready is False (InitializingTimeout): cluster never came up",
            "",
            "ns/a is Degraded: Ready is False (InitializingTimeout): cluster never came up",
        ),
    ],
)
def test_the_failed_app_and_kuberays_message(message: str, app: str, why: str) -> None:
    assert failure_of(message, RANKER) == Failure(RANKER, app, why)


def test_a_failure_and_a_rollback_carry_the_app_and_kuberays_message() -> None:
    failed = RolloutResult("production", REV, Outcome.FAILED, FAILED, failed=EMBEDDER)
    notice = rollout_finished(failed, PLAN, "Break it")
    assert notice is not None
    assert notice.event is Event.ROLLOUT_FAILED
    assert notice.failure == Failure(
        EMBEDDER, "embed", "DEPLOY_FAILED: ModuleNotFoundError: No module named 'embedder.v2'"
    )
    back = rollout_finished(replace(failed, outcome=Outcome.ROLLED_BACK), PLAN)
    assert back is not None
    assert back.event is Event.ROLLOUT_ROLLED_BACK
    assert title(back) == "production: rollout of 3f2c9a1b7d4e failed and was rolled back"


def _linked(notice: Notice) -> Notice:
    templates = LinkTemplates(
        commit="https://git.example.com/platform/ray/commit/{revision}",
        status="https://ci.example.com/{context}/{short}",
        page="https://gitsync.example.com/environments/{environment}",
    )
    return with_links(notice, templates)


def test_an_invalid_commit_is_a_failure_listing_its_first_problems() -> None:
    problems = tuple(f"environments/staging/s{i}.yaml:{i}: bad" for i in range(8))
    notice = revision_invalid("staging", "a" * 40, problems, "Break it")
    assert (notice.event, notice.environment, notice.subject) == (
        Event.ROLLOUT_FAILED,
        "staging",
        "Break it",
    )
    assert notice.message.startswith("invalid, nothing applied (staging's manifests): ")
    assert "s4.yaml:4: bad" in notice.message
    assert "s5.yaml" not in notice.message
    assert notice.message.endswith("… 3 more")
    assert notice.failure == Failure(None, "", notice.message)
    config = revision_invalid("config", "a" * 40, ("gitsync.yaml:3: unknown key",))
    assert config.message == "invalid, nothing applied (gitsync.yaml): gitsync.yaml:3: unknown key"


def test_links_fill_the_templates() -> None:
    notice = _linked(Notice(Event.ROLLOUT_FAILED, "production", REV))
    assert dict(notice.links) == {
        "commit": f"https://git.example.com/platform/ray/commit/{REV}",
        "status": "https://ci.example.com/gitsync/production/3f2c9a1b7d4e",
        "page": "https://gitsync.example.com/environments/production",
    }
    preview = _linked(Notice(Event.PREVIEW_READY, "preview", REV, pull_request=7))
    assert [name for name, _ in preview.links] == ["commit", "status"]


def test_slack_message_is_an_incoming_webhook_payload_in_ray_terms() -> None:
    failed = RolloutResult("production", REV, Outcome.FAILED, FAILED, failed=EMBEDDER)
    notice = rollout_finished(failed, PLAN, "Use <v2> & more")
    assert notice is not None
    message = slack_message(_linked(notice))
    assert message["text"] == ":red_circle: production: rollout of 3f2c9a1b7d4e failed"
    blocks = message["blocks"]
    assert blocks[0] == {
        "type": "header",
        "text": {"type": "plain_text", "text": "production: rollout of 3f2c9a1b7d4e failed"},
    }
    texts = "\n".join(b["text"]["text"] for b in blocks if b["type"] == "section")
    assert "`3f2c9a1b7d4e` Use &lt;v2&gt; &amp; more" in texts  # mrkdwn escaped
    assert "Serve app embed DEPLOY_FAILED: ModuleNotFoundError" in texts
    assert "ray-prod/ranker: cluster swap: a new RayCluster, traffic switched" in texts
    assert "ray-prod/embedder: Serve apps updated in place on the running cluster" in texts
    [context] = [b for b in blocks if b["type"] == "context"]
    link = f"<https://git.example.com/platform/ray/commit/{REV}|Commit>"
    assert context["elements"][0]["text"].startswith(link)
    assert all(len(b["text"]["text"]) <= 3000 for b in blocks if "text" in b)


def test_slack_lists_at_most_twenty_services() -> None:
    many = tuple(
        Change(ServiceKey("ns", f"s{i:02}"), Action.SERVE_UPDATE, 0, "x") for i in range(45)
    )
    notice = rollout_started(replace(PLAN, waves=(Wave(0, many),)))
    assert notice is not None
    listed = slack_message(notice)["blocks"][-1]["text"]["text"]
    assert listed.count("• ") == 21
    assert listed.endswith("… and 25 more")


def test_teams_message_is_one_adaptive_card() -> None:
    notice = rollout_started(PLAN, "Fix ranker OOM")
    assert notice is not None
    message = teams_message(_linked(notice))
    assert message["type"] == "message"
    [attachment] = message["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert (card["type"], card["version"]) == ("AdaptiveCard", "1.4")
    assert card["body"][0]["text"] == "production: rolling out 3f2c9a1b7d4e (3 service(s))"
    facts = {f["title"]: f["value"] for f in card["body"][1]["facts"]}
    assert facts["Commit"] == "3f2c9a1b7d4e Fix ranker OOM"
    assert [a["title"] for a in card["actions"]] == [
        "Commit",
        "Commit status",
        "gitsync status page",
    ]
    assert all(a["type"] == "Action.OpenUrl" for a in card["actions"])


def test_the_webhook_schema() -> None:
    failed = RolloutResult("production", REV, Outcome.FAILED, FAILED, failed=EMBEDDER)
    notice = rollout_finished(failed, PLAN, "Break it")
    assert notice is not None
    body = webhook_message(_linked(notice), "d-1", "2026-12-04T17:00:00Z")
    assert json.loads(json.dumps(body)) == body
    assert {k: body[k] for k in ("version", "id", "event", "environment", "namespace")} == {
        "version": 1,
        "id": "d-1",
        "event": "rollout.failed",
        "environment": "production",
        "namespace": "ray-prod",
    }
    assert (body["revision"], body["subject"], body["pullRequest"]) == (REV, "Break it", None)
    assert body["services"][0] == {
        "service": "ray-prod/ranker",
        "namespace": "ray-prod",
        "name": "ranker",
        "kind": "RayService",
        "action": "cluster-swap",
        "summary": SWAP,
    }
    assert body["failure"] == {
        "service": "ray-prod/embedder",
        "app": "embed",
        "message": "DEPLOY_FAILED: ModuleNotFoundError: No module named 'embedder.v2'",
    }
    assert set(body["links"]) == {"commit", "status", "page"}


def test_the_signature_is_hmac_sha256_of_the_timestamp_and_the_body() -> None:
    secret, body, ts = b"whsec-notify", b'{"version":1}', 1_780_000_000
    expected = hmac.new(secret, b"1780000000." + body, hashlib.sha256).hexdigest()
    assert sign(secret, ts, body) == f"sha256={expected}"
    good = sign(secret, ts, body)
    assert verify(secret, str(ts), good, body, now=ts + 10)
    assert not verify(secret, str(ts), good, body + b" ", now=ts)  # tampered body
    assert not verify(b"other", str(ts), good, body, now=ts)
    assert not verify(secret, str(ts + 1), good, body, now=ts)  # another timestamp
    assert not verify(secret, str(ts), good, body, now=ts + 301)  # replayed later
    assert not verify(secret, "soon", good, body, now=ts)


@pytest.mark.parametrize(
    ("environments", "events", "expected"),
    [
        ((), (), True),
        (("production",), (), True),
        (("staging",), (), False),
        ((), ("rollout.failed",), True),
        ((), ("rollout.succeeded", "drift.found"), False),
        (("production",), ("rollout.failed",), True),
    ],
)
def test_filters(environments: tuple[str, ...], events: tuple[str, ...], expected: bool) -> None:
    notice = Notice(Event.ROLLOUT_FAILED, "production", REV)
    assert wanted(notice, environments, events) is expected


def test_drift_is_told_once_per_finding_with_fights_and_heals() -> None:
    drift = Drift(RANKER, DriftKind.MODIFIED, REV, ("spec.serveConfigV2",), ("kubectl-edit",))
    notices, seen = drift_notices("production", REV, [drift], [], None, DriftSeen())
    [found] = notices
    assert found.event is Event.DRIFT_FOUND
    assert found.services[0].summary == "spec.serveConfigV2 (by kubectl-edit)"
    assert drift.message in found.message
    assert drift_notices("production", REV, [drift], [], None, seen)[0] == []
    notices, seen = drift_notices("production", REV, [drift], [RANKER], None, seen)
    assert [n.event for n in notices] == [Event.DRIFT_FIGHT]
    healed = RolloutResult("production", REV, Outcome.SUCCEEDED, "1 applied", applied=(RANKER,))
    notices, seen = drift_notices("production", REV, [], [], healed, seen)
    assert [n.event for n in notices] == [Event.DRIFT_HEALED]
    assert seen == DriftSeen()
    # Found and healed in one check: the same edit made again is found again.
    notices, seen = drift_notices("production", REV, [drift], [], healed, seen)
    assert [n.event for n in notices] == [Event.DRIFT_FOUND, Event.DRIFT_HEALED]
    assert seen == DriftSeen()
    notices, seen = drift_notices("production", REV, [drift], [RANKER], None, seen)
    assert [n.event for n in notices] == [Event.DRIFT_FOUND, Event.DRIFT_FIGHT]
    assert drift_notices("production", REV, [drift], [RANKER], None, seen)[0] == []
    seen = DriftSeen()
    failed = replace(healed, outcome=Outcome.FAILED, message=FAILED, failed=RANKER)
    notices, _ = drift_notices("production", REV, [drift], [], failed, seen)
    assert [n.event for n in notices] == [Event.DRIFT_FOUND, Event.ROLLOUT_FAILED]
    assert notices[1].message.startswith("self-heal failed: ")


def test_previews_ready_and_failed() -> None:
    ready = preview_notice(7, REV, ("ranker-pr-7",), "previews", "succeeded", "1 applied")
    assert ready is not None
    assert (ready.event, ready.environment, ready.pull_request) == (
        Event.PREVIEW_READY,
        "preview",
        7,
    )
    assert title(ready) == "preview of #7 ready at 3f2c9a1b7d4e"
    failed = preview_notice(7, REV, (), "previews", "failed", "quota exceeded")
    assert failed is not None
    assert failed.failure == Failure(None, "", "quota exceeded")
    for outcome in ("skipped", "deleted", "unchanged"):
        assert preview_notice(7, REV, (), "previews", outcome, "") is None


def test_every_event_has_a_title() -> None:
    for event in Event:
        assert title(Notice(event, "production", REV, pull_request=1))
    assert EVENTS[0] == "rollout.started"
    assert len(EVENTS) == 9


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (StatusConfig(), ""),
        (
            StatusConfig("gitea", token=TokenAuth(token_env="T")),
            "https://git.example.com/platform/ray/commit/{revision}",
        ),
        (
            StatusConfig("github", token=TokenAuth(token_env="T")),
            "https://github.com/platform/ray/commit/{revision}",
        ),
        (
            StatusConfig(
                "github", url="https://ghe.example.com/api/v3", token=TokenAuth(token_env="T")
            ),
            "https://ghe.example.com/platform/ray/commit/{revision}",
        ),
        (
            StatusConfig("gitlab", token=TokenAuth(token_env="T")),
            "https://git.example.com/platform/ray/-/commit/{revision}",
        ),
        (StatusConfig("gitlab", repository="42", token=TokenAuth(token_env="T")), ""),
    ],
)
def test_the_commit_link_follows_the_status_provider(status: StatusConfig, expected: str) -> None:
    config, problems = load_agent_config(
        "repository:\n  url: https://git.example.com/platform/ray.git\n"
    )
    assert config is not None, problems
    assert commit_url_template(replace(config, status=status)) == expected


def test_no_notifier_without_targets_and_the_page_link_from_ui_external_url(
    tmp_path: Path,
) -> None:
    text = (
        "repository:\n  url: https://git.example.com/platform/ray.git\n"
        "ui:\n  externalURL: https://gitsync.example.com/\n"
    )
    config, problems = load_agent_config(text)
    assert config is not None, problems
    assert config.ui == replace(UiSettings(), external_url="https://gitsync.example.com")
    assert build_notifier(config) is None
    config, problems = load_agent_config(
        text + f"notifications:\n  - type: slack\n    urlFrom: {{secretFile: {tmp_path}/u}}\n"
    )
    assert config is not None, problems
    notifier = build_notifier(config)
    assert notifier is not None
    try:
        assert notifier.links.page == "https://gitsync.example.com/environments/{environment}"
    finally:
        assert notifier.close(timeout=1) == 0
