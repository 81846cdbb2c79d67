"""Notifications: what happened, in Ray terms, as a :class:`Notice`, and each target's message
(Slack, Microsoft Teams, a signed generic webhook). Pure.

Owns the event vocabulary (``rollout.started`` … ``preview.failed``), the filters a target
sets (environments, events), turning rollout results, drift reports and preview results into
notices — which services swapped clusters and which updated their Serve apps in place, which
application failed and what KubeRay said — the three payloads, the links, and the webhook's
HMAC-SHA256 signature (and how a receiver checks it). Must not do I/O, read the clock or a
secret: :mod:`gitsync.report.notifier` delivers, stamps the time and signs with what it
reads, off the pass's thread. docs/notifications.md documents the payloads.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from gitsync.diff.drift import Drift
from gitsync.model import Action, Change, Outcome, RolloutResult, ServiceKey
from gitsync.plan import Plan
from gitsync.report.status import LATER_WAVES, shorten

SCHEMA_VERSION = 1  # the generic webhook's "version": bumped only by an incompatible change
PREVIEW_ENVIRONMENT = "preview"  # what previews are filtered by (their status is gitsync/preview)
SIGNATURE_HEADER = "X-Gitsync-Signature"
TIMESTAMP_HEADER = "X-Gitsync-Timestamp"
EVENT_HEADER = "X-Gitsync-Event"
DELIVERY_HEADER = "X-Gitsync-Delivery"
SIGNATURE_TOLERANCE = 300  # seconds a receiver accepts between the timestamp and its clock
MAX_LISTED = 20  # services named in a chat message; the webhook lists every one
MAX_TEXT = 2900  # Slack rejects a section text over 3,000 characters


MAX_PROBLEMS = 5  # problems an invalid commit's notice lists (the commit status has them all)


class Event(enum.StrEnum):
    ROLLOUT_STARTED = "rollout.started"
    ROLLOUT_SUCCEEDED = "rollout.succeeded"
    ROLLOUT_FAILED = "rollout.failed"
    ROLLOUT_ROLLED_BACK = "rollout.rolledBack"
    DRIFT_FOUND = "drift.found"
    DRIFT_HEALED = "drift.healed"
    DRIFT_FIGHT = "drift.fight"
    PREVIEW_READY = "preview.ready"
    PREVIEW_FAILED = "preview.failed"


EVENTS = tuple(str(e) for e in Event)

# What each predicted action means for the RayService, as an on-call reader needs it.
ACTION_WORDS: Mapping[str, str] = {
    Action.CLUSTER_SWAP: "cluster swap: a new RayCluster, traffic switched once its Serve apps run",
    Action.SERVE_UPDATE: "Serve apps updated in place on the running cluster",
    Action.SERVE_REFORMAT: "serveConfigV2 reformatted: nothing changes for Ray",
    Action.CREATE: "created: KubeRay starts a cluster, then deploys Serve",
    Action.CLUSTER_IN_PLACE: "running cluster updated in place (worker groups)",
    Action.CLUSTER_IGNORED: "cluster change KubeRay ignores (upgradeStrategy None)",
    Action.SCALE_INEFFECTIVE: "replica counts only: KubeRay does not propagate them",
    Action.METADATA: "labels or annotations only",
    Action.CONFIGURED: "configured",
    Action.PRUNE: "deleted: no longer in Git",
    Action.SKIPPED: "skipped: gitsync.ray.io/reconcile is disabled on it",
    "modified": "changed outside Git",
    "deleted": "deleted outside Git",
    "unexpected": "managed by gitsync, no longer in Git",
    "fighting": "another writer keeps changing it: self-heal stopped",
}
_QUIET = frozenset({Action.UNCHANGED, Action.ORPHAN})
_TITLES = {"commit": "Commit", "status": "Commit status", "page": "gitsync status page"}


@dataclass(frozen=True)
class Service:
    """One service a notice is about, with what happened to it (an :class:`Action`, or for
    drift how it drifted) and one line of why."""

    key: ServiceKey
    action: str
    summary: str = ""


@dataclass(frozen=True)
class Failure:
    """What failed: the service, the Serve application KubeRay reports failed ("" when the
    failure names none) and the message (KubeRay's, or gitsync's reason)."""

    service: ServiceKey | None
    app: str
    message: str


@dataclass(frozen=True)
class Notice:
    """One thing that happened, as every target is told it (docs/notifications.md)."""

    event: Event
    environment: str
    revision: str
    subject: str = ""  # the commit's first line
    namespace: str = ""
    services: tuple[Service, ...] = ()
    message: str = ""  # gitsync's account: the rollout's message, the drifts found
    failure: Failure | None = None
    pull_request: int | None = None
    links: tuple[tuple[str, str], ...] = ()  # (commit | status | page, URL)


@dataclass(frozen=True)
class LinkTemplates:
    """Where a notice links to, as templates with ``{environment}``, ``{revision}``,
    ``{short}`` and ``{context}``: the commit on the forge (which shows its statuses), the
    commit status's own link (``status.targetUrl``) and gitsync's status page."""

    commit: str = ""
    status: str = ""
    page: str = ""


def wanted(notice: Notice, environments: Sequence[str], events: Sequence[str]) -> bool:
    """Whether a target with these filters (empty: all) gets ``notice``."""
    return (not environments or notice.environment in environments) and (
        not events or str(notice.event) in events
    )


def with_links(notice: Notice, templates: LinkTemplates) -> Notice:
    """``notice`` with the links its templates give (a commit link needs a revision; a
    preview has no page of its own on the status page)."""
    values = {
        "environment": notice.environment,
        "revision": notice.revision,
        "short": notice.revision[:12],
        "context": f"gitsync/{notice.environment}",
    }
    links = []
    for name in ("commit", "status", "page"):
        template = getattr(templates, name)
        if not template or (name != "page" and not notice.revision):
            continue
        if name == "page" and notice.pull_request is not None:
            continue  # the status page shows environments, not previews
        links.append((name, template.format(**values)))
    return replace(notice, links=tuple(links))


# -- notices from what the agent saw -----------------------------------------------------------


def _services(changes: Iterable[Change], only: set[ServiceKey] | None = None) -> list[Service]:
    return [
        Service(c.key, str(c.action), c.summary)
        for c in changes
        if c.action not in _QUIET and (only is None or c.key in only)
    ]


def rollout_started(plan: Plan, subject: str = "") -> Notice | None:
    """``rollout.started`` for a plan that changes something (None when it does not)."""
    services = _services(plan.changes, None)
    if not plan.has_changes or not services:
        return None
    waves = sum(1 for w in plan.waves if any(c.action not in _QUIET for c in w.changes))
    return Notice(
        Event.ROLLOUT_STARTED,
        plan.environment,
        plan.to_rev or "",
        subject,
        plan.namespace,
        tuple(services),
        f"rolling out {len(services)} change(s) in {waves} wave(s)",
    )


_FINISHED = {
    Outcome.SUCCEEDED: Event.ROLLOUT_SUCCEEDED,
    Outcome.FAILED: Event.ROLLOUT_FAILED,
    Outcome.ROLLED_BACK: Event.ROLLOUT_ROLLED_BACK,
}
_APP = re.compile(r"\bapp (?P<app>\S+) is (?P<state>[A-Z_]+)\b(?P<where> on [^:;]+)?(?::\s*)?")


def failure_of(message: str, key: ServiceKey | None) -> Failure:
    """The failed Serve application and KubeRay's message, read from a rollout's message
    (``ns/name is Degraded: app ranker is DEPLOY_FAILED: <KubeRay's message>; later waves
    were not applied``, see :mod:`gitsync.health`); without an application named, the
    failure part of the message as it is."""
    failed = message.split(LATER_WAVES, 1)[0]
    found = _APP.search(failed)
    if found is None:
        return Failure(key, "", failed)
    why = failed[found.end() :].strip()
    state = f"{found['state']}{found['where'] or ''}"
    return Failure(key, found["app"], f"{state}: {why}" if why else state)


def rollout_finished(
    result: RolloutResult, plan: Plan | None, subject: str = "", *, announced: bool = False
) -> Notice | None:
    """``rollout.succeeded``, ``failed`` or ``rolledBack``; None for the other outcomes and
    for a success that changed nothing (``announced``: a ``rollout.started`` was sent, so
    its end is told whatever it did)."""
    event = _FINISHED.get(result.outcome)
    if event is None:
        return None
    done = {*result.applied, *result.pruned}
    if event is Event.ROLLOUT_SUCCEEDED and not (announced or done):
        return None
    changes = plan.changes if plan is not None and plan.to_rev == result.revision else ()
    if event is Event.ROLLOUT_SUCCEEDED:
        services = _services(changes, done) or [Service(k, "applied") for k in sorted(done)]
        failure = None
    else:
        services = _services(changes)
        failure = failure_of(result.message, result.failed)
    return Notice(
        event,
        result.environment,
        result.revision,
        subject,
        plan.namespace if plan is not None else "",
        tuple(services),
        result.message,
        failure,
    )


def revision_invalid(
    environment: str, revision: str, problems: tuple[object, ...], subject: str = ""
) -> Notice:
    """``rollout.failed`` for a commit nothing of which was applied: its gitsync.yaml or an
    environment's manifests are invalid (each problem at ``file:line``)."""
    listed = [str(p) for p in problems[:MAX_PROBLEMS]]
    if len(problems) > MAX_PROBLEMS:
        listed.append(f"… {len(problems) - MAX_PROBLEMS} more")
    what = "gitsync.yaml" if environment == "config" else f"{environment}'s manifests"
    message = f"invalid, nothing applied ({what}): " + "; ".join(listed)
    return Notice(
        Event.ROLLOUT_FAILED,
        environment,
        revision,
        subject,
        message=message,
        failure=Failure(None, "", message),
    )


