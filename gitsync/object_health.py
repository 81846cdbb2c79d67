"""Health of the other kinds a repository allows (``allowedKinds``): one generic rule, as
kstatus (sigs.k8s.io/cli-utils/pkg/kstatus) computes it, since gitsync cannot know every
kind's controller. Pure.

In order:

- being deleted → Progressing;
- ``status.observedGeneration`` below ``metadata.generation`` → Progressing: the controller
  has not seen the applied spec yet (kstatus's generic check);
- ``Stalled`` True, or ``Progressing`` False with ``ProgressDeadlineExceeded`` (a Deployment's
  rollout gave up), or ``Ready``/``Available`` False with a reason naming a failure
  (``…Failed``, ``…Error``) → Degraded;
- ``Reconciling`` True, ``Ready`` or ``Available`` False → Progressing;
- for the workload kinds below, ``spec.replicas`` not yet updated, ready and available
  (``status.updatedReplicas``, ``readyReplicas``, ``availableReplicas``, as kstatus checks
  Deployments, StatefulSets and ReplicaSets), or old replicas still running → Progressing;
- a workload kind whose controller always writes a status (Deployment, StatefulSet,
  DaemonSet, ReplicaSet, Job) without one yet → Progressing;
- anything else → Healthy: a ConfigMap, Service, HTTPRoute or ServiceMonitor has no status
  to wait for, so it is Healthy once applied.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gitsync.health import Assessment
from gitsync.model import Health

# Kinds whose controller always reports a status: until it has, the object is not ready.
STATUS_WRITERS = frozenset(
    {
        ("apps", "Deployment"),
        ("apps", "StatefulSet"),
        ("apps", "DaemonSet"),
        ("apps", "ReplicaSet"),
        ("batch", "Job"),
    }
)
_FAILURE_WORDS = ("Failed", "Failure", "Error")


def _conditions(status: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {
        str(c.get("type")): c
        for c in status.get("conditions") or []
        if isinstance(c, Mapping) and c.get("type")
    }


def _said(condition: Mapping[str, Any]) -> str:
    reason, text = condition.get("reason") or "", condition.get("message") or ""
    return f"{condition.get('type')} {condition.get('status')}" + (
        f" ({reason}{': ' if reason and text else ''}{text})" if reason or text else ""
    )


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def assess_object(obj: Mapping[str, Any] | None) -> Assessment:  # noqa: PLR0911 - one per rule
    if obj is None:
        return Assessment(Health.MISSING, "not found")
    metadata = obj.get("metadata") or {}
    kind = str(obj.get("kind", ""))
    if metadata.get("deletionTimestamp"):
        return Assessment(Health.PROGRESSING, "being deleted")
    status = obj.get("status")
    group = str(obj.get("apiVersion", "")).rpartition("/")[0]
    if not isinstance(status, Mapping) or not status:
        if (group, kind) in STATUS_WRITERS:
            return Assessment(Health.PROGRESSING, f"waiting for the {kind} controller's status")
        return Assessment(Health.HEALTHY, "applied (it reports no status)")
    generation, observed = _int(metadata.get("generation")), _int(status.get("observedGeneration"))
    if generation is not None and observed is not None and observed < generation:
        return Assessment(
            Health.PROGRESSING, f"generation {generation} not observed yet (at {observed})"
        )
    conditions = _conditions(status)
    stalled = conditions.get("Stalled", {})
    if stalled.get("status") == "True":
        return Assessment(Health.DEGRADED, _said(stalled))
    progressing = conditions.get("Progressing", {})
    if progressing.get("status") == "False" and progressing.get("reason") == (
        "ProgressDeadlineExceeded"
    ):
        return Assessment(Health.DEGRADED, _said(progressing))
    for name in ("Ready", "Available"):
        condition = conditions.get(name, {})
        if condition.get("status") == "False":
            failed = any(word in str(condition.get("reason", "")) for word in _FAILURE_WORDS)
            return Assessment(Health.DEGRADED if failed else Health.PROGRESSING, _said(condition))
    reconciling = conditions.get("Reconciling", {})
    if reconciling.get("status") == "True":
        return Assessment(Health.PROGRESSING, _said(reconciling))
    replicas = _replicas(obj, status) if (group, kind) in STATUS_WRITERS else ""
    if replicas:
        return Assessment(Health.PROGRESSING, replicas)
    ready = next(
        (_said(conditions[n]) for n in ("Ready", "Available") if n in conditions), "status ok"
    )
    return Assessment(Health.HEALTHY, ready)


def _replicas(obj: Mapping[str, Any], status: Mapping[str, Any]) -> str:
    """What a workload still waits for, as kstatus checks Deployments and StatefulSets."""
    spec = obj.get("spec") if isinstance(obj.get("spec"), Mapping) else {}
    wanted = _int((spec or {}).get("replicas"))
    if wanted is None:
        return ""
    for field in ("updatedReplicas", "readyReplicas", "availableReplicas"):
        have = _int(status.get(field))
        if field in status and have is not None and have < wanted:
            return f"{field} {have} of {wanted}"
        if field not in status and wanted > 0 and field != "availableReplicas":
            return f"{field} 0 of {wanted}"
    total, updated = _int(status.get("replicas")), _int(status.get("updatedReplicas"))
    if total is not None and updated is not None and total > updated:
        return f"{total - updated} old replica(s) pending termination"
    return ""
