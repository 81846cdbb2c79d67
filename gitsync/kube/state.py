"""Rollout state: one ConfigMap per environment (``gitsync-rollout-<env>``).

Owns reading and writing :class:`~gitsync.model.RolloutState`. Written with server-side
apply (field manager ``gitsync``) so concurrent writers never lose fields to a stale read.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from kubernetes import client

from gitsync.errors import GitsyncError
from gitsync.kube.cache import CONFIGMAPS, Informers
from gitsync.kube.failures import CORE, about, access_refused, temporary
from gitsync.kube.namespaces import ensure_namespace
from gitsync.kube.rest import apply, configmap_path, request
from gitsync.model import Hold, Phase, RolloutState
from gitsync.names import ENVIRONMENT, FIELD_MANAGER, MANAGED_BY

_KEYS = (
    "revision",
    "phase",
    "wave",
    "started",
    "finished",
    "message",
    "last_healthy_revision",
    "namespace",
    "kinds",
)


DRIFT_MANAGER = "gitsync-drift"
# Which head commit of each fork pull request its label approved: one key per pull request,
# each written by a field manager of its own, so recording one never removes another.
APPROVALS = "gitsync-preview-approvals"
# Commit statuses an agent could not post before it stopped, kept for the next leader.
STATUSES_CONFIGMAP, STATUSES_MANAGER = "gitsync-unposted-statuses", "gitsync-statuses"
STATUSES_KEPT = 256  # the newest (revision, context) pairs kept; a status is ≤ 1 KiB


@dataclass(frozen=True)
class DriftRecord:
    """The last drift check of an environment — its findings, when it ran, the applied
    revision it compared against — and the corrections history of the fight backoff
    (``"<service> <field>"`` → correction times)."""

    findings: list[dict[str, Any]] = field(default_factory=list)
    corrections: dict[str, list[float]] = field(default_factory=dict)
    checked: str = ""  # UTC, ISO 8601
    revision: str = ""


PREFIX = "gitsync-rollout-"


def configmap_name(environment: str) -> str:
    return f"{PREFIX}{environment}"


def _drift(data: dict[str, str]) -> DriftRecord:
    try:
        findings = json.loads(data.get("drift") or "[]")
        corrections = json.loads(data.get("corrections") or "{}")
    except ValueError:
        return DriftRecord()
    return DriftRecord(
        list(findings),
        dict(corrections),
        data.get("drift_checked", ""),
        data.get("drift_revision", ""),
    )


PREFIX = configmap_name("")
STATUS_MANAGER = "gitsync-status"  # the status page's keys (gitsync.web.stored)
PREVIEWS_CONFIGMAP = "gitsync-status-previews"


def state_from(environment: str, data: dict[str, str]) -> RolloutState:
    """The rollout state kept in a state ConfigMap's values."""
    wave = data.get("wave", "")
    try:
        phase = Phase(data.get("phase", Phase.SUCCEEDED))
    except ValueError:
        phase = Phase.SUCCEEDED
    return RolloutState(
        environment=environment,
        revision=data.get("revision", ""),
        phase=phase,
        wave=int(wave) if wave.lstrip("-").isdigit() else None,
        started=data.get("started", ""),
        finished=data.get("finished", ""),
        message=data.get("message", ""),
        last_healthy_revision=data.get("last_healthy_revision", ""),
        namespace=data.get("namespace", ""),
        kinds=tuple(line for line in data.get("kinds", "").splitlines() if "/" in line),
    )


# -- holds: what the person on call decided (``gitsync suspend`` / ``pin``), kept in the
# environment's state ConfigMap so every replica and every restart sees them. Suspension and
# pin each have their own field manager: writing one never removes the other, a rollout-state
# write never removes either, and an apply without the keys (resume, unpin) removes them.

SUSPEND_MANAGER, PIN_MANAGER = "gitsync-suspend", "gitsync-pin"
WINDOW_MANAGER = "gitsync-window"


def hold_from(data: dict[str, str]) -> Hold:
    """The holds kept in a state ConfigMap's values."""
    return Hold(
        suspended=data.get("suspended", "") == "true",
        suspended_by=data.get("suspended_by", ""),
        suspended_at=data.get("suspended_at", ""),
        suspend_reason=data.get("suspend_reason", ""),
        pinned=data.get("pinned", ""),
        pinned_by=data.get("pinned_by", ""),
        pinned_at=data.get("pinned_at", ""),
        pin_reason=data.get("pin_reason", ""),
        window_open_until=data.get("window_open_until", ""),
        window_opened_by=data.get("window_opened_by", ""),
        window_reason=data.get("window_reason", ""),
    )


