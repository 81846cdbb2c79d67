"""The pure decisions of an environment's rollout: where it starts (up to date, fresh, or
resumed at a wave), which waves have work and what each applies and gates, the order of the
prunes, and what an older revision's commit status should still say. Pure: the state
ConfigMap and the forge are read by the callers (:mod:`gitsync.rollout`, :mod:`gitsync.sync`).

Also who watches a pass: the :class:`Observer` protocol that :func:`gitsync.sync.sync_once`
and :class:`gitsync.rollout.Rollout` report to, with :class:`Quiet` (every method a no-op)
to subclass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

from gitsync.model import (
    Action,
    Change,
    Desired,
    Phase,
    RolloutResult,
    RolloutState,
    ServiceKey,
    WaveEvent,
)
from gitsync.plan import Plan, Wave
from gitsync.report.status import CommitStatus, State

Fields = Mapping[str, str | int]
"""What a progress line is about, from its call site: ``environment``, ``service``
(``namespace/name``), ``revision`` (the full SHA), ``wave``, ``action``; the keys of
``--log-format json``."""
NO_FIELDS: Fields = MappingProxyType({})


def about(
    environment: str,
    service: ServiceKey | None = None,
    revision: str = "",
    *,
    wave: int | None = None,
    action: Action | str | None = None,
) -> Fields:
    """A progress line's fields: those given."""
    fields: dict[str, str | int] = {"environment": environment}
    if service is not None:
        fields["service"] = str(service)
    if revision:
        fields["revision"] = revision
    if wave is not None:
        fields["wave"] = wave
    if action is not None:
        fields["action"] = str(action)
    return fields


class Observer(Protocol):
    """Who watches a pass, in the order a pass calls it for one environment: ``planned``,
    ``started`` (the rollout begins), ``wave`` events, ``finished``; ``line`` (a progress line
    for people, with the :data:`Fields` it is about) and ``recorded`` (a Kubernetes Event on
    one object: ``Normal`` or ``Warning``, a reason, a message) at any time. Called on the
    pass's thread: it must not block."""

    def line(self, text: str, fields: Fields = NO_FIELDS) -> None: ...

    def planned(self, plan: Plan) -> None: ...

    def started(self, environment: str) -> None: ...

    def wave(self, environment: str, event: WaveEvent) -> None: ...

    def recorded(self, key: ServiceKey, kind: str, reason: str, message: str) -> None: ...

    def finished(self, result: RolloutResult) -> None: ...


class Quiet:
    """An :class:`Observer` that ignores everything: subclass it to watch only some of it."""

    def line(self, text: str, fields: Fields = NO_FIELDS) -> None:
        pass

    def planned(self, plan: Plan) -> None:
        pass

    def started(self, environment: str) -> None:
        pass

    def wave(self, environment: str, event: WaveEvent) -> None:
        pass

    def recorded(self, key: ServiceKey, kind: str, reason: str, message: str) -> None:
        pass

    def finished(self, result: RolloutResult) -> None:
        pass


class Lines(Quiet):
    """An :class:`Observer` of the progress lines (to ``write``) and, given ``record``, of the
    Kubernetes Events."""

    def __init__(
        self,
        write: Callable[[str], None],
        record: Callable[[ServiceKey, str, str, str], None] | None = None,
    ) -> None:
        self.write, self.record = write, record

    def line(self, text: str, fields: Fields = NO_FIELDS) -> None:
        self.write(text)

    def recorded(self, key: ServiceKey, kind: str, reason: str, message: str) -> None:
        if self.record is not None:
            self.record(key, kind, reason, message)


@dataclass(frozen=True)
class Start:
    """Where a rollout of ``revision`` starts, from the environment's state ConfigMap."""

    up_to_date: bool  # succeeded at this revision and nothing changes: nothing to do
    resumed: RolloutState | None  # the same revision's rollout, left in progress
    # After a rollout that did not succeed, nothing vouches for the services' health: every
    # service of every wave is gated, not only the changed ones.
    unfinished: bool
    last_healthy: str  # the revision a failed service rolls back to

    def record(
        self, env: str, namespace: str, revision: str, now: str, kinds: tuple[str, ...]
    ) -> RolloutState:
        """The state written before anything is applied: in progress, at the wave it resumes
        (kept until the next wave is written)."""
        resumed = self.resumed
        return RolloutState(
            env,
            revision,
            Phase.IN_PROGRESS,
            resumed.wave if resumed else None,
            resumed.started if resumed else now,
            "",
            "",
            self.last_healthy,
            namespace,
            kinds,
        )


