"""The agent's short memory for the status page: per environment, the rollout in flight or
the last one (its plan's changes, a timeline of steps, the outcome), the last revision that
rolled out Healthy, each service's last action, the last drift check; the last previews.

Bounded: one record per environment (only changed services' changes; at most ``MAX_STEPS``
steps), one action per service, commit metadata for at most ``MAX_COMMITS`` revisions.
Written by the agent's jobs, read by HTTP threads: every access holds one lock, and readers
get immutable values. Nothing here is persisted: after a restart the state ConfigMap
(read by :mod:`gitsync.web.site`) says where each environment stands.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from gitsync.drift import DriftReport
from gitsync.model import Action, ServiceKey
from gitsync.plan import Plan
from gitsync.previews import PreviewResult
from gitsync.rollout import RolloutResult, WaveEvent
from gitsync.web.facts import CommitInfo, DriftFacts, PreviewFacts, RolloutRecord, Step

MAX_STEPS = 200
MAX_COMMITS = 64


@dataclass(frozen=True)
class EnvironmentMemory:
    name: str
    namespace: str
    record: RolloutRecord | None
    applied: CommitInfo | None
    actions: dict[ServiceKey, tuple[str, float]]
    drift: DriftFacts | None


class History:
    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self._wall, self._mono = wall, mono
        self._lock = threading.Lock()
        self._namespaces: dict[str, str] = {}
        self._records: dict[str, RolloutRecord] = {}
        self._applied: dict[str, CommitInfo] = {}
        self._actions: dict[str, dict[ServiceKey, tuple[str, float]]] = {}
        self._drift: dict[str, DriftFacts] = {}
        self._previews: tuple[PreviewFacts, ...] = ()
        self._commits: OrderedDict[str, CommitInfo] = OrderedDict()
        self._up_to_date: set[str] = set()  # environments whose pass in flight changes nothing

    def _step(
        self,
        kind: str,
        index: int = 0,
        total: int = 0,
        services: tuple[tuple[str, str], ...] = (),
        message: str = "",
    ) -> Step:
        return Step(kind, self._wall(), self._mono(), index, total, services, message)

    # -- written by the agent ------------------------------------------------------------------

    def environment(self, name: str, namespace: str) -> None:
        with self._lock:
            self._namespaces[name] = namespace

    def commit(self, info: CommitInfo) -> None:
        with self._lock:
            self._commits[info.sha] = info
            self._commits.move_to_end(info.sha)
            while len(self._commits) > MAX_COMMITS:
                self._commits.popitem(last=False)

    def planned(self, plan: Plan, revision: str) -> None:
        """A rollout starts: its plan (only what changes is kept). A plan without changes
        after a rollout that succeeded (a pass for another environment's commit, a retry)
        keeps that rollout on the page: the last rollout is the last one that did something."""
        changes = tuple(c for c in plan.changes if c.action is not Action.UNCHANGED)
        with self._lock:
            self._namespaces[plan.environment] = plan.namespace
            last = self._records.get(plan.environment)
            # Orphans alone are no rollout either: nothing is done to them.
            if not plan.has_changes and last is not None and last.outcome == "succeeded":
                self._up_to_date.add(plan.environment)
                return
            self._up_to_date.discard(plan.environment)
            self._records[plan.environment] = RolloutRecord(
                plan.environment,
                plan.namespace,
                revision,
                self._commits.get(revision),
                changes,
                (self._step("started"),),
            )

    def event(self, environment: str, event: WaveEvent) -> None:
        services = tuple((str(key), str(action)) for key, action in event.actions)
        step = self._step(event.kind, index=event.index, total=event.total, services=services)
        with self._lock:
            record = self._records.get(environment)
            if record is None or record.outcome is not None or len(record.steps) >= MAX_STEPS:
                return
            self._records[environment] = replace(record, steps=(*record.steps, step))
            if event.kind == "applying":
                actions = self._actions.setdefault(environment, {})
                for key, action in event.actions:
                    actions[key] = (str(action), step.wall)

    def finished(self, result: RolloutResult) -> None:
        failed = str(result.failed) if result.failed is not None else ""
        step = self._step(str(result.outcome), message=result.message)
        with self._lock:
            if result.environment in self._up_to_date and str(result.outcome) == "succeeded":
                self._up_to_date.discard(result.environment)
                info = self._commits.get(result.revision) or CommitInfo(result.revision)
                self._applied[result.environment] = info
                return
            self._up_to_date.discard(result.environment)
            record = self._records.get(result.environment)
            if record is None or record.outcome is not None or record.revision != result.revision:
                # A rollout this agent did not see start (a drift heal, a promotion gate).
                namespace = self._namespaces.get(result.environment, "")
                record = RolloutRecord(
                    result.environment,
                    namespace,
                    result.revision,
                    self._commits.get(result.revision),
                )
            self._records[result.environment] = replace(
                record,
                steps=(*record.steps, step),
                outcome=str(result.outcome),
                message=result.message,
                failed=failed,
            )
            if str(result.outcome) == "succeeded":
                info = self._commits.get(result.revision) or CommitInfo(result.revision)
                self._applied[result.environment] = info

    def drift(self, report: DriftReport) -> None:
        facts = DriftFacts(
            self._wall(),
            tuple((str(d.key), d.message) for d in report.drifts),
            tuple(str(k) for k in report.fighting),
            f"check failed: {report.error}" if report.error else report.note,
        )
        with self._lock:
            self._drift[report.environment] = facts

    def previews(self, results: Sequence[PreviewResult]) -> None:
        facts = tuple(
            PreviewFacts(r.number, r.revision, r.services, r.outcome, r.message)
            for r in results
            if r.outcome != "deleted"
        )
        with self._lock:
            self._previews = facts

    # -- read by the status page ---------------------------------------------------------------

    def environments(self) -> list[EnvironmentMemory]:
        with self._lock:
            return [
                EnvironmentMemory(
                    name,
                    namespace,
                    self._records.get(name),
                    self._applied.get(name),
                    dict(self._actions.get(name, {})),
                    self._drift.get(name),
                )
                for name, namespace in self._namespaces.items()
            ]

    def preview_facts(self) -> tuple[PreviewFacts, ...]:
        with self._lock:
            return self._previews
