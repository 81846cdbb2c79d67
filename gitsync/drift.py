"""Drift checks (``gitsync drift``, and the agent's cron job): compare each environment's live
RayServices with Git **at the revision last applied**, report, and — where the environment
says ``selfHeal: true`` — put Git's version back through a normal, health-gated rollout.

Wires the edges; the comparison itself is :mod:`gitsync.diff.drift`. Each environment is
planned against the cluster as the sync pass plans it (:func:`gitsync.planning.live_sides`:
one list per kind, a server-side dry run only for objects not provably untouched since
gitsync applied them); drift attributes what differs, and a heal plans from the same
sides. Findings and the corrections history live in the environment's state ConfigMap
(``gitsync status`` shows them; the backoff survives restarts).
A field corrected ``limit`` times within ``window`` is a fight with another controller:
gitsync stops correcting it, says so loudly (Warning event, metric, status), keeps reporting.
The window slides: once the oldest of those corrections is older than ``window``, gitsync
corrects the field again, so an endless fight costs at most ``limit`` rollouts per window.
A service whose live object says ``gitsync.ray.io/reconcile: disabled`` is checked and its
drift reported (marked so), never healed: someone took it out of gitsync's hands.

A check on events (:class:`DriftEvents`) covers only the objects another writer changed: its
findings replace those objects' findings of the last check and keep the others', so the
status page, the gauges and the state ConfigMap still describe the whole environment. It is
a whole check when there is no earlier one at the same revision in this process (started,
leading again, a pass ran since).
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from gitsync.checkout import TreeReport, document_at, read_tree_cached
from gitsync.config import AgentConfig
from gitsync.diff.drift import (
    Drift,
    DriftKind,
    corrections_left,
    field_lines,
    heal_cost,
    modified,
    placed,
)
from gitsync.errors import GitsyncError
from gitsync.kube.rayservices import RayServices
from gitsync.kube.state import DriftRecord, StateStore
from gitsync.manifests.load import EnvironmentManifests
from gitsync.manifests.repoconfig import ChangeWindow
from gitsync.model import Action, Outcome, Phase, RolloutResult, ServiceKey
from gitsync.names import RECONCILE
from gitsync.plan import Plan, Wave, fields_json
from gitsync.planning import (
    LiveSides,
    confined,
    environment_manifests,
    live_sides,
    ordered_environments,
    sides_plan,
)
from gitsync.progress import Lines
from gitsync.rollout import Rollout
from gitsync.source.git import GitSource
from gitsync.windows import verdict

log = logging.getLogger(__name__)

DISABLED_NOTE = f"reconcile disabled ({RECONCILE}): not corrected"


@dataclass(frozen=True)
class DriftReport:
    environment: str
    revision: str  # the applied revision compared against ("" when never rolled out)
    drifts: tuple[Drift, ...] = ()
    fighting: tuple[ServiceKey, ...] = ()  # corrections stopped: another controller fights
    healed: RolloutResult | None = None
    note: str = ""  # why nothing was checked
    costs: tuple[str, ...] = ()
    error: str = ""  # the check itself failed (an API error, a rejected dry run)
    disabled: tuple[ServiceKey, ...] = ()  # reconcile disabled: reported, never healed
    held: str = ""  # suspended, or pinned to another revision: reported, never healed
    # The objects checked, when not the whole environment (a check on events): the other
    # drifts are the last check's, carried over.
    scope: frozenset[ServiceKey] | None = None

    @property
    def drifted(self) -> bool:
        return bool(self.drifts)


@dataclass
class DriftChecker:
    config: AgentConfig
    services: RayServices
    state: StateStore
    source: GitSource
    progress: Callable[[str], None] = lambda line: None
    record: Callable[[ServiceKey, str, str, str], None] = lambda key, kind, reason, text: None
    on_drift: Callable[[str, int], None] = lambda environment, count: None
    on_error: Callable[[str], None] = lambda environment: None
    clock: Callable[[], float] = time.time
    _seen: dict[str, set[tuple[ServiceKey, str]]] = field(default_factory=dict)
    _fights: dict[str, set[ServiceKey]] = field(default_factory=dict)
    # Each environment's change windows as the branch head declares them (the windows that
    # hold its rollouts back hold its self-heal back too).
    _windows: dict[str, tuple[ChangeWindow, ...]] = field(default_factory=dict)
    # Each environment's last report, what a check of some objects only is merged with.
    _last: dict[str, DriftReport] = field(default_factory=dict)

    @property
    def limit(self) -> int:
        """Corrections of a field within ``window`` that make a fight (drift.correctionLimit)."""
        return self.config.drift.limit

    @property
    def window(self) -> float:
        """Seconds the corrections are counted over (drift.correctionWindow)."""
        return self.config.drift.window

    def check(
        self,
        environments: Sequence[str] | None = None,
        *,
        heal: bool,
        changed: Mapping[str, Collection[ServiceKey]] | None = None,
        head: str | None = None,
    ) -> list[DriftReport]:
        """Checks ``environments`` (default: all), each whole, or only the objects
        ``changed`` names for it (merged with the last check's findings for the others).
        ``head``: the branch head when the caller knows it (else one ``git ls-remote``);
        its gitsync.yaml orders the environments and says their change windows."""
        head = head or self.source.head()
        tree = self._tree(head, ())  # the head's gitsync.yaml: order and change windows
        declared = tree.config
        self._windows = {e.name: e.windows for e in declared.environments} if declared else {}
        names = ordered_environments(tree, environments or self.config.environments or None, "")
        return [self._guarded(name, heal=heal, keys=(changed or {}).get(name)) for name in names]

    def forget(self) -> None:
        """Forgets the last reports: something else (a pass) may have changed the objects,
        so the next check of each environment is a whole one."""
        self._last.clear()

    def settle(self, plan: Plan) -> None:
        """A pass planned ``plan`` and found every object of its environment exactly as Git
        wants it at ``plan.to_rev`` (nothing to create, change or prune, none with
        reconciling disabled): what a whole check would find there is no drift, so the next
        check on events of some of its objects checks those alone. A plan that changes
        anything settles nothing (the next check is whole)."""
        if not plan.to_rev or any(c.action is not Action.UNCHANGED for c in plan.changes):
            return
        self._last[plan.environment] = DriftReport(plan.environment, plan.to_rev)
        self._seen[plan.environment] = set()  # drifted again, a finding is new
        self._fights[plan.environment] = set()

    def _tree(self, revision: str, environments: Collection[str]) -> TreeReport:
        """A revision's tree with the manifests of ``environments`` only, its namespaces held
        to the agent config's allowedNamespaces (self-heal applies what it reads)."""
        report = read_tree_cached(self.source.checkout(revision), environments=environments)
        return confined(report, self.config.namespaces_for)

    def _guarded(
        self, name: str, *, heal: bool, keys: Collection[ServiceKey] | None = None
    ) -> DriftReport:
        """One environment's check; its failure is its report, so one environment whose dry
        run is rejected (or whose namespace is unreachable) never hides the others' drift."""
        try:
            report = self.environment(name, heal=heal, keys=keys)
        except GitsyncError as exc:
            self._last.pop(name, None)
            log.warning("drift check of %s failed: %s", name, exc)
            self.progress(f"{name}: drift check failed: {exc}")
            self.on_error(name)
            return DriftReport(name, "", error=str(exc))
        if report.note:
            self._last.pop(name, None)
        else:
            self._last[name] = report
        return report

    def environment(
        self, name: str, *, heal: bool, keys: Collection[ServiceKey] | None = None
    ) -> DriftReport:
        """One environment's check: whole, or of ``keys`` only when the last check of it, at
        the same revision, says what the others' drift is."""
        prior = self.state.read(name)
        if prior is None or not prior.revision:
            return DriftReport(name, "", note="never rolled out")
        if prior.phase is Phase.IN_PROGRESS:
            return DriftReport(name, prior.revision, note="a rollout is in progress")
        revision = prior.revision if prior.phase is Phase.SUCCEEDED else prior.last_healthy_revision
        if not revision:
            return DriftReport(name, prior.revision, note="no revision was ever Healthy")
        loaded = environment_manifests(self._tree(revision, (name,)), name, revision[:12])
        base = self._last.get(name) if keys is not None else None
        if base is not None and (base.revision != revision or base.error or base.note):
            base = None
        scope = frozenset(keys or ()) if base is not None else None
        if scope is not None:
            names = ", ".join(str(key) for key in sorted(scope))
            self.progress(f"{name}: drift check of {names} only (the others as last found)")
        concurrency = self.config.rollout.concurrency
        sides = _listed(live_sides(loaded, self.services, revision, concurrency, keys=scope))
        drifts, disabled = self._find(loaded, revision, sides, scope), set(sides.disabled)
        if base is not None and scope is not None:  # the others as the last check left them
            drifts = [d for d in still_drifted(base) if d.key not in scope] + drifts
            disabled |= {key for key in base.disabled if key not in scope}
        history = self.state.read_drift(name).corrections
        now = self.clock()  # forget what left the window: the ConfigMap stays small
        corrections = {f: ts for f, ts in history.items() if any(now - t < self.window for t in ts)}
        fighting = self._fighting(drifts, corrections)
        self._report(name, drifts, fighting, disabled, scope)
        healed = None
        env = loaded.environment
        healable = [  # only what this check planned: the others have no sides here
            d
            for d in drifts
            if d.key not in fighting and d.key not in disabled and (scope is None or d.key in scope)
        ]
        held = self._held(name, revision, now)
        if heal and env.self_heal and healable and not held:
            healed = self._heal(loaded, revision, healable, corrections, sides)
            self._forget_healed(name, healed, healable)
        report = DriftReport(
            name, revision, tuple(drifts), tuple(sorted(fighting)), healed,
            costs=tuple(heal_cost([d for d in drifts if d.key not in disabled])),
            disabled=tuple(sorted(disabled)), held=held, scope=scope,
        )  # fmt: skip
        checked = datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        # a healed service is not DRIFTED
        findings = _findings(still_drifted(report), fighting, disabled)
        self.state.write_drift(name, DriftRecord(findings, corrections, checked, revision))
        return report

    def _held(self, name: str, revision: str, now: float) -> str:
        """Why self-heal must not touch the environment now ("" when it may): suspended,
        pinned to another revision than ``revision``, or outside its change windows (no
        ``gitsync open-window`` override open)."""
        hold = self.state.hold(name)
        if hold.suspended or (hold.pinned and hold.pinned != revision):
            return hold.describe()
        windows = self._windows.get(name, ())
        if not windows:
            return ""
        at = datetime.datetime.fromtimestamp(now, datetime.UTC)
        try:
            until = datetime.datetime.fromisoformat(hold.window_open_until.replace("Z", "+00:00"))
        except ValueError:
            until = None
        if until is not None and until.tzinfo is not None and at < until:
            return ""
        found = verdict(windows, at)
        return "" if found.open else f"outside its change window ({found.why})"

    # -- finding ------------------------------------------------------------------------------

    def _find(
        self,
        loaded: EnvironmentManifests,
        revision: str,
        sides: LiveSides,
        scope: frozenset[ServiceKey] | None = None,
    ) -> list[Drift]:
        """The drifts of the planned ``sides`` (of ``scope`` only, when given): each desired
        service missing from the list, each listed one Git does not declare, and each whose
        dry-run answer differs from the live object, with who changed which field."""
        drifts: list[Drift] = []
        desired = loaded.desired  # a property: built at each call
        for key, declared in desired.items():
            if scope is not None and key not in scope:
                continue
            obj = sides.live.get(key)
            found = None
            if obj is None:
                found = Drift(key, DriftKind.DELETED, revision)
            elif sides.desired[key] != sides.current[key]:
                found = modified(
                    key, sides.current[key], sides.desired[key], obj, revision,
                    self.config.classify,
                )  # fmt: skip
            if found is not None:
                patched = getattr(declared, "patched", {})  # a rendered RayService's patches
                lines = self._field_lines(revision, declared.source, declared.line, found)
                drifts.append(
                    placed(found, declared.source, declared.line, patched, declared.manifest, lines)
                )
        drifts += [
            Drift(key, DriftKind.UNEXPECTED, revision)
            for key in sorted(sides.live)
            if key not in desired
        ]
        return drifts

    def _field_lines(self, revision: str, source: str, line: int, drift: Drift) -> dict[str, int]:
        """The lines of the drifted service's fields in its file (read again: only a
        drifted service pays for it); none for a deleted one, or a file that is not the
        YAML it was read from (a Helm template)."""
        if drift.kind is not DriftKind.MODIFIED:
            return {}
        doc = document_at(self.source.checkout(revision), source, line)
        return {} if doc is None else field_lines(doc)

    def _fighting(
        self, drifts: Sequence[Drift], corrections: Mapping[str, list[float]]
    ) -> set[ServiceKey]:
        now = self.clock()
        return {
            d.key
            for d in drifts
            for f in _fields(d)
            if corrections_left(corrections.get(f"{d.key} {f}", []), now, self.limit, self.window)
            == 0
        }

    def _forget_healed(
        self, name: str, healed: RolloutResult | None, healable: Sequence[Drift]
    ) -> None:
        """Findings self-heal put back are forgotten: made again, each is a new finding (a
        new Drift Event), as for a check that found it gone in between."""
        if healed is None or healed.outcome is not Outcome.SUCCEEDED:
            return
        put_back = {d.key for d in healable}
        self._seen[name] = {m for m in self._seen.get(name, set()) if m[0] not in put_back}

    def _report(
        self,
        name: str,
        drifts: Sequence[Drift],
        fighting: set[ServiceKey],
        disabled: set[ServiceKey],
        scope: frozenset[ServiceKey] | None = None,
    ) -> None:
        """Logs, records and counts the findings of the objects checked (all, or ``scope``):
        those carried over from the last check were reported by it."""
        seen = self._seen.setdefault(name, set())
        now_seen = {mark for mark in seen if scope is not None and mark[0] not in scope}
        found = [d for d in drifts if scope is None or d.key in scope]
        for drift in found:
            off = f"; {DISABLED_NOTE}" if drift.key in disabled else ""
            mark = (drift.key, drift.message + off)
            now_seen.add(mark)
            self.progress(f"{name}: drift: {drift.message}{off}")
            if mark not in seen:  # an event per new finding, not per check
                self.record(drift.key, "Warning", "Drift", drift.message + off)
            if drift.key in fighting:
                self.progress(
                    f"{name}: {drift.key} keeps drifting after {self.limit} corrections within "
                    f"{self.window:.0f}s: another controller is fighting gitsync; not correcting"
                )
                if drift.key not in self._fights.get(name, set()):
                    self.record(
                        drift.key,
                        "Warning",
                        "DriftFight",
                        f"corrected {self.limit} times within {self.window:.0f}s and changed "
                        "again: gitsync stops correcting it; find the other writer "
                        f"({', '.join(drift.managers) or 'unknown'})",
                    )
        self._seen[name] = now_seen
        self._fights[name] = set(fighting)
        if found:
            self.on_drift(name, len(found))

    # -- healing ------------------------------------------------------------------------------

    def _heal(
        self,
        loaded: EnvironmentManifests,
        revision: str,
        drifts: Sequence[Drift],
        corrections: dict[str, list[float]],
        sides: LiveSides,
    ) -> RolloutResult | None:
        """Re-applies Git's version of the drifted services as a rollout: waves, health gates,
        the same state ConfigMap. Only what the plan really changes is healed and counted as
        a correction: an unexpected service under ``prune: false`` is reported, never
        "corrected" (a rollout that deletes nothing would count towards a fight). None when
        the plan changes nothing."""
        env, by_key = loaded.environment, loaded.desired
        # The plan of the drifted services, from the sides the check compared: no second
        # list or dry run.
        keys = {d.key for d in drifts}
        plan = _only_changes(sides_plan(loaded, sides, self.config.classify, revision, keys))
        changed = {c.key for c in plan.changes}
        if not changed:
            return None
        now = self.clock()
        for drift in drifts:
            if drift.key not in changed:
                continue
            for f in _fields(drift):
                history = corrections.setdefault(f"{drift.key} {f}", [])
                history[:] = [t for t in history if now - t < self.window] + [now]
        self.progress(
            f"{env.name}: healing {', '.join(str(k) for k in sorted(changed))} at {revision[:12]}"
        )
        # Healing takes the fields back from whoever changed them: server-side apply with
        # force, whatever rollout.forceConflicts says for ordinary rollouts.
        settings = replace(self.config.rollout, force_conflicts=True)
        watching = Lines(self.progress, self.record)
        rollout = Rollout(self.services, self.state, settings, observer=watching)
        result = rollout.run(env, plan, by_key, revision)
        if result.outcome is Outcome.SUCCEEDED:
            for key in sorted(changed):
                self.record(
                    key, "Normal", "DriftCorrected", f"Git's version at {revision[:12]} re-applied"
                )
        return result


class DriftEvents:
    """Event-driven drift checks: each object another writer changed (told by the
    watch-backed cache, :meth:`gitsync.kube.cache.CachedRayServices.subscribe`) is checked
    ``debounce`` seconds later, changes meanwhile gathered into one check per environment.
    ``run`` checks the objects it is given (environment → keys) and returns False when it
    cannot now (a pass is running): they are tried again ``retry`` seconds later, with what
    changed meanwhile. The scheduled check stays the safety net."""

    def __init__(
        self,
        run: Callable[[dict[str, set[ServiceKey]]], bool],
        debounce: float,
        retry: float = 0.5,
    ) -> None:
        self.run, self.debounce, self.retry = run, debounce, retry
        self.pending: dict[str, set[ServiceKey]] = {}
        self.checks = 0  # checks run on events
        self._wake = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="gitsync-drift-events", daemon=True)
        self._thread.start()

    def changed(self, environment: str, key: ServiceKey) -> None:
        with self._wake:
            self.pending.setdefault(environment, set()).add(key)
            self._wake.notify()

    def close(self, timeout: float = 1.0) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self.pending or self._stopped)
                if self._stopped:
                    return
            time.sleep(self.debounce)  # what else that edit changes joins this check
            with self._wake:
                changes, self.pending = self.pending, {}
            try:
                done = self.run(changes)
            except Exception:  # the safety net still runs; this thread must not die
                log.exception("drift check on events failed")
                done = True
            if done:
                self.checks += 1
                continue
            with self._wake:
                for environment, keys in changes.items():
                    self.pending.setdefault(environment, set()).update(keys)
                self._wake.wait_for(lambda: self._stopped, self.retry)


