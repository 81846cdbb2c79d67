"""The status page's view model: :mod:`gitsync.web.facts` → frozen dataclasses. Pure.

Owns every decision about what is shown: the rollout state in words ("wave 2 of 3",
"failed at ranker"), the health summary, per-app and per-deployment Serve statuses as
KubeRay reports them, the active and pending RayCluster, the Ray-aware diff (env var values
masked where it was planned, :mod:`gitsync.mask`), the timeline with durations. The same
values are the JSON API (:func:`as_json`) and what :mod:`gitsync.web.render` prints.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from gitsync import kuberay
from gitsync.health import assess
from gitsync.model import Action, Change, Health, Outcome, Phase, ServiceKey, StepKind
from gitsync.names import REVISION, WAVE
from gitsync.web.facts import (
    Clock,
    CommitInfo,
    EnvironmentFacts,
    Forge,
    PreviewFacts,
    RolloutRecord,
    Step,
)


@dataclass(frozen=True)
class CommitView:
    sha: str
    short: str
    message: str
    author: str
    age: str
    url: str | None


@dataclass(frozen=True)
class DeploymentView:
    name: str
    status: str
    message: str


@dataclass(frozen=True)
class AppView:
    name: str
    status: str
    message: str
    deployments: tuple[DeploymentView, ...]


@dataclass(frozen=True)
class ServiceView:
    name: str
    namespace: str
    wave: int
    health: str
    message: str
    last_action: str
    revision: str
    active_cluster: str
    pending_cluster: str
    apps: tuple[AppView, ...]
    pending_apps: tuple[AppView, ...]
    since_transition: str
    drift: str


@dataclass(frozen=True)
class WaveView:
    number: int
    services: tuple[ServiceView, ...]


@dataclass(frozen=True)
class ChangeView:
    service: str
    wave: int
    action: str
    summary: str
    details: tuple[str, ...]
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class StepView:
    kind: str
    label: str
    at: str  # UTC, ISO 8601
    duration: str  # until the next step (or now, for the step in flight)
    services: tuple[str, ...]
    message: str


@dataclass(frozen=True)
class RolloutView:
    environment: str
    revision: CommitView | None
    state: str
    in_progress: bool
    outcome: str
    message: str
    failed_service: str
    changes: tuple[ChangeView, ...]
    timeline: tuple[StepView, ...]


@dataclass(frozen=True)
class EnvironmentSummary:
    name: str
    namespace: str
    applied: CommitView | None
    state: str
    in_progress: bool
    failed: bool
    rolling_out: CommitView | None  # the revision of the rollout in flight
    drift: str
    health: str  # "3/3 Healthy", "2/3 Healthy, 1 Degraded"
    healthy: bool
    hold: str = ""  # "suspended by alice (why)", "pinned to abc… by bob": "" when neither


@dataclass(frozen=True)
class PastRolloutView:
    revision: CommitView | None
    outcome: str
    started: str  # UTC, ISO 8601
    duration: str
    changes: int
    message: str
    failed_service: str


@dataclass(frozen=True)
class EventView:
    """A Kubernetes Event about one of the environment's RayServices."""

    service: str
    type: str  # Normal | Warning
    reason: str
    message: str
    count: int
    last_seen: str  # UTC, ISO 8601
    age: str
    source: str  # who wrote it: gitsync, the KubeRay operator …


@dataclass(frozen=True)
class EnvironmentView:
    summary: EnvironmentSummary
    waves: tuple[WaveView, ...]
    rollout: RolloutView | None
    history: tuple[PastRolloutView, ...] = ()
    events: tuple[EventView, ...] = ()


@dataclass(frozen=True)
class PreviewView:
    number: int
    url: str | None
    revision: str
    services: tuple[str, ...]
    outcome: str
    message: str


@dataclass(frozen=True)
class Overview:
    environments: tuple[EnvironmentSummary, ...]
    previews: tuple[PreviewView, ...]
    in_progress: bool


def as_json(value: Any) -> Any:
    """A view model as JSON-ready dicts and lists."""
    return asdict(value)


