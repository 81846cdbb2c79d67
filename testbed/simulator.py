"""A KubeRay v1.5.0 stand-in that writes only RayService status, as KubeRay's controller does.

Two parts:

- :class:`SimulatedRayService` is pure: given the RayService object and the time, it advances
  simulated RayClusters and Serve applications and returns the status KubeRay would write.
  Each step names the ``rayservice_controller.go`` function it mirrors.
- :class:`Simulator` is the controller loop: a watch over RayServices in every namespace and a
  ticker that reconciles each one and writes ``/status`` with optimistic concurrency (a 409 is
  requeued, as controller-runtime does). It never writes spec or metadata.

Clusters exist only in memory: no RayCluster objects, pods or Services are created. Cluster
and Serve decisions come from :mod:`testbed.kuberay_rules`, KubeRay's rules read from its
source on their own. Nothing here imports gitsync (tests/test_layering.py checks it): the
simulator is the yardstick gitsync's predictions are measured against, not a copy of them.
"""

from __future__ import annotations

import copy
import datetime
import json
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import yaml
from kubernetes import client, watch

from testbed import kuberay_rules as rules_of

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayservices"

# Application and deployment states of Ray Serve's REST API, as KubeRay copies them.
APP_RUNNING, APP_DEPLOYING, APP_DEPLOY_FAILED = "RUNNING", "DEPLOYING", "DEPLOY_FAILED"
APP_UNHEALTHY, APP_DELETING = "UNHEALTHY", "DELETING"
DEP_HEALTHY, DEP_UPDATING, DEP_UNHEALTHY = "HEALTHY", "UPDATING", "UNHEALTHY"

# Condition types and reasons (apis/ray/v1/rayservice_types.go).
READY, UPGRADE_IN_PROGRESS = "Ready", "UpgradeInProgress"
INITIALIZING, INITIALIZING_TIMEOUT = "Initializing", "InitializingTimeout"
ZERO_ENDPOINTS, NONZERO_ENDPOINTS = "ZeroServeEndpoints", "NonZeroServeEndpoints"
BOTH_CLUSTERS, NO_PENDING, NO_ACTIVE = (
    "BothActivePendingClustersExist",
    "NoPendingCluster",
    "NoActiveCluster",
)
INITIALIZING_TIMEOUT_ANNOTATION = rules_of.INITIALIZING_TIMEOUT_ANNOTATION

# k8s.io/apimachinery/pkg/util/rand's alphabet, used by utils.GenerateRayClusterName.
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


@dataclass(frozen=True)
class Delays:
    """Seconds each simulated step takes. Zero makes every step complete on the next tick."""

    cluster_start: float = 0.3  # a new RayCluster's head pod becomes ready
    app_deploy: float = 0.3  # a submitted application goes DEPLOYING → RUNNING (or fails)
    tick: float = 0.05  # how often every RayService is reconciled
    # After submitting a Serve config KubeRay requeues (ServiceDefaultRequeueDuration, 2 s) and
    # keeps publishing the statuses it read before the PUT until that next reconcile.
    requeue: float = 2.0


class NamedObject(Protocol):
    """Anything naming a RayService by ``namespace`` and ``name`` (callers pass their own key
    types; the simulator keys its tables by :class:`RayServiceKey`)."""

    @property
    def namespace(self) -> str: ...

    @property
    def name(self) -> str: ...


class RayServiceKey(NamedTuple):
    """One RayService, as KubeRay's work queue names it (``types.NamespacedName``)."""

    namespace: str
    name: str

    @classmethod
    def of(cls, key: NamedObject) -> RayServiceKey:
        return cls(key.namespace, key.name)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class FailureRule:
    """Makes matching application deployments end in ``status`` instead of RUNNING.

    A field left ``None`` matches anything. ``import_path`` matches the application's
    ``import_path`` in serveConfigV2, so a "broken commit" can be expressed in Git alone.
    """

    status: str = APP_DEPLOY_FAILED
    message: str = "simulated deployment failure"
    namespace: str | None = None
    service: str | None = None
    app: str | None = None
    import_path: str | None = None

    def matches(self, key: NamedObject, app: str, import_path: str | None) -> bool:
        return (
            (self.namespace is None or self.namespace == key.namespace)
            and (self.service is None or self.service == key.name)
            and (self.app is None or self.app == app)
            and (self.import_path is None or self.import_path == import_path)
        )


