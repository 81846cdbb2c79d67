"""Rollout: executes one environment's plan — apply a wave, gate on health, next wave.

Owns the order of writes and the decision to continue, halt, roll back or give way to a newer
revision. Cluster access goes through :class:`~gitsync.kube.rayservices.RayServices` and the
state ConfigMap (:class:`~gitsync.kube.state.StateStore`); everything needed to continue
after a crash is written there before it matters: the revision and wave in flight, and the
revision stamped on every applied object.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from gitsync import kuberay, progress
from gitsync.capacity import check_wave
from gitsync.config import RolloutSettings
from gitsync.errors import ApplyError, GitsyncError
from gitsync.health import Assessment, HealthGate, assess, starting_cluster
from gitsync.kube.capacity import read_cluster
from gitsync.kube.namespaces import ensure_namespace
from gitsync.kube.rayservices import RayServices
from gitsync.kube.state import StateStore
from gitsync.manifests.repoconfig import EnvironmentConfig
from gitsync.model import (
    Action,
    Desired,
    Health,
    Outcome,
    Phase,
    RolloutResult,
    RolloutState,
    ServiceKey,
    StepKind,
    WaveEvent,
)
from gitsync.names import ENVIRONMENT, MANAGED_BY, RECONCILE
from gitsync.object_health import assess_object
from gitsync.plan import Plan
from gitsync.progress import Observer, Quiet, about
from gitsync.stamp import applied_for, reconcile_disabled, stamp_service

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Failure:
    key: ServiceKey | None
    message: str
    superseded: bool = False
    stopped: bool = False  # the agent is stopping: leave the state in progress, to resume


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def expected_apps(service: Desired) -> tuple[str, ...]:
    if not service.key.is_rayservice:
        return ()
    try:
        return tuple(kuberay.serve_application_names(service.manifest["spec"].get("serveConfigV2")))
    except ValueError:
        return ()


@dataclass
class _Tally:
    """What a rollout has done so far."""

    applied: list[ServiceKey] = field(default_factory=list)
    skipped: list[ServiceKey] = field(default_factory=list)  # reconcile disabled


@dataclass
class Rollout:
    services: RayServices
    state: StateStore
    settings: RolloutSettings
    observer: Observer = field(default_factory=Quiet)
    superseded: Callable[[], bool] = field(default=lambda: False)
    stop: threading.Event = field(default_factory=threading.Event)

    # -- the pass --------------------------------------------------------------------------

    def run(
        self,
        env: EnvironmentConfig,
        plan: Plan,
        desired: Mapping[ServiceKey, Desired],
        revision: str,
        previous: Callable[[str], Mapping[ServiceKey, Desired]] | None = None,
    ) -> RolloutResult:
        """Where it starts (:func:`gitsync.progress.start`), each wave with work, the finish."""
        begin = progress.start(self.state.read(env.name), revision, plan)
        if begin.up_to_date:
            self.observer.line(
                f"{env.name}: up to date at {revision[:12]}", about(env.name, None, revision)
            )
            return RolloutResult(
                env.name, revision, Outcome.SUCCEEDED, "up to date", skipped=plan.skipped
            )
        if begin.resumed is not None:
            at = f"{revision[:12]} at wave {begin.resumed.wave}"
            self.observer.line(
                f"{env.name}: resuming the rollout of {at}",
                about(env.name, None, revision, wave=begin.resumed.wave),
            )
        kinds = progress.kinds(desired, plan)
        record = begin.record(env.name, env.namespace, revision, _now(), kinds)
        self.state.write(record)
        if env.create_namespace and ensure_namespace(self.services.api, env.namespace):
            self.observer.line(f"{env.name}: created namespace {env.namespace}", about(env.name))
        tally = _Tally(skipped=list(plan.skipped))
        self._skipped(env, tally.skipped, revision)
        work = progress.work(plan, unfinished=begin.unfinished)
        for index, step in enumerate(work, start=1):
            if self.stop.is_set():
                failure: _Failure | None = _Failure(
                    None, "stopped before the rollout finished", stopped=True
                )
            else:
                record = replace(record, wave=step.wave.number)
                self.state.write(record)
                failure = self._capacity(env, plan, step.changed, index > 1) or self._wave(
                    env, step, (index, len(work)), desired, revision, tally
                )
            if failure is not None:
                return self._fail(env, record, failure, previous, tuple(tally.applied))
        return self._finish(env, plan, record, tally)

    def _wave(
        self,
        env: EnvironmentConfig,
        step: progress.WaveWork,
        position: tuple[int, int],
        desired: Mapping[ServiceKey, Desired],
        revision: str,
        tally: _Tally,
    ) -> _Failure | None:
        """One wave: apply its changes, then wait until every service it gates is Healthy.
        ``position``: the wave's index among the waves with work (1-based), and their count."""
        index, total = position
        # Disabled while earlier waves rolled out (an incident does not wait for gitsync);
        # the first wave's services were read by the plan just now.
        late = self._disabled_now(env, step.changed, desired) if index > 1 else []
        self._skipped(env, late, revision)
        tally.skipped += late
        changed = [k for k in step.changed if k not in late]
        gate = [k for k in step.gate if k not in late]
        if not gate:
            return None
        actions = {c.key: c.action for c in step.wave.changes}
        if changed:
            listed = tuple((key, actions[key]) for key in changed)
            self.observer.wave(env.name, WaveEvent(StepKind.APPLYING, index, total, listed))
        failure = self._refuse_unowned(env, changed) or self._apply(
            env, changed, desired, revision, actions
        )
        if failure is not None:
            return failure
        tally.applied += changed
        waiting = tuple((key, actions.get(key, Action.UNCHANGED)) for key in gate)
        self.observer.wave(env.name, WaveEvent(StepKind.WAITING, index, total, waiting))

        def explained(key: ServiceKey, why: str) -> None:
            event = WaveEvent(StepKind.WAITING, index, total, waiting, f"{key.label}: {why}")
            self.observer.wave(env.name, event)

        return self._wait(env, gate, desired, f"wave {step.wave.number}", explained)

    def _capacity(
        self, env: EnvironmentConfig, plan: Plan, keys: Sequence[ServiceKey], again: bool
    ) -> _Failure | None:
        """The capacity check before a wave applies (docs/capacity.md): each new cluster or
        in-place growth that does not fit is logged; with ``capacityCheck: block`` the wave
        is not applied. ``again`` (a later wave): what it starts is checked against the
        cluster as it is now, which the earlier waves' swaps changed since the plan."""
        pods = {key: plan.demands[key] for key in keys if key in plan.demands}
        if again and pods and plan.capacity_check != "off":
            try:
                fresh = check_wave(pods, read_cluster(self.services.api, env.namespace))
            except GitsyncError as exc:
                self.observer.line(f"{env.name}: capacity not checked again, as planned: {exc}")
            else:
                plan = replace(plan, capacity={**plan.capacity, **fresh})
        for misfit in plan.misfits(keys):
            self.observer.line(f"{env.name}: warning: {misfit}", about(env.name))
        refusal = plan.capacity_refusal(keys)
        return _Failure(None, refusal) if refusal else None

    def _finish(
        self, env: EnvironmentConfig, plan: Plan, record: RolloutState, tally: _Tally
    ) -> RolloutResult:
        """The prunes, then ``succeeded`` and the new last Healthy revision."""
        pruned = self._prune(env, plan)
        if isinstance(pruned, _Failure):
            return self._fail(env, record, pruned, None, tuple(tally.applied))
        message = progress.succeeded_message(len(tally.applied), len(pruned), len(tally.skipped))
        revision = record.revision
        self.state.write(
            replace(
                record,
                phase=Phase.SUCCEEDED,
                wave=None,
                finished=_now(),
                message=message,
                last_healthy_revision=revision,
            )
        )
        self.observer.line(
            f"{env.name}: {revision[:12]} succeeded: {message}", about(env.name, None, revision)
        )
        return RolloutResult(
            env.name, revision, Outcome.SUCCEEDED, message, None, tuple(tally.applied), pruned,
            tuple(sorted(tally.skipped)),
        )  # fmt: skip

    # -- steps -----------------------------------------------------------------------------

    def _body(self, env: EnvironmentConfig, service: Desired, revision: str) -> dict[str, Any]:
        return stamp_service(service, env.name, revision)

    def _skipped(self, env: EnvironmentConfig, keys: Sequence[ServiceKey], revision: str) -> None:
        """Says so once per rollout, so once per revision: a pass that finds the revision up
        to date does not get here."""
        for key in keys:
            self.observer.line(
                f"{env.name}: skipped {key} at {revision[:12]}: reconcile disabled "
                f"({RECONCILE}: disabled)",
                about(env.name, key, revision, action=Action.SKIPPED),
            )
            self.observer.recorded(
                key,
                "Normal",
                "ReconcileDisabled",
                f"gitsync did not apply revision {revision[:12]}: {RECONCILE} is "
                "disabled on this object; remove the annotation to resume",
            )

    def _disabled_now(
        self,
        env: EnvironmentConfig,
        keys: Sequence[ServiceKey],
        desired: Mapping[ServiceKey, Desired],
    ) -> list[ServiceKey]:
        """The services of ``keys`` disabled since the plan was made: one metadata list per
        namespace, just before their wave applies."""
        if not keys:
            return []
        live: dict[ServiceKey, dict[str, Any]] = {}
        for namespace in sorted({k.namespace for k in keys if k.is_rayservice}):
            live |= self.services.list_managed_metadata(namespace, env.name)
        for key in keys:  # another kind: read one by one (a wave holds few of them)
            if not key.is_rayservice and (obj := self.services.get(key)) is not None:
                live[key] = obj
        return [
            key
            for key in keys
            if reconcile_disabled(live.get(key), desired[key].manifest if key in desired else None)
        ]

    def _refuse_unowned(
        self, env: EnvironmentConfig, keys: Sequence[ServiceKey]
    ) -> _Failure | None:
        """A RayService that exists without this environment's ownership labels was made by
        someone else (or another environment): gitsync never modifies it."""
        managed: set[ServiceKey] = set()
        for namespace in sorted({k.namespace for k in keys}):
            managed |= set(self.services.list_managed(namespace, env.name))
        for key in keys:
            if key in managed or (live := self.services.get(key)) is None:
                continue
            if applied_for(live, env.name):
                continue  # another kind (allowedKinds), listed by kind elsewhere: ours
            labels = (live.get("metadata") or {}).get("labels") or {}
            owner = labels.get(ENVIRONMENT)
            whose = f"environment {owner!r}" if owner else "something other than gitsync"
            return _Failure(
                key,
                f"{key} already exists and belongs to {whose}; gitsync does not modify it. To "
                f"hand it over, label it {MANAGED_BY}=gitsync and {ENVIRONMENT}={env.name}",
            )
        return None

    def _apply(
        self,
        env: EnvironmentConfig,
        keys: Sequence[ServiceKey],
        desired: Mapping[ServiceKey, Desired],
        revision: str,
        actions: Mapping[ServiceKey, Action] | None = None,
    ) -> _Failure | None:
        def one(key: ServiceKey) -> _Failure | None:
            try:
                self.services.apply(
                    self._body(env, desired[key], revision), force=self.settings.force_conflicts
                )
            except ApplyError as exc:  # refused; an unreachable API server is not the service's
                return _Failure(key, str(exc))  # failure: it propagates, the pass errors
            kind = actions.get(key) if actions else None
            action = f" ({kind})" if kind else ""
            wave = desired[key].wave
            self.observer.line(
                f"{env.name}: wave {wave}: applied {key}{action} at {revision[:12]}",
                about(env.name, key, revision, wave=wave, action=kind),
            )
            self.observer.recorded(
                key, "Normal", "Applied", f"gitsync applied revision {revision[:12]}{action}"
            )
            return None

        # The other kinds first, as Argo CD orders kinds within a wave: the ConfigMap or
        # Service a RayService uses exists before KubeRay reads it.
        for group in (
            [k for k in keys if not k.is_rayservice],
            [k for k in keys if k.is_rayservice],
        ):
            if not group:
                continue
            with ThreadPoolExecutor(max_workers=self.settings.concurrency) as pool:
                failures = [f for f in pool.map(one, group) if f is not None]
            if failures:
                return failures[0]
        return None

    def _wait(
        self,
        env: EnvironmentConfig,
        keys: Sequence[ServiceKey],
        desired: Mapping[ServiceKey, Desired],
        what: str,
        explained: Callable[[ServiceKey, str], None] | None = None,
    ) -> _Failure | None:
        """Until every key is Healthy for N consecutive reads. Each round lists the
        namespace (one request), then watches it for ``pollInterval`` (every change is a read);
        the next list is the relist fallback. Degraded fails at once; so do the timeout, a
        stop request and a newer revision. While a service waits for a cluster whose pods do
        not run, why is told to ``explained`` (see :class:`_Waiter`)."""
        why = _Why(self._why_pending, explained, max(self.settings.poll_interval, 1.0))
        waiter = _Waiter(env.name, keys, desired, self.settings, self.observer, why)
        deadline = waiter.began + self.settings.health_timeout
        while True:
            versions: dict[str, str] = {}
            live: dict[ServiceKey, dict[str, Any]] = {}
            for namespace in sorted({k.namespace for k in waiter.pending if k.is_rayservice}):
                objects, versions[namespace] = self.services.list_managed_versioned(
                    namespace, env.name
                )
                live.update(objects)
            others = sorted(k for k in waiter.pending if not k.is_rayservice)
            live.update((key, obj) for key in others if (obj := self.services.get(key)))
            for key in sorted(waiter.pending):
                if failure := waiter.read(key, live.get(key)):
                    return failure
            if not waiter.pending:
                return None
            if self.superseded():
                return _Failure(None, "a newer revision arrived while waiting", superseded=True)
            if time.monotonic() > deadline:
                return waiter.timed_out(self.settings.health_timeout, what)
            if len(versions) == 1 and all(k.is_rayservice for k in waiter.pending):
                [(namespace, version)] = versions.items()
                for kind, obj in self.services.watch_managed(
                    namespace, env.name, version, self.settings.poll_interval
                ):
                    key = ServiceKey(namespace, obj["metadata"]["name"])
                    gone = kind == "DELETED"
                    if key in waiter.pending and (
                        failure := waiter.read(key, None if gone else obj)
                    ):
                        return failure
                    if not waiter.pending:
                        return None
                    if self.stop.is_set():
                        break
            watched = len(versions) == 1 and all(k.is_rayservice for k in waiter.pending)
            if self.stop.wait(0 if watched else self.settings.poll_interval):
                return _Failure(None, "stopped before the rollout finished", stopped=True)

    def _why_pending(self, key: ServiceKey, obj: Mapping[str, Any]) -> str | None:
        """Why the cluster ``key`` waits for does not run, as the API server says
        (:func:`gitsync.kube.capacity.pending_reasons`); None when nothing says so or it
        cannot be read: an explanation never fails a rollout."""
        cluster = starting_cluster(obj)
        if cluster is None:
            return None
        try:
            return self.services.pending_reasons(key.namespace, cluster)
        except GitsyncError as exc:
            log.debug("cannot tell why %s's cluster %s is pending: %s", key, cluster, exc)
            return None

    def _prune(self, env: EnvironmentConfig, plan: Plan) -> tuple[ServiceKey, ...] | _Failure:
        for key in plan.orphans:
            said = "is no longer in Git; left running (prune is off)"
            self.observer.line(f"{env.name}: {key} {said}", about(env.name, key))
        prunes = progress.prunes(plan)
        if not prunes:
            return ()
        if not env.prune:  # a plan built for another environment's settings: delete nothing
            return ()
        live = self.services.list_managed(env.namespace, env.name)
        done = []
        for change in prunes:
            if not (change.key in live or self._ours(env, change.key)):
                continue  # only what this agent and environment own
            try:
                self.services.delete(change.key)
            except ApplyError as exc:
                return _Failure(change.key, str(exc))
            self.observer.line(
                f"{env.name}: pruned {change.key}",
                about(env.name, change.key, wave=change.wave, action=Action.PRUNE),
            )
            done.append(change.key)
        return tuple(done)

    def _ours(self, env: EnvironmentConfig, key: ServiceKey) -> bool:
        """Whether an object of another kind exists that gitsync applied for ``env``."""
        if key.is_rayservice or (live := self.services.get(key)) is None:
            return False
        return applied_for(live, env.name)

    def _fail(
        self,
        env: EnvironmentConfig,
        record: RolloutState,
        failure: _Failure,
        previous: Callable[[str], Mapping[ServiceKey, Desired]] | None,
        applied: tuple[ServiceKey, ...],
    ) -> RolloutResult:
        if failure.stopped:
            # The state stays in progress at this wave: whoever runs next resumes it.
            self.observer.line(
                f"{env.name}: {record.revision[:12]} interrupted: {failure.message}",
                about(env.name, failure.key, record.revision),
            )
            return RolloutResult(
                env.name, record.revision, Outcome.INTERRUPTED, failure.message, None, applied
            )
        if failure.superseded:
            self.state.write(
                replace(record, phase=Phase.SUPERSEDED, finished=_now(), message=failure.message)
            )
            self.observer.line(
                f"{env.name}: {record.revision[:12]} superseded: {failure.message}",
                about(env.name, failure.key, record.revision),
            )
            return RolloutResult(
                env.name, record.revision, Outcome.SUPERSEDED, failure.message, None, applied
            )
        message = f"{failure.message}; later waves were not applied"
        outcome, phase = Outcome.FAILED, Phase.FAILED
        if self.settings.rollback == "auto" and failure.key is not None and previous is not None:
            rolled = self._rollback(env, failure.key, record.last_healthy_revision, previous)
            message += f"; {rolled[1]}"
            if rolled[0]:
                outcome, phase = Outcome.ROLLED_BACK, Phase.ROLLED_BACK
        self.state.write(replace(record, phase=phase, finished=_now(), message=message))
        self.observer.line(
            f"{env.name}: {record.revision[:12]} {outcome}: {message}",
            about(env.name, failure.key, record.revision),
        )
        return RolloutResult(env.name, record.revision, outcome, message, failure.key, applied)

    def _rollback(
        self,
        env: EnvironmentConfig,
        key: ServiceKey,
        revision: str,
        previous: Callable[[str], Mapping[ServiceKey, Desired]],
    ) -> tuple[bool, str]:
        if not revision:
            return False, "no earlier Healthy revision to roll back to"
        try:
            old = previous(revision).get(key)
        except GitsyncError as exc:
            return False, f"cannot read {revision[:12]} to roll back: {exc}"
        if old is None:
            return False, f"{key} did not exist at {revision[:12]}; nothing to roll back to"
        self.observer.line(
            f"{env.name}: rolling {key} back to {revision[:12]}",
            about(env.name, key, revision, action="rollback"),
        )
        failure = self._apply(env, [key], {key: old}, revision) or self._wait(
            env, [key], {key: old}, "rollback"
        )
        if failure is not None:
            return False, f"rollback to {revision[:12]} failed too: {failure.message}"
        return True, f"rolled {key} back to {revision[:12]}, which is Healthy again"