def start(prior: RolloutState | None, revision: str, plan: Plan) -> Start:
    """Where a rollout of ``revision`` with ``plan`` starts after ``prior``.

    A service applied by a rollout that did not succeed (killed mid-way, superseded, failed)
    is ``unchanged`` in the plan now (its spec is already Git's), yet may still be starting,
    or Degraded. Gating only what changes would apply the next wave before it, or call a
    failed revision succeeded when it is run again (a restarted agent): so ``unfinished``."""
    succeeded = prior is not None and prior.phase is Phase.SUCCEEDED
    same = prior is not None and prior.revision == revision
    return Start(
        up_to_date=succeeded and same and not plan.has_changes,
        resumed=prior if same and prior is not None and prior.phase is Phase.IN_PROGRESS else None,
        unfinished=prior is not None and not succeeded,
        last_healthy=prior.last_healthy_revision if prior else "",
    )


@dataclass(frozen=True)
class WaveWork:
    """One wave with work: the services it applies and those it gates on (a superset)."""

    wave: Wave
    changed: tuple[ServiceKey, ...]
    gate: tuple[ServiceKey, ...]


def work(plan: Plan, *, unfinished: bool) -> list[WaveWork]:
    """The waves with work, each with the services to apply and those to gate. Skipped
    services are neither: a later wave does not wait on a service someone took out of
    gitsync's hands."""
    found = []
    for wave in plan.waves:
        if wave.prune:
            continue
        changed = tuple(
            c.key for c in wave.changes if c.action not in (Action.UNCHANGED, Action.SKIPPED)
        )
        gated = [c.key for c in wave.changes if unfinished and c.action is not Action.SKIPPED]
        gate = tuple(sorted({*changed, *gated}))
        if gate:
            found.append(WaveWork(wave, changed, gate))
    return found


def prunes(plan: Plan) -> list[Change]:
    """The prunes in the order they are done: later waves first, and in a wave the
    RayServices before the other kinds they may use."""
    found = [c for w in plan.waves if w.prune for c in w.changes if c.action is Action.PRUNE]
    return sorted(found, key=lambda c: (-c.wave, not c.key.is_rayservice, c.key))


def succeeded_message(applied: int, pruned: int, skipped: int) -> str:
    if not skipped:
        return f"{applied} applied, {pruned} pruned, every service Healthy"
    return (
        f"{applied} applied, {pruned} pruned, {skipped} skipped (reconcile disabled), "
        "every other service Healthy"
    )


def kinds(desired: Mapping[ServiceKey, Desired], plan: Plan) -> tuple[str, ...]:
    """The other kinds the environment has objects of, Git's and those the plan prunes or
    leaves running, as ``apiVersion/Kind``: what ``gitsync status`` lists beside RayServices."""
    keys = [*desired, *(c.key for c in plan.changes)]
    return tuple(sorted({f"{k.api_version}/{k.kind}" for k in keys if not k.is_rayservice}))


# -- older revisions' commit statuses --------------------------------------------------------


def left_behind(prior: RolloutState | None, revision: str) -> str | None:
    """The older revision whose rollout of this environment never finished — the agent was
    stopped or killed mid-way and a newer commit arrived meanwhile — so its commit status
    still says pending; it is superseded by ``revision``. None when there is none."""
    if prior is None or prior.revision == revision or not prior.revision:
        return None
    return prior.revision if prior.phase in (Phase.IN_PROGRESS, Phase.SUPERSEDED) else None


FINAL = {Phase.SUCCEEDED: State.SUCCESS, Phase.FAILED: State.FAILURE,
         Phase.ROLLED_BACK: State.FAILURE}  # fmt: skip


def lost_final_status(
    prior: RolloutState | None, revision: str, seen: CommitStatus | None
) -> tuple[State, str] | None:
    """The final status an older revision's finished rollout should show and does not:
    statuses are posted off the pass's thread, after the state says how the rollout ended, so
    an agent killed in between loses them. The restarted agent posts it again when it did
    not come back to that revision (a newer commit arrived meanwhile); when it did, that
    pass posts it. ``seen``: what the forge shows for the environment on that revision."""
    if prior is None or not prior.revision or prior.revision == revision:
        return None
    final = FINAL.get(prior.phase)
    if final is None or (seen is not None and seen.state is not State.PENDING):
        return None
    return final, prior.message or str(prior.phase)
