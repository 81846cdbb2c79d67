"""The long-running agent, ``gitsync run``: scheduling, leadership, webhooks' triggers.

Owns *when* passes run and *who* runs them; what a pass does is :func:`gitsync.sync.sync_once`.
APScheduler runs the jobs, each coalescing and never overlapping with itself: the poll
(every ``intervals.poll``; a push webhook runs it at once) and, when later stages add them,
drift checks and preview reconciles. Only the leader (a ``coordination.k8s.io`` Lease) runs
them; a replica that loses the Lease interrupts its rollout, which stays resumable from the
state ConfigMap. Shutdown (:meth:`Agent.shutdown`): stop the jobs, interrupt the rollout,
post the queued statuses and store those the forge did not take, release the Lease — within
the grace period, whatever hangs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime
import gc
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import KW_ONLY, dataclass, field, replace
from typing import Any

import urllib3
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from gitsync.checkout import read_tree_cached
from gitsync.config import AgentConfig, drift_interval
from gitsync.drift import DriftChecker, DriftEvents, DriftReport, drifted_by_kind
from gitsync.errors import GitsyncError, InvalidRevision, Temporary
from gitsync.health import Assessment, assess
from gitsync.kube.cache import CachedRayServices
from gitsync.kube.client import ApiClient, ApiException
from gitsync.kube.events import EventRecorder
from gitsync.kube.informer import WatchSettings
from gitsync.kube.lease import LeaderElector
from gitsync.kube.peers import LeaderPods
from gitsync.kube.rayservices import RayServices, RayServicesClient
from gitsync.kube.state import StateStore
from gitsync.metrics import Metrics
from gitsync.model import Health, Hold, Outcome, RolloutResult, ServiceKey, WaveEvent
from gitsync.names import ENVIRONMENT
from gitsync.notify import (
    DriftSeen,
    Notice,
    drift_notices,
    preview_notice,
    revision_invalid,
    rollout_finished,
    rollout_started,
)
from gitsync.plan import Plan
from gitsync.planning import environment_manifests, ordered_environments
from gitsync.previews import PreviewReconciler, PreviewResult
from gitsync.progress import NO_FIELDS, Fields, Quiet
from gitsync.relay import outside
from gitsync.report.notifier import Notifier
from gitsync.report.pulls import Pulls
from gitsync.report.reporter import Reporter
from gitsync.report.status import CommitStatus, State
from gitsync.rollout import expected_apps
from gitsync.source.git import GitSource
from gitsync.sync import sync_once
from gitsync.web.facts import CommitInfo
from gitsync.web.history import History
from gitsync.web.stored import EnvironmentMemory, from_data
from gitsync.windows import crontab

log = logging.getLogger(__name__)

# After a pass that failed because the API server was unreachable or failing, the next one
# runs after this backoff (doubling from the first, capped by the poll interval) rather than
# at the next poll: a restarted API server is back in seconds, a poll may be minutes away.
RETRY_FIRST, RETRY_LONGEST = 1.0, 60.0

# /healthz fails once the poll job has not started for this many intervals (and at least
# STALE_FLOOR seconds) while no pass runs: a scheduler that stopped running its jobs keeps the
# process up but the agent useless, and only a restart mends it.
STALE_POLLS, STALE_FLOOR = 10, 60.0

POLL_JOB = "poll"
DRIFT_JOB = "drift"
PREVIEWS_JOB = "previews"


@dataclass
class Agent:
    config: AgentConfig
    api: ApiClient
    identity: str
    _: KW_ONLY  # the rest by name
    metrics: Metrics = field(default_factory=Metrics)
    reporter: Reporter | None = None
    pulls: Pulls | None = None
    notifier: Notifier | None = None  # Slack, Teams, webhooks (docs/notifications.md)
    advertise_url: str = ""  # published on the Lease while leading: standbys relay webhooks
    stale_after: float | None = None  # seconds without a poll: unhealthy (None: see STALE_*)

    def __post_init__(self) -> None:
        # Live state from watches (docs/architecture.md, "The watch-backed cache"): passes,
        # the health refresh and the status page read it; another writer's change to a
        # managed object is checked for drift at once (docs/drift.md).
        watch = self.config.watch
        self.cache = (
            CachedRayServices(self.api, WatchSettings(silent=watch.silent, timeout=watch.timeout))
            if watch.enabled
            else None
        )
        self.services: RayServices = self.cache or RayServicesClient(self.api)
        self.recorder = EventRecorder(self.api, self.identity)
        informers = self.cache.informers if self.cache else None
        self.state = StateStore(self.api, self.config.rollout.state_namespace, informers)
        self.drift_events: DriftEvents | None = None
        self.source = GitSource(self.config.repository)
        self.scheduler = BackgroundScheduler(
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=datetime.UTC,
        )
        self.stopping = threading.Event()
        self.interrupt = threading.Event()  # stops the rollout in flight
        self.last_revision = ""  # the head the last complete pass finished at
        self.last_ok = False
        self.ready = threading.Event()
        self.passes = 0
        self.polled_at = time.monotonic()  # when the poll job last started (leading or not)
        self.retries = 0  # passes failed in a row on an unreachable API server
        self._applied: dict[str, str] = {}  # environment → revision in the info gauge
        self._behind: set[str] = set()  # environments in gitsync_behind_since_seconds
        self._began: dict[str, float] = {}  # environment → when its rollout started
        self._health: dict[tuple[str, ServiceKey], Health] = {}  # what the gauge shows
        # The resourceVersion and expected applications each service's health was last
        # assessed from (see _refresh_health).
        self._assessed: dict[tuple[str, ServiceKey], tuple[str | None, Any]] = {}
        self._expected_at: tuple[object, list[tuple[str, str, dict[ServiceKey, tuple[str, ...]]]]]
        self._expected_at = ("", [])
        self._fighting: dict[str, set[tuple[str, str]]] = {}
        self._holds: dict[str, Hold] = {}  # as the last poll read them (a change: a pass)
        self._previews_lock = threading.Lock()
        # What notifications said: this pass's plans (what each service does), the rollouts
        # announced as started, commit subjects, and per environment and pull request what
        # drift and preview notices already told (a check that finds the same says nothing).
        self._plans: dict[str, Plan] = {}
        self._planned_now: list[Plan] = []  # the plans of the pass running now
        self._announced: set[tuple[str, str]] = set()  # (environment, revision)
        self._subjects: dict[str, str] = {}
        self._told_invalid = ""  # the invalid revision last told (a failed pass runs again)
        self._drift_told: dict[str, DriftSeen] = {}
        self._previews_told: dict[int, tuple[str, str, str]] = {}
        # What progress lines may name: environments and services planned, the pass's revision.
        # What the status page shows, kept in the state ConfigMaps (every replica reads them).
        self.history = History(sink=self._store_status, seed=self._stored_status)
        self.preview_reconciler, self.drift_checker = self._checkers()
        self._lock = threading.Lock()
        # Held while the per-environment series are written or dropped: a health refresh
        # (which runs outside ``_lock``) must not write one back after a step-down dropped them.
        self._series = threading.RLock()
        self.elector = self._elector()
        namespace = self.config.leader_election.namespace
        self._leader_pods = LeaderPods(self.api, namespace, self.identity)
        self._election_thread: threading.Thread | None = None
        self._statuses_stored = True  # statuses an earlier agent stored may wait (see poll)
        self._running = 0  # scheduled jobs running now
        self._jobs_done = threading.Condition()

    def _checkers(self) -> tuple[PreviewReconciler, DriftChecker]:
        repo = self.config.repository
        previews = PreviewReconciler(
            self.config,
            self.services,
            self.state,
            # Its own cache: the preview job runs beside the poll, and a cache has one user.
            GitSource(replace(repo, cache_dir=repo.cache_dir / "previews")),
            self.pulls,
            self.reporter,
            progress=lambda line: log.info("%s", line),
            record=self.recorder,
            renders=self.source.trees_dir / "renders",
        )
        drift = DriftChecker(
            self.config,
            self.services,
            self.state,
            self.source,
            progress=lambda line: log.info("%s", line),
            record=self.recorder,
            on_drift=lambda environment, count: self.metrics.drift_detected.labels(environment).inc(
                count
            ),
            on_error=lambda environment: self.metrics.drift_check_errors.labels(environment).inc(),
        )
        return previews, drift

    def _elector(self) -> LeaderElector | None:
        election = self.config.leader_election
        if not election.enabled:
            return None
        return LeaderElector(
            self.api,
            election.namespace,
            election.lease_name,
            self.identity,
            election.lease_duration,
            election.renew_deadline,
            election.retry_period,
            on_started=self._started_leading,
            on_stopped=self._stopped_leading,
            advertise_url=self.advertise_url,
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self.scheduler.add_job(
            self._job(self.poll),
            "interval",
            seconds=self.config.poll_seconds,
            id=POLL_JOB,
            next_run_time=datetime.datetime.now(datetime.UTC),
        )
        self.polled_at = time.monotonic()
        every = drift_interval(self.config.drift_schedule)
        self.scheduler.add_job(
            self._job(self.drift),
            IntervalTrigger(seconds=every)
            if every is not None
            else crontab(self.config.drift_schedule, datetime.UTC),
            id=DRIFT_JOB,
        )
        self.scheduler.add_job(
            self._job(self.previews),
            "interval",
            seconds=self.config.poll_seconds,
            id=PREVIEWS_JOB,
        )
        self.scheduler.start()
        if self.cache is not None:
            self.drift_events = DriftEvents(self._drift_on_events, self.config.watch.debounce)
            self.cache.subscribe(self._changed_outside)
        if self.elector is not None:
            self._election_thread = threading.Thread(
                target=self.elector.run, args=(self.stopping,), name="gitsync-lease", daemon=True
            )
            self._election_thread.start()
        else:
            self.metrics.leader.set(1)
        self.ready.set()
        log.info(
            "agent started identity=%s repository=%s branch=%s poll=%.0fs",
            self.identity,
            self.config.repository.display_url,
            self.config.repository.branch,
            self.config.poll_seconds,
        )

    def shutdown(self, timeout: float | None = None) -> bool:
        """Stops within ``timeout`` seconds (default: the config's ``shutdownGracePeriod``)
        whatever the agent is doing. No new passes; the rollout in flight is interrupted after
        its current call and left in progress in its state ConfigMap; the statuses queued are
        posted, and those the forge did not take are stored for the next leader; the Lease is
        released. Returns False when a pass, stuck in a call that did not return in time (a hung
        API or Git server), is still running: the caller exits anyway (see ``gitsync run``).

        The grace period is shared out so that a hung step cannot starve the later ones:
        up to half waits for the pass, the statuses are posted until 60 % and those left
        stored until 80 %, notifications are delivered until 90 % (their threads deliver
        all along), the Lease gets the rest."""
        grace = self.config.shutdown_grace if timeout is None else timeout
        began = time.monotonic()
        log.info("agent stopping (grace period %.0fs)", grace)
        self.stopping.set()
        self.interrupt.set()
        if self.elector is not None:
            self.elector.stop_by(began + grace * 0.95)
        if self.scheduler.running:  # not if it stopped by itself (/healthz then failed)
            # wait=False: waiting would hold APScheduler's job-store lock, which the pass in
            # flight needs for get_job() (a retry, a webhook's trigger): neither would finish.
            self.scheduler.shutdown(wait=False)
        finished = self._quiesce(began + grace * 0.5)
        if self.reporter is not None:
            unposted = self.reporter.close(timeout=max(0.1, began + grace * 0.6 - time.monotonic()))
            self._keep_statuses(unposted, began + grace * 0.8)
        if self.notifier is not None:  # delivering since the rollout ended; what is left: now
            self.notifier.close(timeout=max(0.1, began + grace * 0.9 - time.monotonic()))
        if self._election_thread is not None:
            self._election_thread.join(max(0.1, began + grace * 0.97 - time.monotonic()))
            if self._election_thread.is_alive():
                log.warning(
                    "the Lease was not released in time: a standby takes over when it expires"
                )
        self.recorder.close(timeout=max(0.1, min(1.0, began + grace - time.monotonic())))
        if self.drift_events is not None:
            self.drift_events.close(timeout=0.1)
        if self.cache is not None:
            self.cache.close()
        self.metrics.leader.set(0)
        log.info("agent stopped in %.1fs", time.monotonic() - began)
        return finished

    def _quiesce(self, deadline: float) -> bool:
        """Waits until no job (poll and its pass, drift check, preview pass) runs, until
        ``deadline``."""
        with self._jobs_done:
            if self._jobs_done.wait_for(
                lambda: self._running == 0, max(0.0, deadline - time.monotonic())
            ):
                return True
        log.warning(
            "shutdown: a job is still running (stuck in a call that has not returned); it is "
            "abandoned, and a rollout it was running stays in progress for the next leader"
        )
        return False

    def _job(self, run: Callable[[], object]) -> Callable[[], None]:
        """``run`` as a scheduled job, counted while it runs (see _quiesce)."""

        def job() -> None:
            with self._jobs_done:
                self._running += 1
            try:
                run()
            finally:
                with self._jobs_done:
                    self._running -= 1
                    self._jobs_done.notify_all()

        return job

    def _keep_statuses(self, unposted: list[tuple[str, CommitStatus]], deadline: float) -> None:
        """Stores the statuses the forge did not take (see StateStore.keep_statuses); the
        next leader posts them. Without a cluster to store them in, they are logged."""
        if not unposted:
            return
        entries = [
            {"revision": revision, "context": s.context, "state": str(s.state),
             "description": s.description, "targetURL": s.target_url}
            for revision, s in unposted
        ]  # fmt: skip
        try:
            self.state.keep_statuses(entries, timeout=max(0.1, (deadline - time.monotonic()) / 2))
        except (ApiException, urllib3.exceptions.HTTPError) as exc:
            for revision, s in unposted:
                log.warning(
                    "commit status %s=%s on %s not posted and not stored (%s): %s",
                    s.context, s.state, revision[:12], type(exc).__name__, s.description,
                )  # fmt: skip
            return
        log.info("stored %d unposted commit status(es) for the next leader", len(unposted))

    def _restore_statuses(self) -> None:
        """Queues what an earlier agent stored at shutdown (once per leadership)."""
        if self.reporter is None or not self._statuses_stored:
            return
        try:
            entries = self.state.take_statuses()
        except GitsyncError as exc:
            log.warning("cannot read the stored commit statuses: %s", exc)
            return
        self._statuses_stored = False
        for entry in entries:
            try:
                status = CommitStatus(
                    entry["context"],
                    State(entry.get("state", "")),
                    entry.get("description", ""),
                    entry.get("targetURL", ""),
                )
            except ValueError:
                log.warning("skipped a stored commit status that is not valid: %r", entry)
                continue
            if self.reporter.asked(entry["revision"], status.context) is None:
                self.reporter.post(entry["revision"], status)
        if entries:
            log.info("posting %d commit status(es) an earlier agent could not", len(entries))

    def healthy(self) -> bool:
        """For ``/healthz``: not stopping, the scheduler's thread alive, and the poll job
        started recently or a pass running (a pass holds the poll job for as long as it takes)."""
        if self.stopping.is_set():
            return False
        if not self.ready.is_set():
            return True  # starting
        thread = getattr(self.scheduler, "_thread", None)  # APScheduler 3's BackgroundScheduler
        if not self.scheduler.running or thread is None or not thread.is_alive():
            return False
        if self._lock.locked():
            return True
        stale = self.stale_after
        if stale is None:
            stale = max(STALE_POLLS * self.config.poll_seconds, STALE_FLOOR)
        return time.monotonic() - self.polled_at < stale

    @property
    def leading(self) -> bool:
        return self.elector is None or self.elector.is_leading()

    def leader_url(self) -> str | None:
        """None while this replica leads (it handles its webhooks); else the base URL the
        leader published on the Lease, "" when none is known."""
        if self.elector is None or self.leading:
            return None
        return self.elector.leader_url

    def relay_refused(self, base: str) -> str | None:
        """Why this standby must not relay a webhook to the leader URL ``base`` (None: it
        may): inside ``webhooks.relayNetworks`` when set, else the Lease holder's own pod
        (:mod:`gitsync.kube.peers`)."""
        if networks := self.config.webhooks.relay_networks:
            return outside(base, networks)
        holder = self.elector.leader if self.elector is not None else ""
        return self._leader_pods.refused(holder, base)

    def _started_leading(self) -> None:
        self.metrics.leader.set(1)
        self._statuses_stored = True
        self.drift_checker.forget()  # another leader may have healed or rolled out meanwhile
        self.interrupt.clear()
        self.trigger()  # resume whatever the previous leader left in progress

    def _stopped_leading(self) -> None:
        self.metrics.leader.set(0)
        self.interrupt.set()
        # The next leader reports these; kept here, two replicas would both count the
        # environments. A pass in flight forgets them itself when it ends (see _pass).
        if self._lock.acquire(blocking=False):
            try:
                self._forget_environments()
            finally:
                self._lock.release()

    def _forget_environments(self) -> None:
        """Drops the per-environment series a standby must not export. Leading again, the
        first pass re-runs (``last_ok`` False) and restores them from the cluster."""
        with self._series:
            for gauge in (
                self.metrics.service_health,
                self.metrics.applied_revision,
                self.metrics.rollout_in_progress,
                self.metrics.drift_fighting,
            ):
                gauge.clear()
            self._health.clear()
            self._assessed.clear()
            self._applied.clear()
            self._behind.clear()
            self._began.clear()
            self._fighting.clear()
            self.last_ok = False

    # -- jobs --------------------------------------------------------------------------------

    def trigger(self) -> None:
        """Runs the poll now (a push webhook); a pass already running picks the new head up
        through its supersede check."""
        if self.stopping.is_set():
            return
        job = self.scheduler.get_job(POLL_JOB)
        if job is not None:
            job.modify(next_run_time=datetime.datetime.now(datetime.UTC))

    def poll(self) -> None:
        self.polled_at = time.monotonic()
        if not self.leading or self.stopping.is_set():
            return
        self._restore_statuses()
        began = time.monotonic()
        try:
            head = self.source.head()
        except GitsyncError as exc:
            self.metrics.git_poll.labels("error").inc()
            log.warning("poll failed: %s", exc)
            return
        finally:
            self.metrics.git_poll_duration.observe(time.monotonic() - began)
        held = self._holds_changed()
        if head == self.last_revision and self.last_ok and not held:
            self.metrics.git_poll.labels("unchanged").inc()
            self._refresh_health(events=True)
            return
        self.metrics.git_poll.labels("new" if head != self.last_revision else "retry").inc()
        self._pass(head)

    def _holds_changed(self) -> bool:
        """Reads the holds (one list request) into the gauges; True when one changed since
        the last poll: a resume or an unpin rolls out at once, without a new commit."""
        try:
            holds = {name: hold for name, hold in self.state.holds().items() if hold != Hold()}
        except GitsyncError as exc:
            log.warning("cannot read the holds (suspend, pin): %s", exc)
            return False
        for name in set(self._holds) | set(holds):
            old, new = self._holds.get(name, Hold()), holds.get(name, Hold())
            self.metrics.suspended.labels(name).set(1 if new.suspended else 0)
            if old.pinned and old.pinned != new.pinned:
                self.metrics.pinned.remove(name, old.pinned)
            if new.pinned:
                self.metrics.pinned.labels(name, new.pinned).set(1)
        changed, self._holds = holds != self._holds, holds
        return changed

    def trigger_previews(self) -> None:
        """Reconciles previews now (a pull-request webhook)."""
        if self.stopping.is_set():
            return
        job = self.scheduler.get_job(PREVIEWS_JOB)
        if job is not None:
            job.modify(next_run_time=datetime.datetime.now(datetime.UTC))

    def previews(self) -> list[PreviewResult]:
        """Pull-request previews and plan comments; their own lock, so a preview never
        delays a rollout of the real environments."""
        if not self.leading or self.stopping.is_set():
            return []
        with self._previews_lock:
            try:
                results = self.preview_reconciler.reconcile()
            except GitsyncError as exc:
                log.error("previews failed: %s", exc)
                return []
        for result in results:
            if result.outcome != "unchanged":
                log.info(
                    "preview #%d: %s %s", result.number, result.outcome, ", ".join(result.services)
                )
        self.history.previews(results)
        self._notify_previews(results)
        release_memory(full=any(r.outcome != "unchanged" for r in results))
        return results

    def _changed_outside(
        self, key: ServiceKey, old: dict[str, Any] | None, new: dict[str, Any] | None
    ) -> None:
        """Another writer changed (or deleted) an object gitsync manages: a drift check of that
        object runs shortly (:class:`DriftEvents`)."""
        labels = ((new or old or {}).get("metadata") or {}).get("labels") or {}
        environment = labels.get(ENVIRONMENT)
        if environment and self.drift_events is not None and self.leading:
            log.info("%s changed by another writer: checking %s for drift", key, environment)
            self.drift_events.changed(str(environment), key)

    def _drift_on_events(self, changes: dict[str, set[ServiceKey]]) -> bool:
        """The drift check of the objects ``changes`` names (environment → keys) on events;
        False to be tried again (a pass holds the lock). Environments this agent does not
        roll out are left alone."""
        mine = {
            e: keys
            for e, keys in changes.items()
            if not self.config.environments or e in self.config.environments
        }
        if not mine or not self.leading or self.stopping.is_set():
            return True
        return self._drift(sorted(mine), changed=mine) is not None

    def drift(self, environments: Sequence[str] | None = None) -> list[DriftReport]:
        """The scheduled drift check (and self-heal where the environment asks for it) of
        ``environments`` (default: all). Skipped while a pass runs: a rollout in flight is
        not drift."""
        return self._drift(environments) or []

    def _drift(
        self,
        environments: Sequence[str] | None,
        changed: dict[str, set[ServiceKey]] | None = None,
    ) -> list[DriftReport] | None:
        """As :meth:`drift` (of the objects ``changed`` names, when given); None when it did
        not run (not leading, stopping, a pass runs)."""
        if not self.leading or self.stopping.is_set() or not self._lock.acquire(blocking=False):
            return None
        # On events, the head the last pass finished at: no ls-remote in the way of the
        # Drift Event (the drift is against each environment's applied revision anyway).
        head = self.last_revision if changed is not None else None
        try:
            reports = self.drift_checker.check(environments, heal=True, changed=changed, head=head)
        except GitsyncError as exc:
            log.error("drift check failed: %s", exc)
            return []
        finally:
            self._lock.release()
        with self._series:
            if self.leading:  # a step-down during the check dropped the series
                self._drift_series(reports)
        release_memory()
        return reports

    def _drift_series(self, reports: list[DriftReport]) -> None:
        for report in reports:
            self.history.drift(report)
            if not (report.error or report.note):  # checked: what it left drifted
                self.metrics.reconcile_disabled.labels(report.environment).set(len(report.disabled))
                for kind, count in drifted_by_kind(report).items():
                    self.metrics.drifted_services.labels(report.environment, kind).set(count)
            for sample in list(self._fighting.get(report.environment, ())):
                self.metrics.drift_fighting.remove(report.environment, *sample)
            self._fighting[report.environment] = {(k.namespace, k.name) for k in report.fighting}
            for namespace, name in self._fighting[report.environment]:
                self.metrics.drift_fighting.labels(report.environment, namespace, name).set(1)
            if report.healed is not None:
                self._record(report.healed)
            self._notify_drift(report)  # under the series lock: what it told stays consistent

    def _pass(self, head: str) -> None:
        with self._lock:
            self.passes += 1
            self._planned_now = []
            try:
                self._sync()
            finally:
                # What the pass applied may have ended a drift: the next check is whole, but
                # where the pass found nothing to change (then nothing is drifted).
                self.drift_checker.forget()
                for plan in self._planned_now:
                    self.drift_checker.settle(plan)
                self._planned_now = []
                self._prune_trees(head)
                if not self.leading:
                    self._forget_environments()

    def _prune_trees(self, head: str) -> None:
        """Keeps the cached trees the next pass, health refresh or drift check reads — the
        head (a failed one is retried at every poll), the last pass's revision and each
        environment's applied one and pin — and deletes the others. Kept forever, a tree per commit
        fills the agent's disk; a hostile 100 MB commit would stay in it too."""
        keep = {head, self.last_revision, *self._applied.values()}
        keep |= {hold.pinned for hold in self._holds.values() if hold.pinned}
        try:
            removed = self.source.prune(keep)
        except OSError as exc:
            log.warning("cannot prune the Git tree cache: %s", exc)
            return
        if removed:
            log.debug("pruned %d cached trees", len(removed))

    def _sync(self) -> None:
        """One pass (under the lock), recorded in ``last_revision`` and ``last_ok``."""
        try:
            result = sync_once(
                self.config,
                self.services,
                self.state,
                observer=_Watching(self),
                reporter=self.reporter,
                stop=self.interrupt,
                source=self.source,
            )
        except GitsyncError as exc:
            log.error("pass failed: %s", exc)
            if isinstance(exc, InvalidRevision):
                self._notify_invalid(exc)
            if not self._began:  # before any environment's rollout: Git, gitsync.yaml, a plan
                self.metrics.sync_total.labels("*", "error").inc()
            self.last_ok = False
            if isinstance(exc.retry, Temporary):
                if self.cache is not None:  # the API server failed: the cache lists again
                    self.cache.informers.distrust()
                self._retry_later()
            return
        finally:
            self._unfinished()
        self.retries = 0
        interrupted = any(r.outcome is Outcome.INTERRUPTED for r in result.results)
        self.last_revision = result.revision
        # Retry at the next poll unless everything succeeded (a failed commit is retried
        # only when a new one arrives: rolling a broken revision again changes nothing).
        self.last_ok = (
            not interrupted
            and not result.waiting  # for a change window: evaluated again at every poll
            and all(r.outcome not in (Outcome.BLOCKED,) for r in result.results)
        )
        self._refresh_health(after_pass=True)

    def _unfinished(self) -> None:
        """After a pass: an environment that started and got no result (the pass raised) is
        counted as an error, and is no longer in progress."""
        for environment in list(self._began):
            self.metrics.sync_total.labels(environment, "error").inc()
            self.metrics.rollout_in_progress.labels(environment).set(0)
        self._began.clear()

    def _retry_later(self) -> None:
        """Runs the poll again after the next backoff step (never later than it would run)."""
        wait = min(RETRY_FIRST * 2**self.retries, RETRY_LONGEST, self.config.poll_seconds)
        self.retries += 1
        if self.stopping.is_set():  # before get_job: shutdown may hold the job store
            return
        job = self.scheduler.get_job(POLL_JOB)
        if job is None:
            return
        log.info("retrying the pass in %.1fs (attempt %d)", wait, self.retries + 1)
        job.modify(
            next_run_time=datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=wait)
        )

    def _store_status(self, environment: str, data: dict[str, str]) -> bool:
        """The History's sink: only the leader writes (a standby's history would be stale)."""
        if not self.leading:
            return False
        try:
            self.state.write_status(environment, data)
        except GitsyncError as exc:
            log.warning("cannot record the status page's state of %s: %s", environment, exc)
            return False
        return True

    def _stored_status(self, environment: str) -> EnvironmentMemory | None:
        try:
            data = self.state.read_data(environment)
        except GitsyncError as exc:
            log.warning("cannot read the status page's state of %s: %s", environment, exc)
            raise
        return from_data(environment, data) if data is not None else None

    def _progress(self, line: str, fields: Fields) -> None:
        """A pass's progress line, with what its call site says it is about (environment,
        service, revision, wave, action) as keys of ``--log-format json``."""
        log.info("%s", line, extra=dict(fields))

    def _planned(self, plan: Plan) -> None:
        revision = plan.to_rev or ""
        try:
            author, when, subject = self.source.commit_info(revision)
            self.history.commit(CommitInfo(revision, author, when, subject))
            self._subjects = {revision: subject}  # the one revision this pass rolls out
        except (GitsyncError, ValueError) as exc:
            log.debug("commit metadata of %s unavailable: %s", revision[:12], exc)
        self.history.planned(plan, revision)
        self._plans[plan.environment] = plan
        self._planned_now.append(plan)

    # -- notifications: never in a rollout's way --------------------------------------------

    def _notify(self, notice: Notice | None) -> None:
        if notice is None or self.notifier is None:
            return
        try:
            self.notifier.notify(notice)
        except Exception:  # a notification must never fail a rollout
            log.exception("cannot queue the notification %s", notice.event)

    def _notify_started(self, environment: str) -> None:
        plan = self._plans.get(environment)
        if plan is None or self.notifier is None:
            return
        notice = rollout_started(plan, self._subjects.get(plan.to_rev or "", ""))
        if notice is not None:
            self._announced.add((environment, notice.revision))
        self._notify(notice)

    def _notify_finished(self, result: RolloutResult) -> None:
        if self.notifier is None:
            return
        key = (result.environment, result.revision)
        announced = key in self._announced
        if result.outcome is Outcome.INTERRUPTED:
            return  # resumed by the next pass (this agent's, if it still leads): told then
        self._announced.discard(key)
        subject = self._subjects.get(result.revision, "")
        plan = self._plans.get(result.environment)
        self._notify(rollout_finished(result, plan, subject, announced=announced))

    def _notify_invalid(self, exc: InvalidRevision) -> None:
        """``rollout.failed`` for each environment an invalid commit names, once per commit
        (the pass is tried again at every poll)."""
        if self.notifier is None or not exc.revision or exc.revision == self._told_invalid:
            return
        self._told_invalid = exc.revision
        try:
            subject = self.source.commit_info(exc.revision)[2]
        except (GitsyncError, ValueError):
            subject = ""
        for environment in exc.environments:
            self._notify(revision_invalid(environment, exc.revision, exc.problems, subject))

    def _notify_drift(self, report: DriftReport) -> None:
        if self.notifier is None or report.error or report.note:
            return  # not checked: nothing found, nothing gone
        told = self._drift_told.get(report.environment, DriftSeen())
        notices, self._drift_told[report.environment] = drift_notices(
            report.environment, report.revision, report.drifts, report.fighting, report.healed,
            told,
        )  # fmt: skip
        for notice in notices:
            self._notify(notice)

    def _notify_previews(self, results: Sequence[PreviewResult]) -> None:
        if self.notifier is None:
            return
        for r in results:
            said = (r.revision, r.outcome, r.message)
            if r.outcome in ("succeeded", "failed") and self._previews_told.get(r.number) != said:
                self._previews_told[r.number] = said
                self._notify(
                    preview_notice(
                        r.number, r.revision, r.services, r.namespace, r.outcome, r.message
                    )
                )
            elif r.outcome == "deleted":
                self._previews_told.pop(r.number, None)

    def _started(self, environment: str) -> None:
        self._began[environment] = time.monotonic()
        self.metrics.rollout_in_progress.labels(environment).set(1)
        if environment not in self._behind:  # the first rollout since the last success
            self._behind.add(environment)
            self.metrics.behind_since.labels(environment).set_to_current_time()

    def _record(self, result: RolloutResult) -> None:
        self.history.finished(result)
        self.metrics.sync_total.labels(result.environment, str(result.outcome)).inc()
        self.metrics.rollout_in_progress.labels(result.environment).set(0)
        began = self._began.pop(result.environment, None)
        if began is not None:
            self.metrics.sync_duration.labels(result.environment).observe(time.monotonic() - began)
        if result.outcome in (Outcome.FAILED, Outcome.ROLLED_BACK):
            self.metrics.rollout_failed.labels(result.environment).set(1)
        if result.outcome is Outcome.SUCCEEDED:
            self.metrics.rollout_failed.labels(result.environment).set(0)
            self.metrics.behind_since.labels(result.environment).set(0)
            self._behind.discard(result.environment)
            previous = self._applied.get(result.environment)
            if previous is not None and previous != result.revision:
                self.metrics.applied_revision.remove(result.environment, previous)
            self._applied[result.environment] = result.revision
            self.metrics.applied_revision.labels(result.environment, result.revision).set(1)

    def _expected(self) -> list[tuple[str, str, dict[ServiceKey, tuple[str, ...]]]]:
        """Per environment: (name, namespace, {service: its Serve apps}) at the last revision
        (a pinned environment: at its pin), computed once per revision and pins (reading a tree
        of 1,000 manifests is not free)."""
        pins = {name: hold.pinned for name, hold in self._holds.items() if hold.pinned}
        key = (self.last_revision, tuple(sorted(pins.items())))
        if self._expected_at[0] != key:
            report = read_tree_cached(self.source.checkout(self.last_revision))
            rows = []
            for name in ordered_environments(report, self.config.environments or None, ""):
                at = pins.get(name, self.last_revision)
                tree = (
                    report
                    if at == self.last_revision
                    else read_tree_cached(self.source.checkout(at))
                )
                loaded = environment_manifests(tree, name, at[:12])
                apps = {s.key: expected_apps(s) for s in loaded.services}
                rows.append((name, loaded.environment.namespace, apps))
            self._expected_at = (key, rows)
        return self._expected_at[1]

    def _health_gauge(
        self, environment: str, key: ServiceKey, assessment: Assessment, events: bool
    ) -> None:
        """One series per service, labelled with its current health (the old one removed):
        1,000 services are 1,000 series, not one per possible health. With ``events`` (a poll
        that found nothing new: no rollout recorded this change) it is an Event too."""
        with self._series:
            if self.leading:  # else the step-down dropped the series: a standby has none
                self._set_health(environment, key, assessment, events)

    def _set_health(
        self, environment: str, key: ServiceKey, assessment: Assessment, events: bool
    ) -> None:
        health = assessment.health
        previous = self._health.get((environment, key))
        if previous is health:
            return
        if previous is not None:
            self.metrics.service_health.remove(environment, key.namespace, key.name, str(previous))
        if previous is not None and events:
            kind = "Warning" if health in (Health.DEGRADED, Health.MISSING) else "Normal"
            text = f"health changed from {previous} to {health}: {assessment.message}"
            self.recorder(key, kind, str(health), text)
            fields = {"environment": environment, "service": str(key), "health": str(health)}
            log.info("%s: %s %s", environment, key, text, extra=fields)
        self.metrics.service_health.labels(environment, key.namespace, key.name, str(health)).set(1)
        self._health[(environment, key)] = health

    def _refresh_health(self, *, events: bool = False, after_pass: bool = False) -> None:
        """One list per environment namespace: the health gauge for every managed service.
        From the watch-backed cache, only the services whose object (or whose expected
        applications) changed since their last assessment are decoded and assessed again:
        :func:`assess` depends on nothing else. ``after_pass`` also collects what the pass
        left (a full collection)."""
        if not self.last_revision:
            return
        try:
            for name, namespace, wanted in self._expected():
                if not self.leading:  # lost the Lease meanwhile: its series were dropped
                    return
                self.history.environment(name, namespace)
                cache = self.cache if self.services is self.cache else None
                versions = cache.versions(namespace, name) if cache is not None else None
                if versions is None:
                    live = self.services.list_managed(namespace, name)
                    keys = {*live, *wanted}
                else:
                    keys = {
                        key
                        for key in {*versions, *wanted}
                        if self._assessed.get((name, key)) != (versions.get(key), wanted.get(key))
                        or (name, key) not in self._health
                    }
                    names = {key.name for key in keys if key in versions}
                    live = self.services.list_managed(namespace, name, names=names) if names else {}
                for key in sorted(keys):
                    obj = live.get(key)
                    assessment = assess(obj, wanted.get(key, ()))
                    self._health_gauge(name, key, assessment, events)
                    version = (obj or {}).get("metadata", {}).get("resourceVersion")
                    self._assessed[(name, key)] = (version, wanted.get(key))
                del live
        except GitsyncError as exc:
            log.debug("health refresh failed: %s", exc)
        release_memory(full=after_pass)


