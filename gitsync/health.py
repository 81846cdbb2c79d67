"""Health: RayService status → :class:`~gitsync.model.Health`, stricter than Ready=True. Pure.

The rules: docs/architecture.md, 'Health'. KubeRay keeps ``Ready`` True during a cluster
swap and while apps are DEPLOY_FAILED, and in the reconcile that submits a new Serve config it
reports the *old* apps as RUNNING with the *new* generation (it reads statuses before the
PUT). So a service is Healthy only when the generation is observed, no upgrade is in
progress, every app the desired config names is RUNNING with every deployment HEALTHY, and
that held for N consecutive reads (:class:`HealthGate`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gitsync.model import Health

DEGRADED_READY_REASONS = frozenset(
    {"InitializingTimeout", "ValidationFailed", "ZeroServeEndpoints"}
)
FAILED_APP_STATES = frozenset({"DEPLOY_FAILED", "UNHEALTHY"})


@dataclass(frozen=True)
class Assessment:
    health: Health
    message: str


def _condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    for condition in status.get("conditions") or []:
        if isinstance(condition, Mapping) and condition.get("type") == kind:
            return condition
    return {}


def _apps(side: Any) -> dict[str, Mapping[str, Any]]:
    statuses = (side or {}).get("applicationStatuses") or {} if isinstance(side, Mapping) else {}
    return {str(k): v for k, v in statuses.items() if isinstance(v, Mapping)}


_TRACEBACK = "Traceback (most recent call last):"


def _kuberay_message(text: Any) -> str:
    """KubeRay's (Ray Serve's) message on one line, at most about 300 characters. A Python
    traceback in it (a DEPLOY_FAILED app's import error) is cut to what a reader needs: the
    sentence before it and its last line, the exception itself, which a plain cut would lose."""
    raw = str(text or "")
    lines = [line.strip() for line in raw.splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines) if line.startswith(_TRACEBACK)), None)
    if start is not None and start < len(lines) - 1:
        before = " ".join(" ".join(lines[:start]).split())[:150]
        exception = " ".join(lines[-1].split())[:150]
        message = f"{before} … {exception}" if before else exception
    else:
        message = " ".join(raw.split())[:300]
    return f": {message}" if message else ""


def _failing_deployment(app: Mapping[str, Any]) -> str:
    for name, deployment in sorted((app.get("serveDeploymentStatuses") or {}).items()):
        if isinstance(deployment, Mapping) and deployment.get("status") not in (None, "HEALTHY"):
            why = _kuberay_message(deployment.get("message"))
            return f", deployment {name} {deployment.get('status')}{why}"
    return ""


def assess(obj: Mapping[str, Any] | None, expected_apps: tuple[str, ...] = ()) -> Assessment:
    """One read of a RayService. ``expected_apps`` are the applications the applied
    ``serveConfigV2`` names; each must be reported RUNNING (catches the stale-status race)."""
    if obj is None:
        return Assessment(Health.MISSING, "the RayService does not exist")
    status = obj.get("status")
    if not status:
        return Assessment(Health.PROGRESSING, "waiting for KubeRay to report a status")
    if not isinstance(status, Mapping):
        return Assessment(Health.UNKNOWN, "status is not readable")
    cluster = (obj.get("spec") or {}).get("rayClusterConfig") or {}
    if cluster.get("suspend") is True:
        return Assessment(Health.SUSPENDED, "rayClusterConfig.suspend is true")
    generation = (obj.get("metadata") or {}).get("generation")
    observed = status.get("observedGeneration")
    if generation is not None and (not isinstance(observed, int) or observed < generation):
        return Assessment(
            Health.PROGRESSING,
            f"KubeRay has not observed generation {generation} yet (at {observed})",
        )
    return _degraded(status) or _progressing(status, expected_apps) or _healthy(status)


def _degraded(status: Mapping[str, Any]) -> Assessment | None:
    ready = _condition(status, "Ready")
    if ready.get("status") == "False" and ready.get("reason") in DEGRADED_READY_REASONS:
        why = _kuberay_message(ready.get("message"))
        return Assessment(Health.DEGRADED, f"Ready is False ({ready.get('reason')}){why}")
    for name, app in sorted(_apps(status.get("activeServiceStatus")).items()):
        if app.get("status") in FAILED_APP_STATES:
            why = _kuberay_message(app.get("message")) + _failing_deployment(app)
            return Assessment(Health.DEGRADED, f"app {name} is {app.get('status')}{why}")
    pending = status.get("pendingServiceStatus") or {}
    for name, app in sorted(_apps(pending).items()):
        if app.get("status") == "DEPLOY_FAILED":
            where = f"pending cluster {pending.get('rayClusterName', '?')}"
            why = _kuberay_message(app.get("message"))
            return Assessment(Health.DEGRADED, f"app {name} is DEPLOY_FAILED on {where}{why}")
    return None


def _progressing(status: Mapping[str, Any], expected_apps: tuple[str, ...]) -> Assessment | None:
    ready = _condition(status, "Ready")
    if ready.get("status") != "True":
        reason = ready.get("reason") or "no Ready condition yet"
        return Assessment(
            Health.PROGRESSING,
            f"Ready is {ready.get('status', 'unknown')} ({reason}){_pending_detail(status)}",
        )
    if _condition(status, "UpgradeInProgress").get("status") == "True":
        new = (status.get("pendingServiceStatus") or {}).get("rayClusterName", "a new cluster")
        return Assessment(Health.PROGRESSING, f"cluster swap in progress: waiting for {new}")
    active = _apps(status.get("activeServiceStatus"))
    for name in expected_apps:
        if name not in active:
            return Assessment(Health.PROGRESSING, f"app {name} is not reported by KubeRay yet")
    if not active:
        return Assessment(Health.PROGRESSING, "no Serve application reported yet")
    for name, app in sorted(active.items()):
        if app.get("status") != "RUNNING" or _failing_deployment(app):
            why = _failing_deployment(app)
            return Assessment(Health.PROGRESSING, f"app {name} is {app.get('status')}{why}")
    return None


def _pending_detail(status: Mapping[str, Any]) -> str:
    """What the cluster being prepared is doing, for a message while Ready is False."""
    pending = status.get("pendingServiceStatus") or {}
    for name, app in sorted(_apps(pending).items()):
        if app.get("status") != "RUNNING":
            where = pending.get("rayClusterName", "the pending cluster")
            return f": app {name} is {app.get('status')} on {where}"
    return ""


def starting_cluster(obj: Mapping[str, Any] | None) -> str | None:
    """The RayCluster a not-yet-Healthy RayService waits for: the pending one during a swap
    (and on creation, where KubeRay's ``reconcileRayCluster`` prepares the first cluster as
    pending too), else the active one (an in-place change adds pods to it)."""
    status = (obj or {}).get("status") or {}
    for side in ("pendingServiceStatus", "activeServiceStatus"):
        name = (status.get(side) or {}).get("rayClusterName")
        if name:
            return str(name)
    return None


def _healthy(status: Mapping[str, Any]) -> Assessment:
    active = status.get("activeServiceStatus") or {}
    count = len(_apps(active))
    return Assessment(Health.HEALTHY, f"{count} app(s) RUNNING on {active.get('rayClusterName')}")


@dataclass(frozen=True)
class HealthGate:
    """Healthy or Degraded only after ``required`` consecutive reads saying so, spanning at
    least ``settle`` seconds.

    In the reconcile that submits a new Serve config KubeRay reads app statuses before the PUT
    (``reconcileServe``), publishes them with the new generation, and requeues after
    ``ServiceDefaultRequeueDuration`` (2 s). Until that next reconcile every read shows the
    *previous* apps: the old RUNNING (a false Healthy) or, right after a fix or a rollback,
    the old DEPLOY_FAILED (a false Degraded). Counting reads alone is not enough against the
    real operator: the verdict must also outlast the requeue. Any other read resets it.
    """

    required: int = 3
    settle: float = 5.0
    streak: int = 0
    verdict: Health | None = None
    since: float = 0.0

    def observe(self, assessment: Assessment, now: float) -> tuple[HealthGate, Assessment]:
        if assessment.health not in (Health.HEALTHY, Health.DEGRADED):
            return HealthGate(self.required, self.settle), assessment
        same = assessment.health is self.verdict
        streak, since = (self.streak + 1, self.since) if same else (1, now)
        gate = HealthGate(self.required, self.settle, streak, assessment.health, since)
        if streak < self.required or now - since < self.settle:
            word = "healthy" if assessment.health is Health.HEALTHY else "degraded"
            return gate, Assessment(
                Health.PROGRESSING,
                f"{word} for {now - since:.0f}s, {streak} read(s) (needs {self.settle:g}s and "
                f"{self.required}): {assessment.message}",
            )
        return gate, assessment