# -- small formatting ----------------------------------------------------------------------


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    return f"{int(seconds // 86400)}d{int(seconds % 86400 // 3600)}h"


def iso(wall: float) -> str:
    return datetime.datetime.fromtimestamp(wall, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: Any) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def commit_view(commit: CommitInfo | None, forge: Forge | None, clock: Clock) -> CommitView | None:
    if commit is None or not commit.sha:
        return None
    age = duration(clock.wall - commit.timestamp) if commit.timestamp is not None else ""
    url = forge.commit_url(commit.sha) if forge is not None else None
    return CommitView(commit.sha, commit.sha[:12], commit.message, commit.author, age, url)


# -- services ------------------------------------------------------------------------------


def _apps(side: Any) -> tuple[AppView, ...]:
    statuses = (side or {}).get("applicationStatuses") or {} if isinstance(side, Mapping) else {}
    apps = []
    for name, app in sorted(statuses.items()):
        if not isinstance(app, Mapping):
            continue
        deployments = tuple(
            DeploymentView(str(dep), str(d.get("status", "")), str(d.get("message") or ""))
            for dep, d in sorted((app.get("serveDeploymentStatuses") or {}).items())
            if isinstance(d, Mapping)
        )
        apps.append(
            AppView(
                str(name), str(app.get("status", "")), str(app.get("message") or ""), deployments
            )
        )
    return tuple(apps)


def _since_transition(status: Mapping[str, Any], clock: Clock) -> str:
    times = [
        _parse_time(c.get("lastTransitionTime"))
        for c in status.get("conditions") or []
        if isinstance(c, Mapping)
    ]
    known = [t for t in times if t is not None]
    return duration(clock.wall - max(known)) if known else ""


def _wave(obj: Mapping[str, Any] | None, change: Change | None) -> int:
    if change is not None:
        return change.wave
    annotations = ((obj or {}).get("metadata") or {}).get("annotations") or {}
    try:
        return int(annotations.get(WAVE, 0))
    except (TypeError, ValueError):
        return 0


def service_view(
    key: ServiceKey,
    obj: Mapping[str, Any] | None,
    wave: int,
    last_action: str,
    drift: str,
    clock: Clock,
) -> ServiceView:
    spec = (obj or {}).get("spec") or {}
    try:
        expected = tuple(kuberay.serve_application_names(spec.get("serveConfigV2")))
    except ValueError:
        expected = ()
    assessment = assess(obj, expected)
    status = (obj or {}).get("status") or {}
    status = status if isinstance(status, Mapping) else {}
    active, pending = (
        status.get("activeServiceStatus") or {},
        status.get("pendingServiceStatus") or {},
    )
    annotations = ((obj or {}).get("metadata") or {}).get("annotations") or {}
    return ServiceView(
        key.name,
        key.namespace,
        wave,
        str(assessment.health),
        assessment.message,
        last_action,
        str(annotations.get(REVISION, ""))[:12],
        str(active.get("rayClusterName") or ""),
        str(pending.get("rayClusterName") or ""),
        _apps(active),
        _apps(pending),
        _since_transition(status, clock),
        drift,
    )


def _drift_by_service(env: EnvironmentFacts) -> dict[ServiceKey, str]:
    if env.drift is None:
        return {}
    found = {key: f"drifted: {message}" for key, message in env.drift.drifted}
    found.update(dict.fromkeys(env.drift.fighting, "fighting another writer"))
    return found


def services(env: EnvironmentFacts, clock: Clock) -> tuple[WaveView, ...]:
    changes = {c.key: c for c in (env.record.changes if env.record else ())}
    drift = _drift_by_service(env)
    keys = sorted({*env.live, *(k for k, c in changes.items() if c.action is not Action.PRUNE)})
    by_wave: dict[int, list[ServiceView]] = {}
    for key in keys:
        obj = env.live.get(key)
        action = env.last_actions[key][0] if key in env.last_actions else ""
        wave = _wave(obj, changes.get(key))
        view = service_view(key, obj, wave, str(action), drift.get(key, ""), clock)
        by_wave.setdefault(wave, []).append(view)
    return tuple(WaveView(n, tuple(by_wave[n])) for n in sorted(by_wave))