def still_drifted(report: DriftReport) -> tuple[Drift, ...]:
    """The drifts the check leaves behind: all of them, but those a successful heal put
    right (re-applied or pruned)."""
    healed = report.healed
    if healed is None or healed.outcome is not Outcome.SUCCEEDED:
        return report.drifts
    fixed = {*healed.applied, *healed.pruned}
    return tuple(d for d in report.drifts if d.key not in fixed)


def drifted_by_kind(report: DriftReport) -> dict[str, int]:
    """How many services are drifted now, per kind (every kind, zeros included)."""
    left = still_drifted(report)
    return {str(kind): sum(1 for d in left if d.kind is kind) for kind in DriftKind}


def _listed(sides: LiveSides) -> LiveSides:
    """``sides`` as drift reads them: only what the list found is gitsync's, so a desired
    service there but not labelled as gitsync's is deleted (healing re-creates it)."""
    return replace(
        sides,
        current={k: v for k, v in sides.current.items() if k in sides.live},
        disabled=frozenset(k for k in sides.disabled if k in sides.live),
    )


def _only_changes(plan: Plan) -> Plan:
    """The plan without what it would not change: unchanged services, and orphans (an
    environment that does not prune leaves them running)."""
    idle = (Action.UNCHANGED, Action.ORPHAN)
    waves = tuple(
        Wave(w.number, tuple(c for c in w.changes if c.action not in idle), w.prune)
        for w in plan.waves
    )
    waves = tuple(w for w in waves if w.changes)
    return Plan(plan.environment, plan.namespace, plan.from_rev, plan.to_rev, waves)


