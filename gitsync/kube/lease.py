"""Leader election with a ``coordination.k8s.io/v1`` Lease, as client-go's leaderelection.

One replica holds the Lease and renews it every ``retry`` seconds; the others try as often and
take it over once ``renewTime + leaseDurationSeconds`` has passed without a renewal. Every
write carries the Lease's resourceVersion, so two candidates racing for an expired Lease
cannot both win (the loser gets 409). A leader that cannot renew within ``renew_deadline``
steps down before the Lease can expire, so two replicas never both believe they lead. On a
clean shutdown the leader releases the Lease (empty holder) and a standby takes over at its
next try instead of waiting out the duration.

The holder also publishes where it answers webhooks (annotation ``gitsync.ray.io/leader-url``):
a push that reaches a standby through the shared Service is relayed there
(:mod:`gitsync.relay`), and standbys learn the address at each try.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import urllib3
from kubernetes import client

log = logging.getLogger(__name__)

LEADER_URL = "gitsync.ray.io/leader-url"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _micro(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class LeaderElector:
    api: client.ApiClient
    namespace: str
    name: str
    identity: str
    lease_seconds: float = 15.0
    renew_deadline: float = 10.0
    retry: float = 2.0
    on_started: Callable[[], None] = lambda: None
    on_stopped: Callable[[], None] = lambda: None
    leading: threading.Event = field(default_factory=threading.Event)
    advertise_url: str = ""  # where this replica answers webhooks, published while it leads

    def __post_init__(self) -> None:
        self.coordination = client.CoordinationV1Api(self.api)
        self._last_renew = 0.0
        # What the other holder published at this replica's last try ("" none or unknown).
        self.leader_url = ""

    def run(self, stop: threading.Event) -> None:
        """Campaigns until ``stop`` is set, then releases the Lease if held."""
        while not stop.is_set():
            try:
                held = self._try()
            except (client.ApiException, urllib3.exceptions.HTTPError) as exc:
                log.warning("lease %s/%s: %s", self.namespace, self.name, exc)
                held = False
            now = time.monotonic()
            if held:
                self._last_renew = now
                if not self.leading.is_set():
                    log.info(
                        "leader election: %s leads (lease %s/%s)",
                        self.identity,
                        self.namespace,
                        self.name,
                    )
                    self.leading.set()
                    self.on_started()
            elif self.leading.is_set() and now - self._last_renew > self.renew_deadline:
                self._step_down("could not renew the lease in time")
            stop.wait(self.retry)
        if self.leading.is_set():
            self.release()

    def release(self) -> None:
        """Gives the Lease up (empty holder) so a standby takes over at once."""
        try:
            lease = self.coordination.read_namespaced_lease(self.name, self.namespace)
            if lease.spec and lease.spec.holder_identity == self.identity:
                body = self._body(lease, holder="", renew=_now(), transitions=None)
                self.coordination.replace_namespaced_lease(self.name, self.namespace, body)
        except (client.ApiException, urllib3.exceptions.HTTPError) as exc:
            log.warning("could not release lease %s/%s: %s", self.namespace, self.name, exc)
        if self.leading.is_set():
            self._step_down("released")

    def _step_down(self, why: str) -> None:
        log.warning("leader election: %s stops leading: %s", self.identity, why)
        self.leading.clear()
        self.on_stopped()

    def _try(self) -> bool:
        """One acquire-or-renew round: True when this replica holds the Lease after it."""
        try:
            lease = self.coordination.read_namespaced_lease(self.name, self.namespace)
        except client.ApiException as exc:
            if exc.status != 404:
                raise
            return self._create()
        spec = lease.spec or client.V1LeaseSpec()
        holder = spec.holder_identity or ""
        now = _now()
        if holder and holder != self.identity:
            renewed = spec.renew_time or spec.acquire_time
            duration = spec.lease_duration_seconds or self.lease_seconds
            if renewed is not None and now < renewed + datetime.timedelta(seconds=duration):
                published = (lease.metadata.annotations or {}).get(LEADER_URL, "")
                self.leader_url = str(published)
                return False  # someone else holds a live lease
        self.leader_url = ""
        transitions = (spec.lease_transitions or 0) + (0 if holder == self.identity else 1)
        body = self._body(lease, holder=self.identity, renew=now, transitions=transitions)
        if holder != self.identity:
            body["spec"]["acquireTime"] = _micro(now)
        try:
            self.coordination.replace_namespaced_lease(self.name, self.namespace, body)
        except client.ApiException as exc:
            if exc.status == 409:  # another candidate wrote first
                return False
            raise
        return True

    def _create(self) -> bool:
        now = _micro(_now())
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "annotations": {LEADER_URL: self.advertise_url} if self.advertise_url else {},
            },
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": max(1, round(self.lease_seconds)),
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": 0,
            },
        }
        try:
            self.coordination.create_namespaced_lease(self.namespace, body)
        except client.ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def _body(
        self, lease: Any, *, holder: str, renew: datetime.datetime, transitions: int | None
    ) -> dict[str, Any]:
        spec = lease.spec or client.V1LeaseSpec()
        annotations = dict(lease.metadata.annotations or {})
        annotations.pop(LEADER_URL, None)  # a released Lease names no leader
        if holder == self.identity and self.advertise_url:
            annotations[LEADER_URL] = self.advertise_url
        body: dict[str, Any] = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "resourceVersion": lease.metadata.resource_version,
                "annotations": annotations,
            },
            "spec": {
                "holderIdentity": holder,
                "leaseDurationSeconds": max(1, round(self.lease_seconds)),
                "renewTime": _micro(renew),
                "leaseTransitions": spec.lease_transitions or 0
                if transitions is None
                else transitions,
            },
        }
        if spec.acquire_time is not None:
            body["spec"]["acquireTime"] = _micro(spec.acquire_time)
        return body