@dataclass
class SimApp:
    status: str
    message: str
    deployments: list[str]
    config: dict[str, Any]
    done_at: float | None = None  # when DEPLOYING or DELETING finishes
    outcome: tuple[str, str] = (APP_RUNNING, "")

    def deployment_statuses(self) -> dict[str, dict[str, str]]:
        dep_status = {
            APP_RUNNING: DEP_HEALTHY,
            APP_DEPLOYING: DEP_UPDATING,
            APP_DELETING: DEP_UPDATING,
        }.get(self.status, DEP_UNHEALTHY)
        return {
            name: {
                "status": dep_status,
                **({"message": self.message} if dep_status == DEP_UNHEALTHY else {}),
            }
            for name in self.deployments
        }


@dataclass
class SimCluster:
    name: str
    spec: dict[str, Any]
    head_ready_at: float
    # constructRayClusterForRayService's annotations, rewritten by modifyRayCluster.
    annotations: rules_of.ClusterAnnotations
    serve_config: str | None = None  # KubeRay's ServeConfigs cache: last string PUT to it
    apps: dict[str, SimApp] = field(default_factory=dict)
    frozen: dict[str, SimApp] | None = None  # what KubeRay read before its last PUT
    frozen_until: float = 0.0  # ... and publishes until its requeue

    def head_ready(self, now: float) -> bool:
        return now >= self.head_ready_at

    def serve_endpoints(self) -> int:
        # One serve-labelled pod per head and per worker replica the cluster was created with.
        # Taken from the cluster's own spec: replicas-only edits never reach it (hash muted).
        workers = sum(
            int(g.get("replicas") or g.get("minReplicas") or 0)
            for g in self.spec.get("workerGroupSpecs") or []
        )
        return 1 + workers


def _app_configs(serve_config_v2: str) -> dict[str, dict[str, Any]]:
    parsed = yaml.safe_load(serve_config_v2) or {}
    return {rules_of.app_name(a.get("name")): a for a in parsed.get("applications") or []}