@dataclass(frozen=True)
class DriftSeen:
    """What drift an environment's notices already told: the findings and the fights."""

    drifts: frozenset[str] = frozenset()
    fighting: frozenset[ServiceKey] = frozenset()


def drift_notices(
    environment: str,
    revision: str,
    drifts: Sequence[Drift],
    fighting: Sequence[ServiceKey],
    healed: RolloutResult | None,
    seen: DriftSeen,
) -> tuple[list[Notice], DriftSeen]:
    """One drift check's notices — ``drift.found`` for findings not told before, ``drift.fight``
    for services newly fought over, ``drift.healed`` (or a failed rollout) for a heal — and
    what is told now. A finding told is not told again until it has gone and come back (a
    heal that succeeded takes it away: the same edit made again is told again)."""
    notices: list[Notice] = []
    new = [d for d in drifts if d.message not in seen.drifts]
    if new:
        services = tuple(
            Service(d.key, str(d.kind), ", ".join(d.fields[:4]) + _by(d.managers)) for d in new
        )
        notices.append(
            Notice(
                Event.DRIFT_FOUND,
                environment,
                revision,
                services=services,
                message="; ".join(d.message for d in new),
            )
        )
    fights = sorted(set(fighting) - seen.fighting)
    if fights:
        managers = {d.key: d.managers for d in drifts}
        services = tuple(Service(k, "fighting", _by(managers.get(k, ())).strip()) for k in fights)
        notices.append(
            Notice(
                Event.DRIFT_FIGHT,
                environment,
                revision,
                services=services,
                message="corrected drift.correctionLimit times within drift.correctionWindow "
                "and changed again: gitsync stops correcting it; find the other writer",
            )
        )
    if healed is not None:
        if healed.outcome is Outcome.SUCCEEDED:
            services = tuple(Service(k, "healed") for k in healed.applied)
            notices.append(
                Notice(Event.DRIFT_HEALED, environment, revision, services=services,
                       message=f"self-heal put Git's version back: {healed.message}")
            )  # fmt: skip
        elif (failed := rollout_finished(healed, None)) is not None:
            notices.append(replace(failed, message=f"self-heal failed: {failed.message}"))
    gone = set(healed.applied) if healed is not None and healed.outcome is Outcome.SUCCEEDED else ()
    still = frozenset(d.message for d in drifts if d.key not in gone)
    return notices, DriftSeen(still, frozenset(fighting))


