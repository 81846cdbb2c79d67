"""One full pass, ``gitsync sync --once``: source → plan → rollout for every environment in
``after:`` order. Wires the edges; decides nothing itself.

A newer commit on the branch while a rollout waits on health supersedes it: the pass starts
over at the new head, so a fix is never stuck behind a broken commit. An environment that
fails stops the environments after it.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from gitsync.checkout import TreeReport, read_tree, read_tree_cached
from gitsync.config import AgentConfig
from gitsync.errors import ConfigError, GitsyncError, InvalidRevision, ManifestRefused
from gitsync.kube.rayservices import RayServices
from gitsync.kube.state import StateStore
from gitsync.manifests.load import EnvironmentManifests
from gitsync.manifests.repoconfig import EnvironmentConfig
from gitsync.model import (
    Desired,
    Hold,
    Outcome,
    RolloutResult,
    ServiceKey,
    StepKind,
    WaveEvent,
)
from gitsync.plan import Plan
from gitsync.planning import (
    confined,
    environment_manifests,
    live_environment_plan,
    ordered_environments,
)
from gitsync.progress import (
    FINAL,
    NO_FIELDS,
    Fields,
    Observer,
    Quiet,
    about,
    left_behind,
    lost_final_status,
)
from gitsync.report.reporter import Reporter
from gitsync.report.status import CommitStatus, Describer, State, context
from gitsync.rollout import Rollout
from gitsync.source.git import GitSource
from gitsync.windows import verdict

log = logging.getLogger(__name__)

SUPERSEDE_CHECK_SECONDS = 5.0  # at most one ls-remote this often while waiting on health


@dataclass(frozen=True)
class PassResult:
    revision: str
    results: tuple[RolloutResult, ...]
    waiting: bool = False  # an environment waits for its change window: run again at the poll

    @property
    def ok(self) -> bool:
        """Every environment succeeded, or is held (suspended, pinned) as it was asked."""
        return all(r.outcome in (Outcome.SUCCEEDED, Outcome.HELD) for r in self.results)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _until(text: str) -> datetime.datetime | None:
    """A stored UTC time (``2026-12-04T16:00:00Z``); None when there is none or it is not
    one."""
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=datetime.UTC)


def _desired_at(tree: Path, environment: str, label: str) -> Mapping[ServiceKey, Desired]:
    return environment_manifests(read_tree(tree), environment, label).desired


def _superseded_check(
    source: GitSource, revision: str, every: float = SUPERSEDE_CHECK_SECONDS
) -> Callable[[], bool]:
    last = [time.monotonic()]

    def check() -> bool:
        if time.monotonic() - last[0] < every:
            return False
        last[0] = time.monotonic()
        return source.head() != revision

    return check


class _Statuses:
    """Posts this pass's commit statuses through the reporter (nothing without one)."""

    def __init__(self, reporter: Reporter | None, describe: Describer) -> None:
        self.reporter, self.describe = reporter, describe

    def post(self, status: CommitStatus) -> None:
        if self.reporter is not None:
            self.reporter.post(self.describe.revision, status)

    def wave(self, environment: str, event: WaveEvent) -> None:
        if event.kind is StepKind.APPLYING:
            self.post(self.describe.applying(environment, event.index, event.total, event.actions))
        else:
            keys = [key for key, _ in event.actions]
            self.post(
                self.describe.waiting(environment, event.index, event.total, keys, event.detail)
            )

    def result(self, result: RolloutResult, services: Sequence[ServiceKey]) -> None:
        if result.outcome is Outcome.SUCCEEDED:
            skipped = len(result.skipped)  # a skipped prune is not one of ``services``
            healthy = sum(1 for key in services if key not in result.skipped)
            self.post(self.describe.healthy(result.environment, healthy, skipped))
        elif result.outcome not in (Outcome.SUPERSEDED, Outcome.INTERRUPTED):
            # superseded: posted once the newer head is known; interrupted: resumed later
            self.post(self.describe.failed(result.environment, result.failed, result.message))