def _fields(drift: Drift) -> tuple[str, ...]:
    return drift.fields or (str(drift.kind),)


def _findings(
    drifts: Sequence[Drift], fighting: set[ServiceKey], disabled: set[ServiceKey]
) -> list[dict[str, Any]]:
    return [
        {
            "service": str(d.key),
            "kind": str(d.kind),
            "fields": list(d.fields),
            "managers": list(d.managers),
            "heal": str(d.heal.action) if d.heal else "",
            "fighting": d.key in fighting,
            "disabled": d.key in disabled,
            "message": d.message,
        }
        for d in drifts
    ]


def report_lines(report: DriftReport) -> list[str]:
    if report.error:
        return [f"{report.environment}: check failed: {report.error}"]
    if report.note:
        return [f"{report.environment}: not checked: {report.note}"]
    if not report.drifts:
        return [f"{report.environment}: no drift from {report.revision[:12]}"]
    lines = [f"{report.environment}: {len(report.drifts)} drifted from {report.revision[:12]}"]
    for drift in report.drifts:
        flag = " [FIGHTING: not corrected]" if drift.key in report.fighting else ""
        if drift.key in report.disabled:
            flag = " [RECONCILE DISABLED: not corrected]"
        lines.append(f"  {drift.kind:<10} {drift.message}{flag}")
        lines += [f"             {path}: set in {where}" for path, where in drift.patched]
        if drift.heal is not None:
            lines += [f"             {detail}" for detail in drift.heal.details[:6]]
    lines += [f"  cost: {line}" for line in report.costs]
    if report.held:
        lines.append(f"  not corrected: {report.environment} is {report.held}")
    if report.healed is not None:
        lines.append(f"  healed: {report.healed.outcome}: {report.healed.message}")
    return lines


