"""What the leader records for the status page: per environment, the rollout in flight or
the last one (its plan's changes, a timeline of steps, the outcome), the earlier rollouts, the
last revision that rolled out Healthy, each service's last action, the last drift check; the
last previews.

Bounded: one record per environment (only changed services' changes; at most ``MAX_STEPS``
steps), ``stored.MAX_HISTORY`` earlier rollouts, one action per service, commit metadata for
at most ``MAX_COMMITS`` revisions. Written by the agent's jobs under one lock. Each change is
handed to ``sink`` (the agent writes it into the environment's state ConfigMap,
:mod:`gitsync.web.stored`), only when what it would write differs from what it last wrote:
a pass that changes nothing writes nothing. The first time an environment is touched its
memory is read back through ``seed``, so a new leader continues the history of the last.
The status page reads the cluster, not this (every replica shows the same).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import replace

from gitsync.capacity import Fit, Verdict
from gitsync.drift import DriftReport
from gitsync.errors import GitsyncError
from gitsync.model import (
    Action,
    Change,
    Outcome,
    RolloutResult,
    ServiceKey,
    StepKind,
    WaveEvent,
)
from gitsync.plan import Plan
from gitsync.previews import PreviewResult
from gitsync.web.facts import (
    CommitInfo,
    DriftFacts,
    PastRollout,
    PreviewFacts,
    RolloutRecord,
    Step,
)
from gitsync.web.stored import (
    MAX_HISTORY,
    EnvironmentMemory,
    past,
    previews_to_data,
    to_data,
)

__all__ = ["MAX_COMMITS", "MAX_STEPS", "EnvironmentMemory", "History"]

MAX_STEPS = 200
MAX_COMMITS = 64

# (environment, ConfigMap values) → whether it was written; ("", …) are the previews.
Sink = Callable[[str, dict[str, str]], bool]
# environment → what the cluster keeps of it (None: nothing); raises when it cannot tell.
Seed = Callable[[str], EnvironmentMemory | None]


class History:
    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
        *,
        sink: Sink | None = None,
        seed: Seed | None = None,
    ) -> None:
        self._wall, self._mono = wall, mono
        self._sink, self._seed = sink, seed
        self._seeded: set[str] = set()
        self._written: dict[str, dict[str, str]] = {}
        self._past: dict[str, tuple[PastRollout, ...]] = {}
        self._lock = threading.Lock()
        self._namespaces: dict[str, str] = {}
        self._records: dict[str, RolloutRecord] = {}
        self._applied: dict[str, CommitInfo] = {}
        self._actions: dict[str, dict[ServiceKey, tuple[Action, float]]] = {}
        self._drift: dict[str, DriftFacts] = {}
        self._previews: tuple[PreviewFacts, ...] = ()
        self._commits: OrderedDict[str, CommitInfo] = OrderedDict()
        self._up_to_date: set[str] = set()  # environments whose pass in flight changes nothing

    def _step(
        self,
        kind: StepKind | Outcome,
        index: int = 0,
        total: int = 0,
        services: tuple[tuple[ServiceKey, Action], ...] = (),
        message: str = "",
    ) -> Step:
        return Step(kind, self._wall(), self._mono(), index, total, services, message)

    # -- written by the agent ------------------------------------------------------------------

    def environment(self, name: str, namespace: str) -> None:
        self._ensure(name)
        with self._lock:
            self._namespaces[name] = namespace
        self._flush(name)

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
        changes = tuple(
            _with_capacity(c, plan.capacity.get(c.key))
            for c in plan.changes
            if c.action is not Action.UNCHANGED
        )
        self._ensure(plan.environment)
        with self._lock:
            self._namespaces[plan.environment] = plan.namespace
            last = self._records.get(plan.environment)
            # Orphans alone are no rollout either: nothing is done to them.
            if not plan.has_changes and last is not None and last.outcome is Outcome.SUCCEEDED:
                self._up_to_date.add(plan.environment)
                return  # nothing to write: the page shows the same
            self._up_to_date.discard(plan.environment)
            self._records[plan.environment] = RolloutRecord(
                plan.environment,
                plan.namespace,
                revision,
                self._commits.get(revision),
                changes,
                (self._step(StepKind.STARTED),),
            )
        self._flush(plan.environment)

    def event(self, environment: str, event: WaveEvent) -> None:
        step = self._step(
            event.kind,
            index=event.index,
            total=event.total,
            services=event.actions,
            message=event.detail,
        )
        with self._lock:
            record = self._records.get(environment)
            if record is None or record.outcome is not None or len(record.steps) >= MAX_STEPS:
                return
            self._records[environment] = replace(record, steps=(*record.steps, step))
            if event.kind is StepKind.APPLYING:
                actions = self._actions.setdefault(environment, {})
                for key, action in event.actions:
                    actions[key] = (action, step.wall)
        self._flush(environment)

    def finished(self, result: RolloutResult) -> None:
        step = self._step(result.outcome, message=result.message)
        self._ensure(result.environment)
        with self._lock:
            if result.environment in self._up_to_date and result.outcome is Outcome.SUCCEEDED:
                self._up_to_date.discard(result.environment)
                info = self._commits.get(result.revision) or CommitInfo(result.revision)
                self._applied[result.environment] = info
            else:
                self._finish(result, step)
        self._flush(result.environment)

    def _finish(self, result: RolloutResult, step: Step) -> None:
        """(Under the lock.)"""
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
        done = replace(
            record,
            steps=(*record.steps, step),
            outcome=result.outcome,
            message=result.message,
            failed=result.failed,
        )
        self._records[result.environment] = done
        earlier = self._past.get(result.environment, ())
        self._past[result.environment] = (past(done), *earlier)[:MAX_HISTORY]
        if result.outcome is Outcome.SUCCEEDED:
            info = self._commits.get(result.revision) or CommitInfo(result.revision)
            self._applied[result.environment] = info

    def drift(self, report: DriftReport) -> None:
        facts = DriftFacts(
            self._wall(),
            tuple((d.key, d.message) for d in report.drifts),
            report.fighting,
            f"check failed: {report.error}" if report.error else report.note,
        )
        self._ensure(report.environment)
        with self._lock:
            self._drift[report.environment] = facts
        self._flush(report.environment)

    def previews(self, results: Sequence[PreviewResult]) -> None:
        facts = tuple(
            PreviewFacts(r.number, r.revision, r.services, r.outcome, r.message)
            for r in results
            if r.outcome != "deleted"
        )
        with self._lock:
            self._previews = facts
            data = previews_to_data(facts)
            if self._sink is None or self._written.get("") == data:
                return
        if self._sink("", data):
            with self._lock:
                self._written[""] = data

    # -- kept in the cluster -------------------------------------------------------------------

    def _ensure(self, name: str) -> None:
        """Reads back what the cluster keeps of ``name`` the first time it is touched."""
        if self._seed is None or name in self._seeded:
            return
        try:
            found = self._seed(name)
        except GitsyncError:  # the seed logs it; tried again at the next touch
            return
        with self._lock:
            if name in self._seeded:
                return
            self._seeded.add(name)
            if found is None:
                return
            self._namespaces.setdefault(name, found.namespace)
            if found.record is not None:
                self._records.setdefault(name, found.record)
            if found.applied is not None:
                self._applied.setdefault(name, found.applied)
            self._actions.setdefault(name, dict(found.actions))
            if found.drift is not None:
                self._drift.setdefault(name, found.drift)
            self._past.setdefault(name, found.history)
            self._written[name] = to_data(found)

    def _flush(self, name: str) -> None:
        """Hands ``name``'s memory to the sink if it changed since it was last written (and
        was read back first: an unseeded write would drop the history)."""
        if self._sink is None or (self._seed is not None and name not in self._seeded):
            return
        with self._lock:
            memory = self._memory(name)
            if memory is None:
                return
            data = to_data(memory)
            if self._written.get(name) == data:
                return
        if self._sink(name, data):
            with self._lock:
                self._written[name] = data

    def _memory(self, name: str) -> EnvironmentMemory | None:
        """(Under the lock.)"""
        namespace = self._namespaces.get(name)
        if namespace is None:
            return None
        return EnvironmentMemory(
            name,
            namespace,
            self._records.get(name),
            self._applied.get(name),
            dict(self._actions.get(name, {})),
            self._drift.get(name),
            self._past.get(name, ()),
            list(self._namespaces).index(name),
        )

    # -- read by the status page ---------------------------------------------------------------

    def environments(self) -> list[EnvironmentMemory]:
        with self._lock:
            found = (self._memory(name) for name in self._namespaces)
            return [memory for memory in found if memory is not None]

    def preview_facts(self) -> tuple[PreviewFacts, ...]:
        with self._lock:
            return self._previews


def _with_capacity(change: Change, verdict: Verdict | None) -> Change:
    """The change with its capacity verdict (docs/capacity.md) as one more line: a detail when
    it fits, a warning when it does not or cannot be known."""
    if verdict is None:
        return change
    line = f"capacity: {verdict.summary}"
    if verdict.fit is Fit.FITS:
        return replace(change, details=(*change.details, line))
    return replace(change, warnings=(*change.warnings, line))