def _validated(
    report: TreeReport, names: Sequence[str], revision: str, statuses: _Statuses
) -> dict[str, EnvironmentManifests]:
    """Every selected environment loaded, or nothing: one invalid environment makes the
    whole revision invalid, so a bad commit applies nothing anywhere."""
    label = revision[:12]
    loaded: dict[str, EnvironmentManifests] = {}
    invalid: dict[str, InvalidRevision] = {}
    for name in names:
        try:
            loaded[name] = environment_manifests(report, name, label)
        except InvalidRevision as exc:
            invalid[name] = exc
    if not invalid:
        return loaded
    first_name, first = next(iter(invalid.items()))
    for name in names:
        if name in invalid:
            statuses.post(statuses.describe.invalid(name, invalid[name].problems))
        else:
            problem = first.problems[0] if first.problems else "invalid"
            statuses.post(statuses.describe.blocked(name, f"{first_name} is invalid: {problem}"))
    problems = tuple(p for exc in invalid.values() for p in exc.problems)
    refused = InvalidRevision(
        f"revision {label} ({', '.join(invalid)})", problems, environments=tuple(invalid)
    )
    refused.revision = revision
    raise refused


def sync_once(
    config: AgentConfig,
    services: RayServices,
    state: StateStore,
    *,
    environments: Sequence[str] | None = None,
    dry_run: bool = False,
    observer: Observer | None = None,
    supersede_every: float = SUPERSEDE_CHECK_SECONDS,
    reporter: Reporter | None = None,
    stop: threading.Event | None = None,
    source: GitSource | None = None,
    clock: Callable[[], datetime.datetime] | None = None,
    ignore_windows: bool = False,
) -> PassResult:
    """One pass. ``environments`` (else the agent config's, else all) are this agent's; an
    ``after:`` naming any other environment is a promotion gate read from commit statuses.
    ``stop`` interrupts it resumably (shutdown, a lost lease). ``observer`` sees each
    environment's plan, rollout and result (progress lines, the status page, metrics).
    ``clock`` (default: now, UTC) is when the change windows are evaluated;
    ``ignore_windows`` sets them aside for this pass (``gitsync sync --ignore-windows``)."""
    run = _Pass(
        config=config,
        services=services,
        state=state,
        source=source or GitSource(config.repository),
        reporter=reporter,
        observer=observer or Quiet(),
        stop=stop or threading.Event(),
        supersede_every=supersede_every,
        clock=clock or _now,
        ignore_windows=ignore_windows,
    )
    return run.run(environments or config.environments or None, dry_run=dry_run)


class _Posting(Quiet):
    """What a rollout reports, passed on to the pass's observer, and each wave's commit
    status posted."""

    def __init__(self, outer: Observer, statuses: _Statuses) -> None:
        self.outer, self.statuses = outer, statuses

    def line(self, text: str, fields: Fields = NO_FIELDS) -> None:
        self.outer.line(text, fields)

    def recorded(self, key: ServiceKey, kind: str, reason: str, message: str) -> None:
        self.outer.recorded(key, kind, reason, message)

    def wave(self, environment: str, event: WaveEvent) -> None:
        self.statuses.wave(environment, event)
        self.outer.wave(environment, event)


