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
from gitsync.kube.failures import CORE, about, access_refused, transient
from gitsync.kube.namespaces import ensure_namespace
from gitsync.kube.rest import apply, configmap_path, request
from gitsync.model import Phase, RolloutState
from gitsync.stamp import ENVIRONMENT, FIELD_MANAGER, MANAGED_BY

_KEYS = (
    "revision",
    "phase",
    "wave",
    "started",
    "finished",
    "message",
    "last_healthy_revision",
    "namespace",
)


DRIFT_MANAGER = "gitsync-drift"


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


def _state(environment: str, data: dict[str, str]) -> RolloutState:
    wave = data.get("wave", "")
    return RolloutState(
        environment=environment,
        revision=data.get("revision", ""),
        phase=Phase(data.get("phase", Phase.SUCCEEDED)),
        wave=int(wave) if wave.lstrip("-").isdigit() else None,
        started=data.get("started", ""),
        finished=data.get("finished", ""),
        message=data.get("message", ""),
        last_healthy_revision=data.get("last_healthy_revision", ""),
        namespace=data.get("namespace", ""),
    )


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


class StateStore:
    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.api = api
        self.namespace = namespace

    @about(CORE)
    def read(self, environment: str) -> RolloutState | None:
        try:
            configmap = request(
                self.api, "GET", configmap_path(self.namespace, configmap_name(environment))
            )
        except client.ApiException as exc:
            if transient(exc) or access_refused(exc):
                raise
            if exc.status == 404:
                return None
            raise GitsyncError(
                f"cannot read rollout state of {environment}: {exc.status} {exc.reason}"
            ) from None
        return _state(environment, configmap.get("data") or {})

    @about(CORE)
    def read_all(self) -> dict[str, tuple[RolloutState | None, DriftRecord]]:
        """Every environment with a state ConfigMap here (previews' too): its rollout state
        (None when only a drift check was recorded) and its drift record. One request."""
        listing = request(self.api, "GET", configmap_path(self.namespace))
        found = {}
        for configmap in listing.get("items") or []:
            name = str((configmap.get("metadata") or {}).get("name", ""))
            if name.startswith(PREFIX):
                data = configmap.get("data") or {}
                environment = name.removeprefix(PREFIX)
                state = _state(environment, data) if data.get("revision") else None
                found[environment] = (state, _drift(data))
        return found

    @about(CORE)
    def write(self, state: RolloutState) -> None:
        values: dict[str, Any] = asdict(state)
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
        for attempt in (1, 2):
            try:
                apply(
                    self.api,
                    configmap_path(self.namespace, configmap_name(state.environment)),
                    body,
                    FIELD_MANAGER,
                )
                return
            except client.ApiException as exc:
                missing = exc.status == 404 and attempt == 1
                if missing and ensure_namespace(self.api, self.namespace):
                    continue  # the state namespace did not exist: created, try again
                if transient(exc) or access_refused(exc):
                    raise
                raise GitsyncError(
                    f"cannot record rollout state of {state.environment} in {self.namespace}: "
                    f"{exc.status} {exc.reason}"
                ) from None

    # -- drift: its own keys, written by its own field manager, so a rollout-state write
    # (server-side apply of the rollout keys) never removes them and vice versa.

    @about(CORE)
    def read_drift(self, environment: str) -> DriftRecord:
        """The last drift check's record (empty when there was none)."""
        try:
            configmap = request(
                self.api, "GET", configmap_path(self.namespace, configmap_name(environment))
            )
        except client.ApiException as exc:
            if transient(exc) or access_refused(exc):
                raise
            if exc.status == 404:
                return DriftRecord()
            raise GitsyncError(
                f"cannot read drift state of {environment}: {exc.status} {exc.reason}"
            ) from None
        return _drift(configmap.get("data") or {})

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
        try:
            apply(
                self.api,
                configmap_path(self.namespace, configmap_name(environment)),
                body,
                DRIFT_MANAGER,
            )
        except client.ApiException as exc:
            if transient(exc) or access_refused(exc):
                raise
            raise GitsyncError(
                f"cannot record drift of {environment} in {self.namespace}: "
                f"{exc.status} {exc.reason}"
            ) from None

    @about(CORE)
    def delete(self, environment: str) -> None:
        """Forgets an environment (a preview that was deleted)."""
        try:
            request(self.api, "DELETE", configmap_path(self.namespace, configmap_name(environment)))
        except client.ApiException as exc:
            if transient(exc) or access_refused(exc):
                raise
            if exc.status != 404:
                raise GitsyncError(
                    f"cannot delete the state of {environment}: {exc.status} {exc.reason}"
                ) from None