class _Watching(Quiet):
    """The agent's observer of its passes: progress lines to the log, plans and results to the
    status page and the metrics, Kubernetes Events to the recorder."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def line(self, text: str, fields: Fields = NO_FIELDS) -> None:
        self.agent._progress(text, fields)

    def planned(self, plan: Plan) -> None:
        self.agent._planned(plan)

    def started(self, environment: str) -> None:
        self.agent._started(environment)
        self.agent._notify_started(environment)

    def wave(self, environment: str, event: WaveEvent) -> None:
        self.agent.history.event(environment, event)

    def recorded(self, key: ServiceKey, kind: str, reason: str, message: str) -> None:
        self.agent.recorder(key, kind, reason, message)

    def finished(self, result: RolloutResult) -> None:
        self.agent._record(result)
        self.agent._notify_finished(result)


def release_memory(*, full: bool = True) -> None:
    """Returns freed heap to the OS after a pass or a poll. A pass over 1,000 services parses
    megabytes of API responses; CPython frees the objects, but glibc keeps the pages, so RSS
    would stay at the pass's peak for the agent's lifetime.

    A poll that found nothing new (``full=False``) only collects the young generations: what
    it parsed is acyclic and already freed by reference counting, and a full collection walks
    every object the process holds (tens of milliseconds at every poll, for nothing)."""
    gc.collect() if full else gc.collect(1)
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


_LIBC = _libc()