def drift_json(report: DriftReport) -> dict[str, Any]:
    return {
        "environment": report.environment,
        "revision": report.revision,
        "note": report.note,
        "error": report.error,
        "drifted": [
            {
                "service": str(d.key),
                "kind": str(d.kind),
                # Where Git declares it ("file:line"; a rendered service's origin file).
                "source": d.source or None,
                # As plan's: {path, old, new}; old is Git's value (as applied), new the live
                # one (null: absent on that side); source: where Git sets it (the patch that
                # set it, else its line in the service's file).
                "fields": [
                    {**fields_json(f), "source": d.source_of(f.path) or None} for f in d.changes
                ],
                "managers": list(d.managers),
                # What healing changes, field by field: old is the live value, new Git's.
                "heal": {
                    "action": str(d.heal.action),
                    "details": list(d.heal.details),
                    "fields": [fields_json(f) for f in d.heal.fields],
                }
                if d.heal
                else None,
                "fighting": d.key in report.fighting,
                "disabled": d.key in report.disabled,
                "message": d.message,
            }
            for d in report.drifts
        ],
        "disabled": [str(key) for key in report.disabled],
        "held": report.held or None,
        "costs": list(report.costs),
        "healed": {"outcome": str(report.healed.outcome), "message": report.healed.message}
        if report.healed
        else None,
    }