def _by(managers: Sequence[str]) -> str:
    return f" (by {', '.join(managers)})" if managers else ""


def preview_notice(
    number: int, revision: str, services: Sequence[str], namespace: str, outcome: str, message: str
) -> Notice | None:
    """``preview.ready`` or ``preview.failed`` for a pull request's preview (None for the
    other outcomes: skipped, deleted, unchanged)."""
    event = {"succeeded": Event.PREVIEW_READY, "failed": Event.PREVIEW_FAILED}.get(outcome)
    if event is None:
        return None
    keys = tuple(Service(ServiceKey(namespace, name), "preview") for name in services)
    failure = failure_of(message, None) if event is Event.PREVIEW_FAILED else None
    return Notice(
        event, PREVIEW_ENVIRONMENT, revision, namespace=namespace, services=keys,
        message=message, failure=failure, pull_request=number,
    )  # fmt: skip


# -- what each target receives ---------------------------------------------------------------


_TITLE = {
    Event.ROLLOUT_STARTED: "{env}: rolling out {short} ({count} service(s))",
    Event.ROLLOUT_SUCCEEDED: "{env}: {short} rolled out, Healthy",
    Event.ROLLOUT_FAILED: "{env}: rollout of {short} failed",
    Event.ROLLOUT_ROLLED_BACK: "{env}: rollout of {short} failed and was rolled back",
    Event.DRIFT_FOUND: "{env}: drift found in {count} service(s)",
    Event.DRIFT_HEALED: "{env}: drift healed in {count} service(s)",
    Event.DRIFT_FIGHT: "{env}: another writer keeps changing {count} service(s); self-heal stopped",
    Event.PREVIEW_READY: "preview of #{pr} ready at {short}",
    Event.PREVIEW_FAILED: "preview of #{pr} failed at {short}",
}


