"""What the status page shows, as kept in the cluster: :class:`EnvironmentMemory` ↔ the string
values of an environment's state ConfigMap (``gitsync-rollout-<env>``). Pure.

The leader writes them (:mod:`gitsync.web.history` calls its sink) and every replica reads
them back (:mod:`gitsync.web.site`), so a standby shows the same page as the leader and a
restarted agent shows the rollouts before its restart. Bounded, for a ConfigMap's 1 MiB: the
last rollout's diff lines are cut at ``MAX_DETAIL_BYTES`` in all (the page says how many were
left out), ``MAX_HISTORY`` earlier rollouts are kept (newest first), one action per service.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from gitsync.model import Action, Change, Outcome, ServiceKey, StepKind
from gitsync.web.facts import (
    CommitInfo,
    DriftFacts,
    PastRollout,
    PreviewFacts,
    RolloutRecord,
    Step,
)

MAX_HISTORY = 20  # earlier rollouts kept per environment
MAX_DETAIL_BYTES = 256 * 1024  # the last rollout's diff lines, all services together
MAX_PREVIEWS = 200

# The state ConfigMap's keys this module owns (the rollout's and drift's are others').
KEYS = ("namespace", "position", "rollout", "applied_commit", "actions", "drift_facts", "history")


@dataclass(frozen=True)
class EnvironmentMemory:
    name: str
    namespace: str
    record: RolloutRecord | None
    applied: CommitInfo | None
    actions: dict[ServiceKey, tuple[Action, float]]
    drift: DriftFacts | None
    history: tuple[PastRollout, ...] = ()
    position: int = 0  # in gitsync.yaml's order of environments: the page lists them so


def past(record: RolloutRecord) -> PastRollout:
    started = record.steps[0].wall if record.steps else 0.0
    finished = record.steps[-1].wall if record.steps else started
    return PastRollout(
        record.revision,
        record.outcome,
        started,
        finished,
        record.message,
        record.failed,
        record.commit,
        sum(1 for c in record.changes if c.action is not Action.UNCHANGED),
    )


# -- to the ConfigMap ------------------------------------------------------------------------


def _dump(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _commit(info: CommitInfo | None) -> dict[str, Any] | None:
    if info is None:
        return None
    return {"sha": info.sha, "author": info.author, "time": info.timestamp, "subject": info.message}


def _changes(changes: Sequence[Change]) -> list[dict[str, Any]]:
    out, budget, cut = [], MAX_DETAIL_BYTES, 0
    for c in changes:
        details = []
        for line in c.details:
            budget -= len(line.encode())
            if budget < 0:
                cut += 1
                continue
            details.append(line)
        out.append(
            {
                "key": str(c.key),
                "action": str(c.action),
                "wave": c.wave,
                "summary": c.summary,
                "details": details,
                "warnings": list(c.warnings),
                "cut": len(c.details) - len(details),
            }
        )
    return out


def _record(record: RolloutRecord) -> dict[str, Any]:
    return {
        "environment": record.environment,
        "namespace": record.namespace,
        "revision": record.revision,
        "commit": _commit(record.commit),
        "changes": _changes(record.changes),
        "steps": [
            {
                "kind": s.kind,
                "at": s.wall,
                "index": s.index,
                "total": s.total,
                "services": [[str(key), str(action)] for key, action in s.services],
                "message": s.message,
            }
            for s in record.steps
        ],
        "outcome": record.outcome,
        "message": record.message,
        "failed": str(record.failed or ""),
    }


def _past(entry: PastRollout) -> dict[str, Any]:
    return {
        "revision": entry.revision,
        "outcome": entry.outcome or "",
        "started": entry.started,
        "finished": entry.finished,
        "message": entry.message,
        "failed": str(entry.failed or ""),
        "commit": _commit(entry.commit),
        "changes": entry.changes,
    }


def to_data(memory: EnvironmentMemory) -> dict[str, str]:
    """The ConfigMap values for ``memory`` (every key of :data:`KEYS`)."""
    drift = memory.drift
    return {
        "namespace": memory.namespace,
        "position": str(memory.position),
        "rollout": _dump(_record(memory.record)) if memory.record is not None else "",
        "applied_commit": _dump(_commit(memory.applied)) if memory.applied is not None else "",
        "actions": _dump({str(k): [str(a), t] for k, (a, t) in sorted(memory.actions.items())}),
        "drift_facts": _dump(
            {
                "at": drift.wall,
                "drifted": [[str(key), message] for key, message in drift.drifted],
                "fighting": [str(key) for key in drift.fighting],
                "note": drift.note,
            }
        )
        if drift is not None
        else "",
        "history": _dump([_past(p) for p in memory.history[:MAX_HISTORY]]),
    }


def previews_to_data(previews: Sequence[PreviewFacts]) -> dict[str, str]:
    return {
        "previews": _dump(
            [
                {
                    "number": p.number,
                    "revision": p.revision,
                    "services": list(p.services),
                    "outcome": p.outcome,
                    "message": p.message,
                }
                for p in previews[:MAX_PREVIEWS]
            ]
        )
    }


# -- from the ConfigMap: whatever is unreadable is left out, never an error -----------------


def _load(text: str | None, default: Any) -> Any:
    try:
        return json.loads(text) if text else default
    except ValueError:
        return default


def _key(text: Any) -> ServiceKey | None:
    """A key as ``str(ServiceKey)`` wrote it: ``namespace/name``, or ``namespace/Kind/name``
    for another kind (whose apiVersion is not kept: the page shows the kind and name)."""
    namespace, _, rest = str(text).partition("/")
    kind, _, name = rest.rpartition("/")
    if not namespace or not name:
        return None
    return ServiceKey(namespace, name, kind, "") if kind else ServiceKey(namespace, name)


E = TypeVar("E", Action, Outcome, StepKind)


def _enum(kind: type[E], text: Any) -> E | None:
    try:
        return kind(str(text))
    except ValueError:
        return None


def _step_kind(text: Any) -> StepKind | Outcome | None:
    return _enum(StepKind, text) or _enum(Outcome, text)


def _step_from(raw: Mapping[str, Any]) -> Step | None:
    kind = _step_kind(raw.get("kind", ""))
    if kind is None:
        return None
    services = []
    for pair in raw.get("services") or ():
        if len(pair) == 2:
            key, action = _key(pair[0]), _enum(Action, pair[1])
            if key is not None and action is not None:
                services.append((key, action))
    return Step(
        kind,
        float(raw.get("at") or 0.0),
        float(raw.get("at") or 0.0),  # durations come from the wall clock once stored
        int(raw.get("index") or 0),
        int(raw.get("total") or 0),
        tuple(services),
        str(raw.get("message") or ""),
    )


def _commit_from(raw: Any) -> CommitInfo | None:
    if not isinstance(raw, Mapping) or not raw.get("sha"):
        return None
    when = raw.get("time")
    return CommitInfo(
        str(raw["sha"]),
        str(raw.get("author") or ""),
        float(when) if isinstance(when, int | float) else None,
        str(raw.get("subject") or ""),
    )


def _change_from(raw: Mapping[str, Any]) -> Change | None:
    key = _key(raw.get("key"))
    try:
        action = Action(str(raw.get("action")))
    except ValueError:
        return None
    if key is None:
        return None
    details = tuple(str(d) for d in raw.get("details") or ())
    cut = raw.get("cut") or 0
    if isinstance(cut, int) and cut > 0:
        details += (f"… {cut} more line(s) not kept (the stored diff is capped)",)
    return Change(
        key,
        action,
        int(raw.get("wave") or 0),
        str(raw.get("summary") or ""),
        details,
        tuple(str(w) for w in raw.get("warnings") or ()),
    )


def _record_from(raw: Any) -> RolloutRecord | None:
    if not isinstance(raw, Mapping) or not raw.get("revision"):
        return None
    changes = tuple(
        c
        for c in (_change_from(r) for r in raw.get("changes") or () if isinstance(r, Mapping))
        if c
    )
    steps = tuple(
        step
        for step in (_step_from(s) for s in raw.get("steps") or () if isinstance(s, Mapping))
        if step is not None
    )
    return RolloutRecord(
        str(raw.get("environment") or ""),
        str(raw.get("namespace") or ""),
        str(raw["revision"]),
        _commit_from(raw.get("commit")),
        changes,
        steps,
        _enum(Outcome, raw.get("outcome")),
        str(raw.get("message") or ""),
        _key(raw.get("failed") or ""),
    )


def _drift_from(raw: Any) -> DriftFacts | None:
    if not isinstance(raw, Mapping):
        return None
    return DriftFacts(
        float(raw.get("at") or 0.0),
        tuple(
            (key, str(d[1]))
            for d in raw.get("drifted") or ()
            if len(d) == 2 and (key := _key(d[0])) is not None
        ),
        tuple(key for f in raw.get("fighting") or () if (key := _key(f)) is not None),
        str(raw.get("note") or ""),
    )


def _past_from(raw: Any) -> PastRollout | None:
    if not isinstance(raw, Mapping) or not raw.get("revision"):
        return None
    return PastRollout(
        str(raw["revision"]),
        _enum(Outcome, raw.get("outcome")),
        float(raw.get("started") or 0.0),
        float(raw.get("finished") or 0.0),
        str(raw.get("message") or ""),
        _key(raw.get("failed") or ""),
        _commit_from(raw.get("commit")),
        int(raw.get("changes") or 0),
    )


def from_data(name: str, data: Mapping[str, str]) -> EnvironmentMemory | None:
    """The memory kept in an environment's ConfigMap; None when the leader has not written
    it (a preview's state, or an environment no pass has planned yet)."""
    namespace = data.get("namespace", "")
    if not namespace:
        return None
    position = data.get("position", "")
    actions = {}
    for service, value in (_load(data.get("actions"), {}) or {}).items():
        key = _key(service)
        if key is not None and isinstance(value, list) and len(value) == 2:
            action = _enum(Action, value[0])
            if action is not None:
                actions[key] = (action, float(value[1] or 0.0))
    return EnvironmentMemory(
        name,
        namespace,
        _record_from(_load(data.get("rollout"), None)),
        _commit_from(_load(data.get("applied_commit"), None)),
        actions,
        _drift_from(_load(data.get("drift_facts"), None)),
        tuple(p for p in (_past_from(r) for r in _load(data.get("history"), []) or ()) if p),
        int(position) if position.isdigit() else 0,
    )


def previews_from(data: Mapping[str, str]) -> tuple[PreviewFacts, ...]:
    return tuple(
        PreviewFacts(
            int(p.get("number") or 0),
            str(p.get("revision") or ""),
            tuple(str(s) for s in p.get("services") or ()),
            str(p.get("outcome") or ""),
            str(p.get("message") or ""),
        )
        for p in _load(data.get("previews"), []) or ()
        if isinstance(p, Mapping)
    )