# -- rollouts ------------------------------------------------------------------------------

_DONE = {
    Outcome.SUCCEEDED: "Healthy",
    Outcome.FAILED: "failed",
    Outcome.ROLLED_BACK: "rolled back",
    Outcome.SUPERSEDED: "superseded by a newer commit",
    Outcome.INTERRUPTED: "interrupted (resumes at the next pass)",
    Outcome.BLOCKED: "blocked",
    Outcome.HELD: "held (suspended or pinned)",
}
_FAILED = (Outcome.FAILED, Outcome.ROLLED_BACK, Outcome.BLOCKED)


def _recorded_state(env: EnvironmentFacts) -> str:
    """What the state ConfigMap says, for a rollout this agent did not see (it restarted)."""
    state = env.state
    if state is None:
        return "idle"
    if state.phase is Phase.IN_PROGRESS:
        return f"in progress at wave {state.wave}"
    if state.phase is Phase.FAILED:
        return "failed"
    return "rolled back" if state.phase is Phase.ROLLED_BACK else "idle"


def rollout_state(record: RolloutRecord | None, env: EnvironmentFacts) -> str:
    """``idle``, ``planning``, ``wave 2 of 3: applying``, ``failed at ranker``, ``rolled back``."""
    if record is None:
        return _recorded_state(env)
    if record.outcome is None:
        waves = [s for s in record.steps if s.kind in (StepKind.APPLYING, StepKind.WAITING)]
        if not waves:
            return "planning"
        last = waves[-1]
        return f"wave {last.index} of {last.total}: {last.kind}"
    if record.outcome is Outcome.SUCCEEDED:
        return "idle"
    if record.outcome is Outcome.FAILED and record.failed is not None:
        return f"failed at {record.failed.name}"
    return _DONE[record.outcome]


def _step_label(step: Step) -> str:
    names = ", ".join(f"{key.name} ({action})" for key, action in step.services)
    if step.kind is StepKind.APPLYING:
        return f"wave {step.index} of {step.total}: applying {names}".rstrip()
    if step.kind is StepKind.WAITING:
        return f"wave {step.index} of {step.total}: waiting to be Healthy"
    if step.kind is StepKind.STARTED:
        return "rollout started"
    return _DONE[step.kind]


def timeline(record: RolloutRecord, clock: Clock) -> tuple[StepView, ...]:
    views = []
    for i, step in enumerate(record.steps):
        final = isinstance(step.kind, Outcome)
        if i + 1 < len(record.steps):
            took: float | None = record.steps[i + 1].mono - step.mono
        else:
            took = None if final else clock.mono - step.mono
        views.append(
            StepView(
                str(step.kind),
                _step_label(step),
                iso(step.wall),
                duration(took),
                tuple(key.name for key, _ in step.services),
                step.message,
            )
        )
    if record.outcome is not None and record.steps:
        total = record.steps[-1].mono - record.steps[0].mono
        views.append(
            StepView("total", "total", iso(record.steps[-1].wall), duration(total), (), "")
        )
    return tuple(views)


def change_view(change: Change) -> ChangeView:
    """Env var values arrive masked (:mod:`gitsync.mask`, when the agent planned), unless the
    agent runs with ``ui.showEnvValues``: the page shows the record as stored."""
    return ChangeView(
        str(change.key),
        change.wave,
        str(change.action),
        change.summary,
        change.details,
        change.warnings,
    )


def rollout_view(env: EnvironmentFacts, forge: Forge | None, clock: Clock) -> RolloutView | None:
    record = env.record
    if record is None:
        return None
    return RolloutView(
        env.name,
        commit_view(record.commit or CommitInfo(record.revision), forge, clock),
        rollout_state(record, env),
        record.outcome is None,
        str(record.outcome or "in-progress"),
        record.message,
        str(record.failed or ""),
        tuple(change_view(c) for c in record.changes if c.action is not Action.UNCHANGED),
        timeline(record, clock),
    )


# -- environments --------------------------------------------------------------------------