def title(notice: Notice) -> str:
    """The one-line headline every format leads with."""
    return _TITLE[notice.event].format(
        env=notice.environment,
        short=notice.revision[:12],
        count=len(notice.services),
        pr=notice.pull_request,
    )


def _failed(event: Event) -> bool:
    return event in (
        Event.ROLLOUT_FAILED,
        Event.ROLLOUT_ROLLED_BACK,
        Event.DRIFT_FIGHT,
        Event.PREVIEW_FAILED,
    )


def service_lines(notice: Notice, limit: int = MAX_LISTED) -> list[str]:
    """One line per service (``ns/ranker: cluster swap: … (why)``), at most ``limit`` and a
    line saying how many more."""
    lines = []
    for s in notice.services[:limit]:
        words = ACTION_WORDS.get(s.action, s.action)
        why = f" ({s.summary})" if s.summary and s.summary not in words else ""
        lines.append(shorten(f"{s.key}: {words}{why}", 300))
    if len(notice.services) > limit:
        lines.append(f"… and {len(notice.services) - limit} more")
    return lines


def failure_line(failure: Failure) -> str:
    """``ns/ranker: Serve app ranker DEPLOY_FAILED: <KubeRay's message>``."""
    where = f"{failure.service}: " if failure.service is not None else ""
    if failure.app:
        return f"{where}Serve app {failure.app} {failure.message}"
    return f"{where}{failure.message}"


def _commit(notice: Notice) -> str:
    return f"{notice.revision[:12]} {notice.subject}".strip()


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_message(notice: Notice) -> dict[str, Any]:
    """A Slack incoming-webhook message: ``text`` (notifications, and clients without
    blocks) and ``blocks``: a header, the commit, the failure, the services, the links."""
    head = title(notice)
    mark = ":red_circle:" if _failed(notice.event) else ":large_green_circle:"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": shorten(head, 150)}},
    ]
    facts = [f"*Environment:* {_slack_escape(notice.environment)}"]
    if notice.revision:
        facts.append(f"*Commit:* `{notice.revision[:12]}` {_slack_escape(notice.subject)}")
    if notice.pull_request is not None:
        facts.append(f"*Pull request:* #{notice.pull_request}")
    blocks.append(_section("\n".join(facts)))
    if notice.failure is not None:
        blocks.append(_section(f"{mark} *Failed:* {_slack_escape(failure_line(notice.failure))}"))
    elif notice.message:
        blocks.append(_section(_slack_escape(notice.message)))
    if notice.services:
        listed = "\n".join(f"• {_slack_escape(line)}" for line in service_lines(notice))
        blocks.append(_section(listed))
    if notice.links:
        text = " · ".join(f"<{url}|{_TITLES[name]}>" for name, url in notice.links)
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": text}]})
    return {"text": f"{mark} {_slack_escape(head)}", "blocks": blocks}


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": shorten_block(text)}}