@dataclass
class _Why:
    """Why a service's new cluster does not run: ``ask`` (two API reads) at most once per
    ``every`` seconds per service while it is Progressing; each new answer goes to ``tell``
    (the wave's commit status and the status page) besides the progress line and a Warning
    Event that :class:`_Waiter` writes."""

    ask: Callable[[ServiceKey, Mapping[str, Any]], str | None]
    tell: Callable[[ServiceKey, str], None] | None
    every: float
    asked: dict[ServiceKey, float] = field(default_factory=dict)
    said: dict[ServiceKey, str | None] = field(default_factory=dict)

    def explain(self, key: ServiceKey, obj: Mapping[str, Any]) -> tuple[str | None, bool]:
        """The reason to show now, and whether it is new."""
        now = time.monotonic()
        if now - self.asked.get(key, -self.every) < self.every:
            return self.said.get(key), False
        self.asked[key] = now
        reason = self.ask(key, obj)
        new = reason is not None and reason != self.said.get(key)
        self.said[key] = reason
        if new and self.tell is not None and reason is not None:
            self.tell(key, reason)
        return reason, new


class _Waiter:
    """Health gates for the services one wait is about; reports each change of verdict, and
    while a service is Progressing, why its cluster's pods do not run (:class:`_Why`)."""

    def __init__(
        self,
        environment: str,
        keys: Sequence[ServiceKey],
        desired: Mapping[ServiceKey, Desired],
        settings: RolloutSettings,
        observer: Observer,
        why: _Why | None = None,
    ) -> None:
        self.environment, self.desired, self.observer = environment, desired, observer
        self.why = why
        gate = HealthGate(settings.healthy_reads, settings.healthy_seconds)
        # The other kinds have no KubeRay race to outlast: one Healthy read is enough.
        self.gates = {key: gate if key.is_rayservice else HealthGate(1, 0.0) for key in keys}
        # Parsed once: every watch event is a read, and serveConfigV2 can be large.
        self.expected = {key: expected_apps(desired[key]) for key in keys}
        self.last: dict[ServiceKey, Assessment] = {}
        self.pending = set(keys)
        self.began = time.monotonic()

    def read(self, key: ServiceKey, obj: Mapping[str, Any] | None) -> _Failure | None:
        self.gates[key], result = self.gates[key].observe(
            assess(obj, self.expected[key]) if key.is_rayservice else assess_object(obj),
            time.monotonic(),
        )
        if result.health is Health.PROGRESSING and self.why and obj and key.is_rayservice:
            reason, new = self.why.explain(key, obj)
            if new and reason:
                self.observer.recorded(key, "Warning", "ClusterPodsPending", reason)
            if reason:
                result = replace(result, message=f"{result.message}; {reason}")
        if self.last.get(key) != result:
            elapsed = time.monotonic() - self.began
            self.observer.line(
                f"{self.environment}: {key} {result.health}: {result.message} ({elapsed:.0f}s)",
                about(self.environment, key),
            )
            self.last[key] = result
        if result.health in (Health.DEGRADED, Health.MISSING):
            self.observer.recorded(key, "Warning", str(result.health), result.message)
            return _Failure(key, f"{key} is {result.health}: {result.message}")
        if result.health is Health.HEALTHY:
            self.observer.recorded(key, "Normal", "Healthy", result.message)
            self.pending.discard(key)
        return None

    def timed_out(self, seconds: float, what: str) -> _Failure:
        key = sorted(self.pending)[0]
        why = self.last[key].message if key in self.last else "no status"
        return _Failure(key, f"{key} not Healthy after {seconds:.0f}s ({what}): {why}")