def _timestamp(now_wall: float) -> str:
    return datetime.datetime.fromtimestamp(now_wall, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class _Decision:
    update_active: bool
    update_pending: bool
    prepare_new: bool


@dataclass
class SimulatedRayService:
    """Everything KubeRay keeps for one RayService: its clusters and their Serve apps."""

    key: RayServiceKey
    delays: Delays
    rules: Callable[[], list[FailureRule]]
    zero_downtime_env: bool = True
    random: random.Random = field(default_factory=random.Random)
    active: SimCluster | None = None
    pending: SimCluster | None = None
    initializing_since: float | None = None
    timed_out: bool = False
    submitted_to: list[str] = field(default_factory=list)  # cluster of every Serve PUT
    # The last decision and what it was taken on: the goal dict is replaced, never edited,
    # and annotations are frozen values, so while none changes the decision holds and a tick
    # does not hash the goal again.
    _decided: tuple[tuple[Any, ...], _Decision] | None = field(default=None, init=False, repr=False)

    # -- the reconcile ---------------------------------------------------------------------

    def reconcile(self, obj: Mapping[str, Any], now: float, now_wall: float) -> dict[str, Any]:
        """One pass of ``RayServiceReconciler.Reconcile``; returns the status to hold."""
        previous = copy.deepcopy(obj.get("status") or {})
        if self.timed_out:  # InitializingTimeout is terminal: Reconcile only cleans up.
            return previous
        spec = obj.get("spec") or {}
        goal_cluster = spec.get("rayClusterConfig") or {}
        serve_config = spec.get("serveConfigV2") or ""

        self._advance(now)
        prepare_new = self._reconcile_clusters(spec, goal_cluster, now)
        observed = self._reconcile_serve(serve_config, now, prepare_new)
        if not self._promote(observed) and prepare_new:
            # calculateStatus names the new pending cluster after Serve was reconciled (and
            # not when a promotion just happened); KubeRay creates it on the next reconcile,
            # here at once. A pending cluster it replaces is abandoned.
            self.pending = self._new_cluster(goal_cluster, now)
        return self._status(obj, previous, observed, now, now_wall)

    def _advance(self, now: float) -> None:
        """Ray Serve's own progress between reconciles: deploys finish, deletions complete."""
        for cluster in (self.active, self.pending):
            if cluster is None:
                continue
            for name, app in list(cluster.apps.items()):
                if app.done_at is None or now < app.done_at:
                    continue
                if app.status == APP_DELETING:
                    del cluster.apps[name]
                else:
                    app.status, app.message = app.outcome
                    app.done_at = None

    def _new_cluster(self, goal: dict[str, Any], now: float) -> SimCluster:
        """``createRayClusterInstance`` under the name ``calculateStatus`` chose:
        ``utils.GenerateRayClusterName`` is ``<rayservice>-<5 random chars>``, no truncation."""
        suffix = "".join(self.random.choice(_NAME_ALPHABET) for _ in range(5))
        return SimCluster(
            f"{self.key.name}-{suffix}",
            copy.deepcopy(goal),
            now + self.delays.cluster_start,
            rules_of.ClusterAnnotations.of(goal),
        )

    def _operator_env(self) -> dict[str, str]:
        return {rules_of.ENABLE_ZERO_DOWNTIME: "true" if self.zero_downtime_env else "false"}

    def _decide(self, spec: Mapping[str, Any], goal: dict[str, Any]) -> _Decision:
        """``reconcileRayCluster``'s two ``shouldUpdateCluster`` calls and ``calculateStatus``'s
        ``shouldPrepareNewCluster``, for the clusters as they are now. ``UpgradeInProgress``
        is True exactly while an active and a pending cluster both exist."""
        active = self.active.annotations if self.active is not None else None
        pending = self.pending.annotations if self.pending is not None else None
        strategy = spec.get("upgradeStrategy")
        env = self._operator_env()
        inputs = (goal, active, pending, json.dumps(strategy, sort_keys=True), env)
        known = self._decided
        if known is not None and known[0][0] is goal and known[0][1:] == inputs[1:]:
            return known[1]
        in_progress = active is not None and pending is not None
        decision = _Decision(
            update_active=rules_of.should_update_cluster(
                goal, active, is_active=True, upgrade_in_progress=in_progress
            ),
            update_pending=rules_of.should_update_cluster(
                goal, pending, is_active=False, upgrade_in_progress=in_progress
            ),
            prepare_new=rules_of.should_prepare_new_cluster(goal, strategy, env, active, pending),
        )
        self._decided = (inputs, decision)
        return decision

    def _reconcile_clusters(
        self, spec: Mapping[str, Any], goal: dict[str, Any], now: float
    ) -> bool:
        """``reconcileRayCluster``; returns whether ``shouldPrepareNewCluster`` asks for a new
        pending cluster (:meth:`reconcile` makes it after the Serve step, as KubeRay does).

        In place (``modifyRayCluster``): the whole goal spec replaces the cluster's, replicas
        included. A new pending cluster replaces a pending one that no longer matches (an edit
        during a swap; reverting to the active spec too, as it differs from the pending one).
        A cluster change with zero-downtime upgrades disabled is ignored without a word.
        """
        if self.active is None and self.pending is None:
            self.pending = self._new_cluster(goal, now)
            self.initializing_since = now
            return False
        decision = self._decide(spec, goal)
        if decision.update_active and self.active is not None:
            self.active.spec = copy.deepcopy(goal)
            self.active.annotations = rules_of.ClusterAnnotations.of(goal)
        elif decision.update_pending and self.pending is not None:
            self.pending.spec = copy.deepcopy(goal)
            self.pending.annotations = rules_of.ClusterAnnotations.of(goal)
        else:
            return decision.prepare_new
        return False

    def _reconcile_serve(
        self, serve_config: str, now: float, preparing: bool
    ) -> dict[str, dict[str, SimApp]]:
        """``Reconcile``'s Serve step: ``reconcileServe`` for the pending cluster during a
        swap, else for the active one unless a new cluster is being prepared (then for none);
        never both. A pending cluster about to be replaced still gets the new config first.
        Returns the app statuses this reconcile
        reports, by cluster: only the reconciled cluster's, and only once its head is ready
        (``calculateStatus`` copies nil for the other, so an active cluster's applications go
        unreported during a swap). They are read *before* the PUT (``getAndCheckServeStatus``
        then ``updateServeDeployment``): in the reconcile that submits a new config, the old
        statuses go out with the new generation."""
        target = self.pending or (None if preparing else self.active)
        if target is None or not target.head_ready(now):
            return {}
        apps = (
            target.frozen
            if target.frozen is not None and now < target.frozen_until
            else target.apps
        )
        observed = {target.name: {name: copy.copy(app) for name, app in apps.items()}}
        # The GET before the PUT sees the applications Serve has now, submitted or not.
        if rules_of.need_submit_serve_applications(
            target.serve_config or "", serve_config, len(target.apps)
        ):
            self._submit(target, serve_config, now)
        return observed

    def _submit(self, cluster: SimCluster, serve_config: str, now: float) -> None:
        """``updateServeDeployment`` and Ray Serve's PUT /api/serve/applications/: changed or
        new apps redeploy, missing apps are deleted, unchanged apps keep running. A config
        that is not YAML is never PUT (KubeRay fails to convert it and retries); an empty one
        is PUT but not cached (``cacheServeConfig``), so it is PUT again every reconcile."""
        try:
            goal = _app_configs(serve_config)
        except yaml.YAMLError:
            return
        cluster.serve_config = serve_config or None
        self.submitted_to.append(cluster.name)
        cluster.frozen = {name: copy.copy(app) for name, app in cluster.apps.items()}
        cluster.frozen_until = now + self.delays.requeue
        rules = self.rules()
        for name, config in goal.items():
            current = cluster.apps.get(name)
            if current is not None and current.config == config and current.status != APP_DELETING:
                continue
            import_path = config.get("import_path")
            outcome = (APP_RUNNING, "")
            for rule in rules:
                if rule.matches(self.key, name, import_path):
                    outcome = (rule.status, rule.message)
                    break
            deployments = [str(d["name"]) for d in config.get("deployments") or [] if d.get("name")]
            cluster.apps[name] = SimApp(
                APP_DEPLOYING,
                "",
                deployments or [name],
                copy.deepcopy(config),
                done_at=now + self.delays.app_deploy,
                outcome=outcome,
            )
        for name, app in cluster.apps.items():
            if name not in goal and app.status != APP_DELETING:
                app.status, app.message, app.done_at = (
                    APP_DELETING,
                    "",
                    now + self.delays.app_deploy,
                )

    def _promote(self, observed: Mapping[str, Mapping[str, SimApp]]) -> bool:
        """``reconcilePromotionAndServingStatus``: a pending cluster whose head is ready and
        whose apps (as read this reconcile) are all RUNNING takes the serve Service."""
        pending = self.pending
        if pending is None:
            return False
        apps = observed.get(pending.name) or {}
        if apps and all(app.status == APP_RUNNING for app in apps.values()):
            self.active, self.pending = pending, None
            self.initializing_since = None
            return True
        return False

    # -- status ----------------------------------------------------------------------------

    def _service_status(
        self, cluster: SimCluster | None, apps: Mapping[str, SimApp] | None
    ) -> dict[str, Any]:
        if cluster is None:
            return {}
        statuses = {
            name: {
                "status": app.status,
                **({"message": app.message} if app.message else {}),
                "serveDeploymentStatuses": app.deployment_statuses(),
            }
            for name, app in sorted((apps or {}).items())
        }
        return {
            "rayClusterName": cluster.name,
            **({"applicationStatuses": statuses} if statuses else {}),
        }

    def _status(
        self,
        obj: Mapping[str, Any],
        previous: dict[str, Any],
        observed: Mapping[str, Mapping[str, SimApp]],
        now: float,
        now_wall: float,
    ) -> dict[str, Any]:
        """``calculateStatus`` + ``calculateConditions``."""
        generation = int((obj.get("metadata") or {}).get("generation") or 0)
        endpoints = self.active.serve_endpoints() if self.active is not None else 0
        status: dict[str, Any] = {
            "observedGeneration": generation,
            "numServeEndpoints": endpoints,
            "activeServiceStatus": self._service_status(
                self.active, observed.get(self.active.name) if self.active else None
            ),
            "pendingServiceStatus": self._service_status(
                self.pending, observed.get(self.pending.name) if self.pending else None
            ),
        }
        conditions = {c["type"]: c for c in copy.deepcopy(previous.get("conditions") or [])}
        if not conditions:
            for kind in (READY, UPGRADE_IN_PROGRESS):
                conditions[kind] = self._condition(
                    None,
                    kind,
                    "False",
                    INITIALIZING,
                    "RayService is initializing",
                    generation,
                    now_wall,
                )
        ready = conditions[READY]
        if endpoints > 0:
            ready = self._condition(
                ready,
                READY,
                "True",
                NONZERO_ENDPOINTS,
                "Number of serve endpoints is greater than 0",
                generation,
                now_wall,
            )
        elif ready["status"] == "True":
            ready = self._condition(
                ready,
                READY,
                "False",
                ZERO_ENDPOINTS,
                "Number of serve endpoints dropped to 0",
                generation,
                now_wall,
            )
        else:
            ready = self._initializing_timeout(obj, ready, generation, now, now_wall, status)
        conditions[READY] = ready
        upgrade = conditions[UPGRADE_IN_PROGRESS]
        if self.active is not None and self.pending is not None:
            upgrade = self._condition(
                upgrade,
                UPGRADE_IN_PROGRESS,
                "True",
                BOTH_CLUSTERS,
                "Both active and pending Ray clusters exist",
                generation,
                now_wall,
            )
        elif self.active is not None:
            upgrade = self._condition(
                upgrade,
                UPGRADE_IN_PROGRESS,
                "False",
                NO_PENDING,
                "Active Ray cluster exists and no pending Ray cluster",
                generation,
                now_wall,
            )
        elif upgrade["reason"] not in (INITIALIZING, INITIALIZING_TIMEOUT):
            upgrade = self._condition(
                upgrade,
                UPGRADE_IN_PROGRESS,
                "Unknown",
                NO_ACTIVE,
                "No active Ray cluster exists, and the RayService is not initializing",
                generation,
                now_wall,
            )
        else:
            upgrade = self._condition(
                upgrade,
                UPGRADE_IN_PROGRESS,
                upgrade["status"],
                upgrade["reason"],
                upgrade.get("message", ""),
                generation,
                now_wall,
            )
        conditions[UPGRADE_IN_PROGRESS] = upgrade
        status["conditions"] = [conditions[READY], conditions[UPGRADE_IN_PROGRESS]]
        # serviceStatus is deprecated (v1.3+) but still written: Running exactly when Ready.
        status["serviceStatus"] = "Running" if ready["status"] == "True" else ""
        return status

    def _initializing_timeout(
        self,
        obj: Mapping[str, Any],
        ready: dict[str, Any],
        generation: int,
        now: float,
        now_wall: float,
        status: dict[str, Any],
    ) -> dict[str, Any]:
        """``markFailedOnInitializingTimeout``: terminal once the annotation's timeout passes."""
        annotations = (obj.get("metadata") or {}).get("annotations") or {}
        timeout = rules_of.parse_initializing_timeout(
            str(annotations.get(INITIALIZING_TIMEOUT_ANNOTATION, ""))
        )
        if (
            timeout is not None
            and ready.get("reason") == INITIALIZING
            and self.initializing_since is not None
            and now - self.initializing_since > timeout
        ):
            self.timed_out = True
            self.active = self.pending = None
            status["activeServiceStatus"], status["pendingServiceStatus"] = {}, {}
            return self._condition(
                ready,
                READY,
                "False",
                INITIALIZING_TIMEOUT,
                "RayService failed to initialize within "
                + annotations[INITIALIZING_TIMEOUT_ANNOTATION],
                generation,
                now_wall,
            )
        return self._condition(
            ready,
            READY,
            ready["status"],
            ready["reason"],
            ready.get("message", ""),
            generation,
            now_wall,
        )

    @staticmethod
    def _condition(
        current: Mapping[str, Any] | None,
        kind: str,
        status: str,
        reason: str,
        message: str,
        generation: int,
        now_wall: float,
    ) -> dict[str, Any]:
        """``meta.SetStatusCondition``: the transition time moves only when status changes."""
        transition = (
            current["lastTransitionTime"]
            if current is not None
            and current.get("status") == status
            and current.get("lastTransitionTime")
            else _timestamp(now_wall)
        )
        return {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "observedGeneration": generation,
            "lastTransitionTime": transition,
        }

    def break_app(self, app: str, status: str, message: str) -> None:
        """An application on the active cluster fails after it was RUNNING (a crash)."""
        if self.active is None or app not in self.active.apps:
            raise KeyError(f"{self.key}: no application {app!r} on the active cluster")
        target = self.active.apps[app]
        target.status, target.message, target.done_at = status, message, None


def status_changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """``utils.InconsistentRayServiceStatuses`` generalised: any difference but the timestamp."""

    def stripped(status: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in status.items() if k != "lastUpdateTime"}

    def canonical(status: Mapping[str, Any]) -> str:
        return json.dumps(stripped(status), sort_keys=True)

    # Equal dicts are the common case (a tick that changes nothing) and cost no serialising;
    # unequal ones may still be the same JSON (a tuple against the API's list).
    return stripped(old) != stripped(new) and canonical(old) != canonical(new)


class Simulator:
    """Runs :class:`SimulatedRayService` for every RayService the API server has.

    ``start()`` spawns a watch thread and a reconcile thread; ``stop()`` ends both. Rules and
    the zero-downtime switch can be changed while it runs.
    """

    def __init__(
        self,
        api: client.ApiClient,
        delays: Delays | None = None,
        *,
        zero_downtime_env: bool = True,
        seed: int | None = None,
    ) -> None:
        self.api = api
        self.custom = client.CustomObjectsApi(api)
        self.delays = delays or Delays()
        self.zero_downtime_env = zero_downtime_env
        self._rules: list[FailureRule] = []
        self._random = random.Random(seed)
        self._objects: dict[RayServiceKey, dict[str, Any]] = {}
        self._states: dict[RayServiceKey, SimulatedRayService] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.errors: list[str] = []
        # Namespaces where the real KubeRay operator writes status instead (testbed.operator).
        self.exclude_namespaces: set[str] = set()
        # When set, the only namespaces this simulator acts in (an operator's watch-namespace).
        self.only_namespaces: set[str] | None = None
        self._passes = 0  # reconcile passes over every RayService completed

    # -- control ---------------------------------------------------------------------------

    def add_rule(self, rule: FailureRule) -> None:
        with self._lock:
            self._rules.append(rule)

    def clear_rules(self) -> None:
        with self._lock:
            self._rules.clear()

    def _current_rules(self) -> list[FailureRule]:
        return list(self._rules)

    def retime(self, delays: Delays) -> None:
        """New delays for every RayService, those already simulated too (setting
        ``delays`` alone reaches only the ones created after it)."""
        with self._lock:
            self.delays = delays
            for state in self._states.values():
                state.delays = delays

    def break_app(
        self,
        key: NamedObject,
        app: str,
        status: str = APP_UNHEALTHY,
        message: str = "simulated crash",
    ) -> None:
        with self._lock:
            self._states[RayServiceKey.of(key)].break_app(app, status, message)

    def submissions(self, key: NamedObject) -> list[str]:
        """The cluster each Serve config PUT for ``key`` went to, in order."""
        with self._lock:
            state = self._states.get(RayServiceKey.of(key))
            return list(state.submitted_to) if state else []

    def cluster_spec(self, key: NamedObject, cluster: str) -> dict[str, Any] | None:
        """The spec simulated RayCluster ``cluster`` of ``key`` has now (None when it has none):
        what a RayCluster object's ``spec`` would say, in-place updates included."""
        with self._lock:
            state = self._states.get(RayServiceKey.of(key))
            for candidate in (state.active, state.pending) if state else ():
                if candidate is not None and candidate.name == cluster:
                    return copy.deepcopy(candidate.spec)
        return None

    def start(self) -> Simulator:
        self._stop.clear()
        for target, name in (
            (self._watch_loop, "sim-watch"),
            (self._reconcile_loop, "sim-reconcile"),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- loops -----------------------------------------------------------------------------

    def _watch_loop(self) -> None:
        """List once, then watch from the list's resourceVersion; relist only when the watch
        reports an error (410 Gone after compaction) or the connection fails."""
        version: str | None = None
        while not self._stop.is_set():
            try:
                if version is None:
                    version = self._relist()
                # Short server-side timeouts end each watch cleanly, so stop() returns quickly.
                for event in watch.Watch().stream(
                    self.custom.list_cluster_custom_object,
                    GROUP,
                    VERSION,
                    PLURAL,
                    resource_version=version,
                    timeout_seconds=2,
                ):
                    item = event["object"]
                    if event["type"] == "ERROR":
                        version = None
                        break
                    version = item["metadata"]["resourceVersion"]
                    key = RayServiceKey(item["metadata"]["namespace"], item["metadata"]["name"])
                    with self._lock:
                        if event["type"] == "DELETED":
                            self._forget(key)
                        else:
                            self._objects[key] = item
                    if self._stop.is_set():
                        return
            except Exception as exc:  # the loop must outlive API hiccups, like a controller
                if self._stop.is_set():
                    return
                self.errors.append(f"watch: {exc}")
                version = None
                self._stop.wait(0.5)

    def _relist(self) -> str:
        listing = self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
        with self._lock:
            seen = set()
            for item in listing.get("items", []):
                key = RayServiceKey(item["metadata"]["namespace"], item["metadata"]["name"])
                self._objects[key] = item
                seen.add(key)
            for key in set(self._objects) - seen:
                self._forget(key)
        version: str = listing["metadata"]["resourceVersion"]
        return version

    def _forget(self, key: RayServiceKey) -> None:
        self._objects.pop(key, None)
        self._states.pop(key, None)

    def _reconcile_loop(self) -> None:
        while not self._stop.wait(self.delays.tick):
            with self._lock:
                work = list(self._objects.items())
            for key, obj in work:
                try:
                    self._reconcile_one(key, obj)
                except Exception as exc:
                    self.errors.append(f"{key}: {exc}")
            self._passes += 1

    def settle(self, timeout: float = 30.0) -> None:
        """Returns once a whole reconcile pass began and ended after the call: a status write
        in flight when ``exclude_namespaces`` changed has landed, and no later one will."""
        target = self._passes + 2  # the pass under way may have begun before the call
        deadline = time.monotonic() + timeout
        while self._passes < target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the simulator made no reconcile pass in {timeout:.0f} s")
            time.sleep(self.delays.tick / 2)

    def _reconcile_one(self, key: RayServiceKey, obj: dict[str, Any]) -> None:
        if key.namespace in self.exclude_namespaces or (
            self.only_namespaces is not None and key.namespace not in self.only_namespaces
        ):
            return
        with self._lock:
            if self._objects.get(key) is not obj:
                return  # replaced or deleted since the loop took it
            state = self._states.get(key)
            if state is None:
                state = SimulatedRayService(
                    key,
                    self.delays,
                    self._current_rules,
                    self.zero_downtime_env,
                    random.Random(self._random.random()),
                )
                self._states[key] = state
            state.zero_downtime_env = self.zero_downtime_env
            invalid = rules_of.validate_rayservice_metadata(obj.get("metadata") or {})
            now = time.monotonic()
            new_status = None if invalid else state.reconcile(obj, now, time.time())
        # ValidateRayServiceMetadata failing: KubeRay emits an event and writes no status.
        if new_status is None or not status_changed(obj.get("status") or {}, new_status):
            return
        new_status["lastUpdateTime"] = _timestamp(time.time())
        body = {**obj, "status": new_status}
        try:
            written = self.custom.replace_namespaced_custom_object_status(
                GROUP, VERSION, key.namespace, PLURAL, key.name, body
            )
        except client.ApiException as exc:
            if exc.status in (404, 409):
                self._refresh(key)  # stale resourceVersion: requeue with the latest object
                return
            raise
        with self._lock:
            if self._objects.get(key) is obj:
                self._objects[key] = written

    def _refresh(self, key: RayServiceKey) -> None:
        try:
            latest = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, key.namespace, PLURAL, key.name
            )
        except client.ApiException as exc:
            if exc.status == 404:
                with self._lock:
                    self._forget(key)
                return
            raise
        with self._lock:
            current = self._objects.get(key)
            if current is None or int(current["metadata"]["resourceVersion"]) <= int(
                latest["metadata"]["resourceVersion"]
            ):
                self._objects[key] = latest


def main(argv: list[str] | None = None) -> None:
    """``python -m testbed.simulator --kubeconfig K``: the simulator as a process of its own
    (as KubeRay is), until SIGTERM or SIGINT. Benchmarks use it so its CPU time is not the
    measured process's."""
    import argparse  # noqa: PLC0415 - only the process entry point needs them
    import signal  # noqa: PLC0415

    from kubernetes import config  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="python -m testbed.simulator")
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--cluster-start", type=float, default=Delays.cluster_start)
    parser.add_argument("--app-deploy", type=float, default=Delays.app_deploy)
    parser.add_argument("--tick", type=float, default=Delays.tick)
    parser.add_argument("--requeue", type=float, default=Delays.requeue)
    args = parser.parse_args(argv)
    configuration = client.Configuration()
    config.load_kube_config(args.kubeconfig, client_configuration=configuration)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    delays = Delays(args.cluster_start, args.app_deploy, args.tick, args.requeue)
    with client.ApiClient(configuration) as api, Simulator(api, delays) as simulator:
        print("simulator running", flush=True)  # the parent waits for this line
        stop.wait()
        for error in simulator.errors[-5:]:
            print(f"simulator error: {error}", flush=True)


if __name__ == "__main__":
    main()

__all__ = [
    "Delays",
    "FailureRule",
    "RayServiceKey",
    "SimulatedRayService",
    "Simulator",
    "status_changed",
]