def shorten_block(text: str, limit: int = MAX_TEXT) -> str:
    """``text`` (lines kept) cut to ``limit`` characters."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def teams_message(notice: Notice) -> dict[str, Any]:
    """A Microsoft Teams message for a Workflows webhook ("Post to a channel when a webhook
    request is received"): one Adaptive Card attachment."""
    body: list[dict[str, Any]] = [
        {
            "type": "TextBlock",
            "text": title(notice),
            "size": "Medium",
            "weight": "Bolder",
            "wrap": True,
            "color": "Attention" if _failed(notice.event) else "Good",
        },
    ]
    facts = [{"title": "Environment", "value": notice.environment}]
    if notice.revision:
        facts.append({"title": "Commit", "value": _commit(notice)})
    if notice.pull_request is not None:
        facts.append({"title": "Pull request", "value": f"#{notice.pull_request}"})
    facts.append({"title": "Event", "value": str(notice.event)})
    body.append({"type": "FactSet", "facts": facts})
    if notice.failure is not None:
        text = f"Failed: {failure_line(notice.failure)}"
        body.append({"type": "TextBlock", "text": shorten_block(text), "wrap": True,
                     "color": "Attention"})  # fmt: skip
    elif notice.message:
        body.append({"type": "TextBlock", "text": shorten_block(notice.message), "wrap": True})
    if notice.services:
        text = "\n".join(f"- {line}" for line in service_lines(notice))
        body.append({"type": "TextBlock", "text": shorten_block(text), "wrap": True})
    card: dict[str, Any] = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": body,
    }
    if notice.links:
        card["actions"] = [
            {"type": "Action.OpenUrl", "title": _TITLES[name], "url": url}
            for name, url in notice.links
        ]
    return {
        "type": "message",
        "attachments": [
            {
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": None,
                "content": card,
            }
        ],
    }


def webhook_message(notice: Notice, delivery: str, at: str) -> dict[str, Any]:
    """The generic webhook's JSON (docs/notifications.md, schema version 1). ``delivery``:
    the delivery's id (the same on every attempt); ``at``: when the event happened (UTC,
    ISO 8601)."""
    failure = notice.failure
    return {
        "version": SCHEMA_VERSION,
        "id": delivery,
        "event": str(notice.event),
        "time": at,
        "environment": notice.environment,
        "namespace": notice.namespace,
        "revision": notice.revision,
        "subject": notice.subject,
        "pullRequest": notice.pull_request,
        "title": title(notice),
        "message": notice.message,
        "services": [
            {
                "service": str(s.key),
                "namespace": s.key.namespace,
                "name": s.key.name,
                "kind": s.key.kind,
                "action": s.action,
                "summary": s.summary,
            }
            for s in notice.services
        ],
        "failure": None
        if failure is None
        else {
            "service": str(failure.service) if failure.service is not None else None,
            "app": failure.app or None,
            "message": failure.message,
        },
        "links": dict(notice.links),
    }


def message_for(kind: str, notice: Notice, delivery: str, at: str) -> dict[str, Any]:
    """What a target of ``kind`` (slack, teams, webhook) receives."""
    if kind == "slack":
        return slack_message(notice)
    if kind == "teams":
        return teams_message(notice)
    return webhook_message(notice, delivery, at)


# -- signing ---------------------------------------------------------------------------------


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """``X-Gitsync-Signature``: ``sha256=`` and the hex HMAC-SHA256, keyed with the shared
    secret, of ``<timestamp>.`` followed by the raw body. The timestamp (``X-Gitsync-Timestamp``,
    Unix seconds) is signed with the body, so a captured request cannot be replayed later
    with a fresh timestamp."""
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(
    secret: bytes,
    timestamp: str,
    signature: str,
    body: bytes,
    now: float,
    tolerance: float = SIGNATURE_TOLERANCE,
) -> bool:
    """A receiver's check (docs/notifications.md has it in a few lines of Python): the
    timestamp within ``tolerance`` seconds of ``now``, and the signature equal, compared in
    constant time."""
    if not timestamp.isdigit() or abs(now - int(timestamp)) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, int(timestamp), body), signature)