def _health_summary(waves: Sequence[WaveView]) -> tuple[str, bool]:
    healths = [s.health for w in waves for s in w.services]
    if not healths:
        return "no services", False
    counts = {h: healths.count(str(h)) for h in Health if str(h) in healths}
    healthy = counts.get(Health.HEALTHY, 0)
    others = ", ".join(f"{n} {h}" for h, n in counts.items() if h is not Health.HEALTHY)
    text = f"{healthy}/{len(healths)} Healthy" + (f", {others}" if others else "")
    return text, healthy == len(healths)


def _drift_summary(env: EnvironmentFacts) -> str:
    if env.drift is None:
        return "not checked yet"
    if env.drift.note and not env.drift.drifted:
        return env.drift.note
    parts = []
    if env.drift.drifted:
        parts.append(f"{len(env.drift.drifted)} drifted")
    if env.drift.fighting:
        parts.append(f"{len(env.drift.fighting)} fighting")
    return ", ".join(parts) or "none"


def summary(
    env: EnvironmentFacts, waves: Sequence[WaveView], forge: Forge | None, clock: Clock
) -> EnvironmentSummary:
    applied = env.applied
    if applied is None and env.state is not None and env.state.last_healthy_revision:
        applied = CommitInfo(env.state.last_healthy_revision)
    health, healthy = _health_summary(waves)
    record = env.record
    failed = (record is not None and record.outcome in _FAILED) or (
        record is None and env.state is not None and env.state.phase is Phase.FAILED
    )
    return EnvironmentSummary(
        env.name,
        env.namespace,
        commit_view(applied, forge, clock),
        rollout_state(record, env),
        record is not None and record.outcome is None,
        failed,
        commit_view(record.commit or CommitInfo(record.revision), forge, clock)
        if record is not None and record.outcome is None
        else None,
        _drift_summary(env),
        health,
        healthy,
        env.hold.describe(),
    )


def history_view(
    env: EnvironmentFacts, forge: Forge | None, clock: Clock
) -> tuple[PastRolloutView, ...]:
    return tuple(
        PastRolloutView(
            commit_view(p.commit or CommitInfo(p.revision), forge, clock),
            str(p.outcome or ""),
            iso(p.started),
            duration(p.finished - p.started),
            p.changes,
            p.message,
            str(p.failed or ""),
        )
        for p in env.history
    )


EVENTS_SHOWN = 20  # the page's Events: warnings first, then the newest


def events_view(env: EnvironmentFacts, clock: Clock) -> tuple[EventView, ...]:
    """The Events about the environment's RayServices, warnings first (what needs a look),
    each group newest first, at most :data:`EVENTS_SHOWN` (as ``kubectl events`` shows them,
    with the warnings up front)."""

    def when(event: Mapping[str, Any]) -> float:
        return _parse_time(event.get("last")) or 0.0

    ordered = sorted(env.events, key=lambda e: (e.get("type") != "Warning", -when(e)))
    return tuple(
        EventView(
            str(e.get("object", "")),
            str(e.get("type", "")),
            str(e.get("reason", "")),
            str(e.get("message", "")),
            int(e.get("count") or 1),
            str(e.get("last", "")),
            duration(clock.wall - when(e)) if when(e) else "",
            str(e.get("source", "")),
        )
        for e in ordered[:EVENTS_SHOWN]
    )


def environment_view(env: EnvironmentFacts, forge: Forge | None, clock: Clock) -> EnvironmentView:
    waves = services(env, clock)
    return EnvironmentView(
        summary(env, waves, forge, clock),
        waves,
        rollout_view(env, forge, clock),
        history_view(env, forge, clock),
        events_view(env, clock),
    )


def overview(
    envs: Sequence[EnvironmentFacts],
    previews: Sequence[PreviewFacts],
    forge: Forge | None,
    clock: Clock,
) -> Overview:
    summaries = tuple(summary(env, services(env, clock), forge, clock) for env in envs)
    return Overview(
        summaries,
        tuple(
            PreviewView(
                p.number,
                forge.pull_url(p.number) if forge is not None else None,
                p.revision[:12],
                p.services,
                p.outcome,
                p.message,
            )
            for p in sorted(previews, key=lambda p: p.number)
        ),
        any(s.in_progress for s in summaries),
    )
