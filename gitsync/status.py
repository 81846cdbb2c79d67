"""``gitsync status``: what the cluster says about every environment — its recorded rollout
(the state ConfigMaps), the health of each RayService and each object of the other kinds it
manages (``allowedKinds``: the kinds its rollout recorded), and the last drift check — read
from the cluster alone: no Git, no forge, no credentials but the kubeconfig's.

An environment is *settled* when its last rollout succeeded and every service it manages is
Healthy and not drifted from what was applied (a service whose reconcile is disabled is
reported, and does not unsettle it: gitsync does not manage it now). The command exits 0 only
when every environment is settled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gitsync import kuberay
from gitsync.health import assess
from gitsync.kube.rayservices import RayServices
from gitsync.kube.state import DriftRecord, StateStore
from gitsync.model import Health, Hold, Phase, RolloutState, ServiceKey
from gitsync.names import ENVIRONMENT, REVISION
from gitsync.object_health import assess_object
from gitsync.stamp import reconcile_disabled


@dataclass(frozen=True)
class ServiceStatus:
    key: ServiceKey
    revision: str  # the revision that last applied it (its annotation)
    health: Health
    message: str
    disabled: bool = False  # gitsync.ray.io/reconcile: disabled
    drift: str = ""  # "", "drifted" or "fighting", from the last drift check
    drift_message: str = ""

    @property
    def settled(self) -> bool:
        return self.disabled or (self.health is Health.HEALTHY and not self.drift)


@dataclass(frozen=True)
class EnvironmentStatus:
    name: str
    state: RolloutState | None
    services: tuple[ServiceStatus, ...]
    drift: DriftRecord
    hold: Hold = field(default_factory=Hold)  # suspended or pinned (gitsync suspend, pin)

    @property
    def settled(self) -> bool:
        """The last rollout succeeded, every service is Healthy as it was applied, and the
        environment follows its branch (neither suspended nor pinned)."""
        return (
            not self.hold.held
            and self.state is not None
            and self.state.phase is Phase.SUCCEEDED
            and all(s.settled for s in self.services)
        )


def _expected_apps(obj: Mapping[str, Any]) -> tuple[str, ...]:
    """The Serve applications the applied serveConfigV2 names (the live spec is what gitsync
    applied), each of which must be RUNNING."""
    try:
        return tuple(kuberay.serve_application_names((obj.get("spec") or {}).get("serveConfigV2")))
    except ValueError:
        return ()


def service_status(obj: Mapping[str, Any], finding: Mapping[str, Any] | None) -> ServiceStatus:
    """One managed object's row: a RayService by gitsync's rules (docs/architecture.md,
    'Health'), any other kind by the generic rule (:mod:`gitsync.object_health`)."""
    metadata = obj.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    key = ServiceKey(
        str(metadata.get("namespace")),
        str(metadata.get("name")),
        str(obj.get("kind") or "RayService"),
        str(obj.get("apiVersion") or "ray.io/v1"),
    )
    result = assess(obj, _expected_apps(obj)) if key.is_rayservice else assess_object(obj)
    drift = ("fighting" if finding.get("fighting") else "drifted") if finding else ""
    return ServiceStatus(
        key,
        str(annotations.get(REVISION, "")),
        result.health,
        result.message,
        reconcile_disabled(obj, None),
        drift,
        str((finding or {}).get("message", "")),
    )


def cluster_status(
    services: RayServices, store: StateStore, namespaces: Sequence[str] = ()
) -> list[EnvironmentStatus]:
    """Every environment this agent recorded (a state ConfigMap in ``store``'s namespace), by
    name, with the RayServices labelled with it in the namespace its rollout recorded.
    ``namespaces``: where to look for environments whose record names no namespace (written
    by an older gitsync); without, every namespace (RBAC to list RayServices cluster-wide)."""
    recorded = store.read_states()
    holds = store.holds()
    unplaced = [name for name, (state, _) in recorded.items() if not (state and state.namespace)]
    everywhere: list[dict[str, Any]] = []
    if unplaced:
        everywhere = (
            [o for namespace in namespaces for o in services.list_every_managed(namespace)]
            if namespaces
            else services.list_every_managed()
        )
    rows = []
    for name in sorted(recorded):
        state, drift = recorded[name]
        if state is not None and state.namespace:
            objects = list(services.list_managed(state.namespace, name).values())
            for kind in state.kinds:
                api_version, _, kind_name = kind.rpartition("/")
                objects += services.objects.list_managed(
                    state.namespace, name, api_version, kind_name
                ).values()
        else:
            objects = [o for o in everywhere if _environment(o) == name]
        findings = {str(f.get("service")): f for f in drift.findings}
        statuses = [service_status(obj, findings.get(_key(obj))) for obj in objects]
        live = {_key(obj) for obj in objects}
        known = {k.rpartition("/")[2]: k.rpartition("/")[0] for k in state.kinds} if state else {}
        # Deleted by hand since it was applied: the drift check found it missing.
        statuses += [
            ServiceStatus(
                missing,
                "",
                Health.MISSING,
                f"the {missing.kind} does not exist",
                drift="fighting" if finding.get("fighting") else "drifted",
                drift_message=str(finding.get("message", "")),
            )
            for service, finding in findings.items()
            if service not in live and (missing := _finding_key(service, known)) is not None
        ]
        # RayServices first, then the other kinds, kind by kind (as `kubectl get` groups).
        statuses.sort(key=lambda s: (not s.key.is_rayservice, s.key.kind, s.key))
        rows.append(EnvironmentStatus(name, state, tuple(statuses), drift, holds.get(name, Hold())))
    return rows


def _environment(obj: Mapping[str, Any]) -> str:
    return str(((obj.get("metadata") or {}).get("labels") or {}).get(ENVIRONMENT, ""))


def _key(obj: Mapping[str, Any]) -> str:
    """As a drift finding names it: ``namespace/name``, ``namespace/Kind/name`` (ServiceKey)."""
    metadata = obj.get("metadata") or {}
    kind = str(obj.get("kind") or "RayService")
    middle = "" if kind == "RayService" else f"{kind}/"
    return f"{metadata.get('namespace')}/{middle}{metadata.get('name')}"


def _finding_key(service: str, kinds: Mapping[str, str]) -> ServiceKey | None:
    """The key a drift finding names (``namespace/name`` or ``namespace/Kind/name``, the
    apiVersion from the kinds the rollout recorded); None for anything else."""
    parts = service.split("/")
    if len(parts) == 2 and all(parts):
        return ServiceKey(parts[0], parts[1])
    if len(parts) == 3 and all(parts) and parts[1] in kinds:
        return ServiceKey(parts[0], parts[2], parts[1], kinds[parts[1]])
    return None


def status_json(rows: Sequence[EnvironmentStatus]) -> dict[str, Any]:
    """``gitsync status -o json`` (docs/cli.md)."""
    return {
        "settled": all(r.settled for r in rows),
        "environments": [
            {
                "name": r.name,
                "settled": r.settled,
                "rollout": None
                if r.state is None
                else {
                    "phase": str(r.state.phase),
                    "revision": r.state.revision,
                    "wave": r.state.wave,
                    "started": r.state.started,
                    "finished": r.state.finished,
                    "message": r.state.message,
                    "lastHealthyRevision": r.state.last_healthy_revision,
                },
                "driftCheck": {
                    "checked": r.drift.checked,
                    "revision": r.drift.revision,
                    "drifted": len(r.drift.findings),
                }
                if r.drift.checked
                else None,
                "kinds": list(r.state.kinds) if r.state else [],
                "hold": _hold_json(r.hold),
                "services": [
                    {
                        "namespace": s.key.namespace,
                        "name": s.key.name,
                        "kind": s.key.kind,
                        "apiVersion": s.key.api_version,
                        "health": str(s.health),
                        "message": s.message,
                        "revision": s.revision,
                        "reconcile": "disabled" if s.disabled else "enabled",
                        "drift": {"kind": s.drift, "message": s.drift_message} if s.drift else None,
                    }
                    for s in r.services
                ],
            }
            for r in rows
        ],
    }


def _hold_json(hold: Hold) -> dict[str, Any] | None:
    """``hold`` in ``gitsync status -o json``: null when the environment follows its branch
    (``windowOpenUntil``: the change windows set aside by ``gitsync open-window``)."""
    if hold == Hold():
        return None
    return {
        "suspended": {"by": hold.suspended_by, "at": hold.suspended_at,
                      "reason": hold.suspend_reason} if hold.suspended else None,
        "pinned": {"revision": hold.pinned, "by": hold.pinned_by, "at": hold.pinned_at,
                   "reason": hold.pin_reason} if hold.pinned else None,
        "windowOpenUntil": {"until": hold.window_open_until, "by": hold.window_opened_by,
                            "reason": hold.window_reason} if hold.window_open_until else None,
    }  # fmt: skip


def _hold_lines(hold: Hold) -> list[str]:
    lines = []
    if hold.suspended:
        why = f": {hold.suspend_reason}" if hold.suspend_reason else ""
        lines.append(f"  SUSPENDED by {hold.suspended_by} at {hold.suspended_at}{why}")
    if hold.pinned:
        why = f": {hold.pin_reason}" if hold.pin_reason else ""
        lines.append(f"  PINNED to {hold.pinned[:12]} by {hold.pinned_by} at {hold.pinned_at}{why}")
    if hold.window_open_until:
        why = f": {hold.window_reason}" if hold.window_reason else ""
        lines.append(
            f"  change windows set aside until {hold.window_open_until} by "
            f"{hold.window_opened_by}{why}"
        )
    return lines


def status_lines(rows: Sequence[EnvironmentStatus]) -> list[str]:
    """``gitsync status`` as text: per environment its rollout, drift check and services."""
    lines: list[str] = []
    for row in rows:
        state = row.state
        if lines:
            lines.append("")
        if state is None:
            lines.append(f"{row.name}: no rollout recorded")
        else:
            wave = f", wave {state.wave}" if state.wave is not None else ""
            finished = f", finished {state.finished}" if state.finished else ""
            lines.append(
                f"{row.name}: {state.phase} at {state.revision[:12]}{wave} "
                f"(started {state.started}{finished})"
            )
            if state.message:
                lines.append(f"  {state.message}")
        lines += _hold_lines(row.hold)
        if row.drift.checked:
            found = f"{len(row.drift.findings)} drifted" if row.drift.findings else "no drift"
            lines.append(
                f"  drift check {row.drift.checked} against {row.drift.revision[:12]}: {found}"
            )
        for s in row.services:
            marks = [str(s.health)] + ["DISABLED"] * s.disabled + [s.drift.upper()] * bool(s.drift)
            message = s.drift_message or s.message
            lines.append(
                f"  {s.key.label:<24} {','.join(marks):<12} {s.revision[:12]:<12} {message}"
            )
    return lines