@dataclass(kw_only=True)
class _Pass:
    config: AgentConfig
    services: RayServices
    state: StateStore
    source: GitSource
    reporter: Reporter | None
    observer: Observer
    stop: threading.Event
    supersede_every: float
    clock: Callable[[], datetime.datetime] = field(default=_now)
    ignore_windows: bool = False
    told: set[tuple[str, str]] = field(default_factory=set)  # (older revision, env) settled

    def _statuses(self, revision: str) -> _Statuses:
        return _Statuses(self.reporter, Describer(revision, self.config.status.target_url))

    def run(self, wanted: Sequence[str] | None, *, dry_run: bool) -> PassResult:
        superseded: list[tuple[str, str]] = []  # (revision, environment) given way
        while True:
            revision = self.source.head()
            statuses = self._statuses(revision)
            for old, name in superseded:
                self._statuses(old).post(statuses.describe.superseded(name, revision))
                self.told.add((old, name))
            superseded.clear()
            report = confined(
                read_tree_cached(self.source.checkout(revision)), self.config.namespaces_for
            )
            label = revision[:12]
            try:
                names = ordered_environments(report, wanted, label)
            except InvalidRevision as exc:  # gitsync.yaml itself: the environments it would name
                for name in wanted or ("config",):
                    statuses.post(statuses.describe.invalid(name, exc.problems))
                exc.environments, exc.revision = tuple(wanted or ("config",)), revision
                raise
            self.observer.line(
                f"revision {label}: environments {', '.join(names)}", {"revision": revision}
            )
            loaded_all = _validated(report, names, revision, statuses)
            try:
                holds = self.state.holds()
            except GitsyncError as exc:  # as a rollout's own API failure: the first one errs
                statuses.post(statuses.describe.error(names[0], str(exc)))
                raise
            results: list[RolloutResult] = []
            for name in names:
                hold = holds.get(name, Hold())
                if hold.suspended or (hold.pinned and hold.pinned != revision):
                    results += self._held(name, hold, names, statuses, dry_run=dry_run)
                    if dry_run:
                        continue
                    self._held_after(names, name, hold.describe(), statuses)
                    break
                shut = self._closed(loaded_all[name].environment, hold, statuses)
                if shut is not None and not dry_run:
                    results.append(shut)
                    self._held_after(names, name, "outside its change window", statuses)
                    return PassResult(revision, tuple(results), waiting=True)
                result = self._environment(loaded_all[name], names, statuses, dry_run=dry_run)
                if result is None:  # dry run: the plan was printed
                    continue
                results.append(result)
                self.observer.finished(result)
                if result.outcome is Outcome.SUPERSEDED:
                    superseded.append((revision, name))
                    break
                if result.outcome is not Outcome.SUCCEEDED:
                    if result.outcome is not Outcome.INTERRUPTED:
                        self._block_after(names, name, statuses)
                    break
            if not superseded:
                return PassResult(revision, tuple(results))
            self.observer.line("starting over at the new head")

    def _settle_older(self, name: str, revision: str, statuses: _Statuses) -> None:
        """The environment's previous revision, if a stopped agent left its commit status
        pending: superseded when its rollout never finished, else how it ended. Runs just
        before the rollout, so its one forge read is quick (one attempt, a few seconds): when
        it fails the rollout goes ahead and that older status is left as it is."""
        prior = self.state.read(name)
        old = left_behind(prior, revision)
        if old is not None:
            if (old, name) not in self.told:
                self.observer.line(
                    f"{name}: {old[:12]} was left unfinished; superseded", about(name, None, old)
                )
                self._statuses(old).post(statuses.describe.superseded(name, revision))
                self.told.add((old, name))
            return
        if prior is None or prior.revision == revision or self.reporter is None:
            return
        if prior.phase not in FINAL or (prior.revision, name) in self.told:
            return
        mine = self.reporter.asked(prior.revision, context(name))
        if mine is not None and mine.state is not State.PENDING:
            return  # this agent finished that rollout: its final status is posted or queued
        try:
            seen = self.reporter.statuses(prior.revision).get(context(name))
        except GitsyncError as exc:
            log.warning(
                "cannot read the statuses of %s, rolling out %s without settling them: %s",
                prior.revision[:12],
                name,
                exc,
            )
            self.observer.line(
                f"{name}: cannot read the statuses of {prior.revision[:12]}: {exc}",
                about(name, None, prior.revision),
            )
            return
        lost = lost_final_status(prior, revision, seen)
        if lost is not None:
            said = f"{prior.revision[:12]} {prior.phase}; posting its lost status"
            self.observer.line(f"{name}: {said}", about(name, None, prior.revision))
            older = self._statuses(prior.revision)
            older.post(older.describe.status(name, *lost))
        self.told.add((prior.revision, name))

    def _held(
        self, name: str, hold: Hold, names: Sequence[str], statuses: _Statuses, *, dry_run: bool
    ) -> list[RolloutResult]:
        """A suspended environment: nothing applied, the head's status says so. A pinned one:
        the head's status says so, and the pinned revision is rolled out (its statuses on
        that commit) — up to date after the first time. The results: the pin's rollout, if
        any, then the head's ``held``."""
        said, revision = hold.describe(), statuses.describe.revision
        self.observer.line(f"{name}: {said}: {revision[:12]} not rolled out")
        held = RolloutResult(name, revision, Outcome.HELD, said)
        if dry_run:
            return []
        if hold.suspended:
            statuses.post(statuses.describe.suspended(name, said))
            return [held]
        statuses.post(statuses.describe.pinned(name, said))
        pin = self._statuses(hold.pinned)
        try:
            report = confined(
                read_tree_cached(self.source.checkout(self.source.on_branch(hold.pinned))),
                self.config.namespaces_for,
            )
            loaded = environment_manifests(report, name, hold.pinned[:12])
        except (GitsyncError, ValueError) as exc:
            why = f"pinned revision {hold.pinned[:12]} cannot be rolled out: {exc}"
            self.observer.line(f"{name}: {why}")
            statuses.post(statuses.describe.error(name, why))
            return [held]
        result = self._environment(loaded, names, pin, dry_run=False, pinned=True)
        assert result is not None
        self.observer.finished(result)
        return [result, held]

    def _held_after(self, names: Sequence[str], name: str, why: str, statuses: _Statuses) -> None:
        """The environments after a held one wait with it (pending, not failed)."""
        remaining = names[names.index(name) + 1 :]
        if remaining:
            self.observer.line(f"not rolling out {', '.join(remaining)}: {name} is held")
        for later in remaining:
            statuses.post(statuses.describe.held_after(later, name, why))

    def _closed(
        self, env: EnvironmentConfig, hold: Hold, statuses: _Statuses
    ) -> RolloutResult | None:
        """Outside the environment's change windows (and no override open): the head's
        status says when it rolls out, and the result is ``held``. None when it may roll out."""
        if self.ignore_windows or not env.windows:
            return None
        now, revision = self.clock(), statuses.describe.revision
        until = _until(hold.window_open_until)
        if until is not None and now < until:
            by = hold.window_opened_by or "someone"
            self.observer.line(
                f"{env.name}: change windows set aside by {by} until {hold.window_open_until}"
            )
            return None
        found = verdict(env.windows, now)
        if found.open:
            return None
        opens = (
            found.opens.astimezone(datetime.UTC).strftime("at %Y-%m-%d %H:%M UTC")
            if found.opens is not None
            else "not within a year"
        )
        self.observer.line(f"{env.name}: {found.why}: {revision[:12]} rolls out {opens}")
        statuses.post(statuses.describe.outside_window(env.name, opens, found.why))
        return RolloutResult(env.name, revision, Outcome.HELD, f"{found.why}; rolls out {opens}")

    def _block_after(self, names: Sequence[str], name: str, statuses: _Statuses) -> None:
        remaining = names[names.index(name) + 1 :]
        if remaining:
            self.observer.line(f"not rolling out {', '.join(remaining)}: {name} did not succeed")
        label = statuses.describe.revision[:12]
        for later in remaining:
            statuses.post(statuses.describe.blocked(later, f"{name} did not succeed at {label}"))

    def _environment(
        self,
        loaded: EnvironmentManifests,
        ours: Sequence[str],
        statuses: _Statuses,
        *,
        dry_run: bool,
        pinned: bool = False,
    ) -> RolloutResult | None:
        """Gate, plan and roll out one environment (or print its plan). gitsync's own
        failures (API unreachable …) become an ``error`` status, then propagate. ``pinned``:
        the revision is the environment's pin, which no promotion gate holds back and no
        newer head supersedes."""
        env, revision = loaded.environment, statuses.describe.revision
        check = (
            (lambda: False)
            if pinned
            else _superseded_check(self.source, revision, self.supersede_every)
        )
        if not (dry_run or pinned) and (gate := self._gate(env, ours, statuses, check)) is not None:
            return gate
        try:
            plan = self._plan(loaded, revision)
            if dry_run:
                said = "changes planned" if plan.has_changes else "no changes"
                self.observer.line(
                    f"{env.name}: dry run: {said}, nothing applied", about(env.name, None, revision)
                )
                return None
            self.observer.started(env.name)
            self._settle_older(env.name, revision, statuses)
            result = self._rollout(loaded, plan, statuses, check)
        except ManifestRefused as exc:
            # The plan's dry run found a manifest the API server will not take: the commit's
            # fault, before anything was applied. Exit as for an invalid revision.
            statuses.post(statuses.describe.failed(env.name, exc.key, str(exc)))
            raise
        except GitsyncError as exc:
            statuses.post(statuses.describe.error(env.name, str(exc)))
            raise
        statuses.result(result, list(loaded.desired))
        return result

    def _plan(self, loaded: EnvironmentManifests, revision: str) -> Plan:
        # The plan becomes the rollout record the status page shows: values there only when
        # ui.showEnvValues says so (PR comments, drift and logs always mask).
        shown = replace(self.config.classify, show_env_values=self.config.ui.show_env_values)
        concurrency = self.config.rollout.concurrency
        plan = live_environment_plan(loaded, self.services, shown, revision, concurrency)
        self.observer.planned(plan)
        return plan

    def _rollout(
        self,
        loaded: EnvironmentManifests,
        plan: Plan,
        statuses: _Statuses,
        superseded: Callable[[], bool],
    ) -> RolloutResult:
        env = loaded.environment

        def previous(old: str) -> Mapping[ServiceKey, Desired]:
            return _desired_at(self.source.checkout(old), env.name, old[:12])

        rollout = Rollout(
            services=self.services,
            state=self.state,
            settings=self.config.rollout,
            observer=_Posting(self.observer, statuses),
            superseded=superseded,
            stop=self.stop,
        )
        return rollout.run(env, plan, loaded.desired, statuses.describe.revision, previous)

    def _gate(
        self,
        env: EnvironmentConfig,
        ours: Sequence[str],
        statuses: _Statuses,
        superseded: Callable[[], bool],
    ) -> RolloutResult | None:
        """Waits until every ``after:`` environment another agent manages shows ``success``
        on this commit. None when the gate is open; otherwise the result that ends the pass."""
        remote = [name for name in env.after if name not in ours]
        if not remote:
            return None
        if self.reporter is None:
            raise ConfigError(
                f"{env.name} rolls out after {', '.join(remote)}, which this agent does not "
                "manage; that needs commit statuses to read, and none are configured"
            )
        settings = self.config.promotion
        deadline = time.monotonic() + settings.timeout
        for name in remote:
            announced = False
            while True:
                verdict = self._gate_read(env, name, statuses)
                if verdict is True:
                    break
                if isinstance(verdict, RolloutResult):
                    return verdict
                assert isinstance(verdict, str)
                if not announced:
                    waiting = f"waiting for {context(name)}: success ({verdict})"
                    self.observer.line(
                        f"{env.name}: {waiting}",
                        about(env.name, None, statuses.describe.revision),
                    )
                    announced = True
                statuses.post(statuses.describe.waiting_for(env.name, name, verdict))
                revision = statuses.describe.revision
                if superseded():
                    return RolloutResult(
                        env.name, revision, Outcome.SUPERSEDED, "a newer revision arrived"
                    )
                if time.monotonic() > deadline:
                    why = (
                        f"no {context(name)}: success at {revision[:12]} within "
                        f"{settings.timeout:.0f}s ({verdict})"
                    )
                    statuses.post(statuses.describe.blocked(env.name, why))
                    return RolloutResult(env.name, revision, Outcome.BLOCKED, why)
                if self.stop.wait(settings.poll_interval):
                    return RolloutResult(
                        env.name, revision, Outcome.INTERRUPTED, "stopped at a promotion gate"
                    )
        return None

    def _gate_read(
        self, env: EnvironmentConfig, name: str, statuses: _Statuses
    ) -> bool | RolloutResult | str:
        """True: the predecessor succeeded; a result: it failed; a string: still waiting."""
        assert self.reporter is not None
        revision = statuses.describe.revision
        try:
            seen = self.reporter.statuses(revision).get(context(name))
        except GitsyncError as exc:
            self.observer.line(
                f"{env.name}: cannot read the statuses of {revision[:12]}: {exc}",
                about(env.name, None, revision),
            )
            return "statuses unreadable"
        if seen is not None and seen.state is State.SUCCESS:
            self.observer.line(
                f"{env.name}: {context(name)} is success at {revision[:12]}",
                about(env.name, None, revision),
            )
            return True
        if seen is not None and seen.state in (State.FAILURE, State.ERROR):
            why = f"{context(name)} is {seen.state} at {revision[:12]}: {seen.description}"
            self.observer.line(
                f"{env.name}: not rolled out: {why}", about(env.name, None, revision)
            )
            statuses.post(statuses.describe.blocked(env.name, why))
            return RolloutResult(env.name, revision, Outcome.BLOCKED, why)
        return f"{name} is {seen.state}: {seen.description}" if seen else "no status yet"