class StateStore:
    def __init__(
        self, api: client.ApiClient, namespace: str, informers: Informers | None = None
    ) -> None:
        """``informers``: read the ConfigMaps from the watch-backed cache
        (:mod:`gitsync.kube.cache`) while its watch of the namespace is healthy."""
        self.api = api
        self.namespace = namespace
        self.informers = informers

    # -- the two requests every key set uses: one answer to a refusal, in one place.

    def _get(self, name: str, what: str) -> dict[str, Any] | None:
        """The ConfigMap ``name``; None when there is none. A transient failure or an access
        refusal propagates (``@about`` retries or names it); any other refusal is a
        GitsyncError saying it could not read ``what``."""
        watched = self.informers and self.informers.synced(CONFIGMAPS, self.namespace)
        if watched:  # every state ConfigMap carries managed-by=gitsync: absent is absent
            return watched.get(name)  # the reader's own copy
        try:
            return request(self.api, "GET", configmap_path(self.namespace, name))
        except client.ApiException as exc:
            if temporary(exc) or access_refused(exc):
                raise
            if exc.status == 404:
                return None
            raise GitsyncError(f"cannot read {what}: {exc.status} {exc.reason}") from None

    def _apply(self, name: str, body: dict[str, Any], manager: str, what: str) -> None:
        """Server-side applies ``body`` as ``manager``, creating the state namespace once if
        it is missing; refusals as in :meth:`_get`, saying it could not record ``what``."""
        for attempt in (1, 2):
            try:
                answer = apply(self.api, configmap_path(self.namespace, name), body, manager)
                if self.informers is not None:
                    self.informers.informer(CONFIGMAPS, self.namespace).put(answer)
                return
            except client.ApiException as exc:
                missing = exc.status == 404 and attempt == 1
                if missing and ensure_namespace(self.api, self.namespace):
                    continue  # the state namespace did not exist: created, try again
                if temporary(exc) or access_refused(exc):
                    raise
                raise GitsyncError(
                    f"cannot record {what} in {self.namespace}: {exc.status} {exc.reason}"
                ) from None

    @about(CORE)
    def read(self, environment: str) -> RolloutState | None:
        configmap = self._get(configmap_name(environment), f"rollout state of {environment}")
        return None if configmap is None else state_from(environment, configmap.get("data") or {})

    @about(CORE)
    def read_states(self) -> dict[str, tuple[RolloutState | None, DriftRecord]]:
        """Every environment with a state ConfigMap here (previews' too): its rollout state
        (None when only a drift check was recorded) and its drift record. One request."""
        listing = request(self.api, "GET", configmap_path(self.namespace))
        found = {}
        for configmap in listing.get("items") or []:
            name = str((configmap.get("metadata") or {}).get("name", ""))
            if name.startswith(PREFIX):
                data = configmap.get("data") or {}
                environment = name.removeprefix(PREFIX)
                state = state_from(environment, data) if data.get("revision") else None
                found[environment] = (state, _drift(data))
        return found

    @about(CORE)
    def write(self, state: RolloutState) -> None:
        values: dict[str, Any] = asdict(state)
        values["kinds"] = "\n".join(state.kinds)
        data = {k: "" if values[k] is None else str(values[k]) for k in _KEYS}
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": configmap_name(state.environment),
                "namespace": self.namespace,
                "labels": {MANAGED_BY: "gitsync", ENVIRONMENT: state.environment},
            },
            "data": data,
        }
        name, what = configmap_name(state.environment), f"rollout state of {state.environment}"
        self._apply(name, body, FIELD_MANAGER, what)

    # -- drift: its own keys, written by its own field manager, so a rollout-state write
    # (server-side apply of the rollout keys) never removes them and vice versa.

    @about(CORE)
    def read_drift(self, environment: str) -> DriftRecord:
        """The last drift check's record (empty when there was none)."""
        configmap = self._get(configmap_name(environment), f"drift state of {environment}")
        return DriftRecord() if configmap is None else _drift(configmap.get("data") or {})

    @about(CORE)
    def write_drift(self, environment: str, record: DriftRecord) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": configmap_name(environment), "namespace": self.namespace},
            "data": {
                "drift": json.dumps(record.findings, sort_keys=True),
                "corrections": json.dumps(record.corrections, sort_keys=True),
                "drift_checked": record.checked,
                "drift_revision": record.revision,
            },
        }
        self._apply(configmap_name(environment), body, DRIFT_MANAGER, f"drift of {environment}")

    @about(CORE)
    def delete(self, environment: str) -> None:
        """Forgets an environment (a preview that was deleted)."""
        try:
            request(self.api, "DELETE", configmap_path(self.namespace, configmap_name(environment)))
            if self.informers is not None:
                self.informers.informer(CONFIGMAPS, self.namespace).forget(
                    configmap_name(environment)
                )
        except client.ApiException as exc:
            if temporary(exc) or access_refused(exc):
                raise
            if exc.status != 404:
                raise GitsyncError(
                    f"cannot delete the state of {environment}: {exc.status} {exc.reason}"
                ) from None

    # -- fork approvals ------------------------------------------------------------------------

    @about(CORE)
    def read_approvals(self) -> dict[int, str]:
        """Pull request number → the head commit its label approved."""
        configmap = self._get(APPROVALS, "preview approvals") or {}
        data: dict[str, str] = configmap.get("data") or {}
        return {int(k.removeprefix("pr-")): v for k, v in data.items()
                if k.removeprefix("pr-").isdigit()}  # fmt: skip

    @about(CORE)
    def approve(self, number: int, sha: str) -> None:
        """Records the head commit the label approved; ``""`` forgets the approval."""
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": APPROVALS, "namespace": self.namespace,
                         "labels": {MANAGED_BY: "gitsync"}},
            "data": {f"pr-{number}": sha} if sha else {},
        }  # fmt: skip
        what = f"the approval of pull request #{number}"
        self._apply(APPROVALS, body, f"gitsync-approval-{number}", what)

    # -- the status page's keys: written by the leader with its own field manager, so neither
    # a rollout-state nor a drift write removes them; read by every replica.

    @about(CORE)
    def write_status(self, environment: str, data: dict[str, str]) -> None:
        """``data``: the status page's values of ``environment`` (``environment`` "": the
        previews, in their own ConfigMap)."""
        name = configmap_name(environment) if environment else PREVIEWS_CONFIGMAP
        labels = {MANAGED_BY: "gitsync", **({ENVIRONMENT: environment} if environment else {})}
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": self.namespace, "labels": labels},
            "data": data,
        }
        what = f"the status of {environment or 'the previews'}"
        self._apply(name, body, STATUS_MANAGER, what)

    @about(CORE)
    def read_all(self) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
        """Every environment's state ConfigMap values (by environment), and the previews'
        status: from the watch-backed cache when it holds them, else one list request."""
        environments, previews = {}, {}
        for item in self._listed():
            name = str((item.get("metadata") or {}).get("name", ""))
            data = {str(k): str(v) for k, v in (item.get("data") or {}).items()}
            if name == PREVIEWS_CONFIGMAP:
                previews = data
            elif name.startswith(PREFIX):
                environments[name.removeprefix(PREFIX)] = data
        return environments, previews

    def _listed(self) -> list[dict[str, Any]]:
        watched = self.informers and self.informers.synced(CONFIGMAPS, self.namespace)
        if watched:  # the informer lists by managed-by=gitsync too
            return watched.read()
        try:
            listed = request(
                self.api,
                "GET",
                configmap_path(self.namespace),
                query={"labelSelector": f"{MANAGED_BY}=gitsync"},
            )
        except client.ApiException as exc:
            if temporary(exc) or access_refused(exc):
                raise
            raise GitsyncError(
                f"cannot list the state ConfigMaps in {self.namespace}: {exc.status} {exc.reason}"
            ) from None
        return [i for i in listed.get("items") or () if isinstance(i, dict)]

    @about(CORE)
    def read_data(self, environment: str) -> dict[str, str] | None:
        """The values of ``environment``'s state ConfigMap; None when it has none."""
        configmap = self._get(configmap_name(environment), f"the state of {environment}")
        if configmap is None:
            return None
        return {str(k): str(v) for k, v in (configmap.get("data") or {}).items()}

    # -- holds (the CLI writes them, the agent, drift and ``gitsync status`` read them) ----

    def holds(self) -> dict[str, Hold]:
        """Every recorded environment's holds, by name (held or not): one list request."""
        environments, _ = self.read_all()
        return {name: hold_from(data) for name, data in environments.items()}

    def hold(self, environment: str) -> Hold:
        return hold_from(self.read_data(environment) or {})

    @about(CORE)
    def suspend(self, environment: str, by: str, at: str, reason: str = "") -> None:
        data = {"suspended": "true", "suspended_by": by, "suspended_at": at}
        self._hold(environment, SUSPEND_MANAGER, data | ({"suspend_reason": reason} if reason
                                                         else {}), "the suspension")  # fmt: skip

    @about(CORE)
    def resume(self, environment: str) -> None:
        self._hold(environment, SUSPEND_MANAGER, {}, "the resumption")

    @about(CORE)
    def pin(self, environment: str, revision: str, by: str, at: str, reason: str = "") -> None:
        data = {"pinned": revision, "pinned_by": by, "pinned_at": at}
        self._hold(environment, PIN_MANAGER, data | ({"pin_reason": reason} if reason else {}),
                   "the pin")  # fmt: skip

    @about(CORE)
    def open_window(self, environment: str, until: str, by: str, reason: str = "") -> None:
        """Sets the change windows aside until ``until`` (UTC, ISO 8601); ``""`` closes it
        again (removes the keys)."""
        data = {"window_open_until": until, "window_opened_by": by} if until else {}
        if until and reason:
            data["window_reason"] = reason
        self._hold(environment, WINDOW_MANAGER, data, "the change-window override")

    @about(CORE)
    def unpin(self, environment: str) -> None:
        self._hold(environment, PIN_MANAGER, {}, "the unpin")

    def _hold(self, environment: str, manager: str, data: dict[str, str], what: str) -> None:
        """Applies ``data`` as ``manager``: the keys it owned and ``data`` leaves out go."""
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": configmap_name(environment),
                "namespace": self.namespace,
                "labels": {MANAGED_BY: "gitsync", ENVIRONMENT: environment},
            },
            "data": data,
        }
        self._apply(configmap_name(environment), body, manager, f"{what} of {environment}")

    # -- commit statuses not posted before a shutdown: one ConfigMap, its own field manager.

    def keep_statuses(self, entries: list[dict[str, str]], timeout: float) -> None:
        """Adds ``entries`` (each with ``revision`` and ``context``; a newer one for the same
        pair replaces the older) to what waits for the next leader; the newest
        ``STATUSES_KEPT`` are kept. Two requests, each bounded by ``timeout``, no retries:
        called on shutdown. Raises ApiException or urllib3's HTTPError."""
        path = configmap_path(self.namespace, STATUSES_CONFIGMAP)
        try:
            data = request(self.api, "GET", path, timeout=timeout).get("data") or {}
            kept = _entries(data.get("statuses", ""))
        except client.ApiException as exc:
            if exc.status != 404:
                raise
            kept = []
        merged = {(e["revision"], e["context"]): e for e in [*kept, *entries]}
        newest = list(merged.values())[-STATUSES_KEPT:]
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": STATUSES_CONFIGMAP,
                "namespace": self.namespace,
                "labels": {MANAGED_BY: "gitsync"},
            },
            "data": {"statuses": json.dumps(newest, sort_keys=True)},
        }
        apply(self.api, path, body, STATUSES_MANAGER, timeout=timeout)

    @about(CORE)
    def take_statuses(self) -> list[dict[str, str]]:
        """What earlier agents could not post, oldest first, and forgets it."""
        path = configmap_path(self.namespace, STATUSES_CONFIGMAP)
        configmap = self._get(STATUSES_CONFIGMAP, f"{self.namespace}/{STATUSES_CONFIGMAP}")
        if configmap is None:
            return []
        entries = _entries((configmap.get("data") or {}).get("statuses", ""))
        version = configmap["metadata"]["resourceVersion"]
        try:  # only the version read: statuses kept meanwhile are taken next time
            request(self.api, "DELETE", path, body={"preconditions": {"resourceVersion": version}})
        except client.ApiException as exc:
            if temporary(exc):
                raise
            if exc.status not in (404, 409):
                raise GitsyncError(
                    f"cannot delete {self.namespace}/{STATUSES_CONFIGMAP}: "
                    f"{exc.status} {exc.reason}"
                ) from None
            return []
        return entries


def _entries(text: str) -> list[dict[str, str]]:
    """The stored statuses, skipping any entry that is not a mapping of strings."""
    try:
        loaded = json.loads(text or "[]")
    except ValueError:
        return []
    return (
        [
            {str(k): str(v) for k, v in e.items()}
            for e in loaded
            if isinstance(e, dict) and {"revision", "context"} <= set(e)
        ]
        if isinstance(loaded, list)
        else []
    )
