"""Leader election with a ``coordination.k8s.io/v1`` Lease, as client-go's leaderelection.

One replica holds the Lease and renews it every ``retry`` seconds; the others try as often. Every
write carries the Lease's resourceVersion, so two candidates racing for an expired Lease cannot
both win (the loser gets 409). On a clean shutdown the leader releases the Lease (empty holder)
and a standby takes over at its next try instead of waiting out the duration.

Timing never compares this replica's clock with another's (clocks drift; client-go's
``observedTime`` for the same reason), and only uses the monotonic clock:

- A standby judges the holder's Lease expired ``leaseDurationSeconds`` after *it observed* the
  last change of the holder's record — not from the holder's ``renewTime``, which another
  machine's clock wrote.
- The leader leads until ``renew_deadline`` after the start of its last successful renewal
  (:meth:`LeaderElector.is_leading`), whatever its thread is doing: a renewal stuck in a slow
  API call cannot keep it leading. As ``renew_deadline < leaseDuration``, it stops before any
  standby can take over. Each API call is bounded by a timeout well inside ``renew_deadline``.

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

from gitsync import names

log = logging.getLogger(__name__)

LEADER_URL = names.LEADER_URL


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
        # Monotonic start of the last successful acquire or renewal.
        self._last_renew = float("-inf")
        # The other holder's record as last read, and (monotonic) when it last changed.
        self._observed: tuple[object, ...] | None = None
        self._observed_at = 0.0
        # Who else holds the Lease, and what it published, at this replica's last try ("" none
        # or unknown).
        self.leader = ""
        self.leader_url = ""
        # Two API calls per try (read, write), both done before renew_deadline runs out.
        self.timeout = max(0.2, (self.renew_deadline - self.retry) / 2)
        # Monotonic time by which the release on shutdown must be done (see stop_by).
        self._deadline = float("inf")

    def is_leading(self) -> bool:
        """Whether this replica may act as the leader now: it holds the Lease and renewed it
        less than ``renew_deadline`` ago."""
        return self.leading.is_set() and time.monotonic() < self._last_renew + self.renew_deadline

    def stop_by(self, deadline: float) -> None:
        """From now on, every Lease call (the release on shutdown included) gives up by
        ``deadline`` (monotonic): a hung API server cannot hold the shutdown past it."""
        self._deadline = deadline

    def _timeout(self) -> float:
        return max(0.1, min(self.timeout, (self._deadline - time.monotonic()) / 2))

    def run(self, stop: threading.Event) -> None:
        """Campaigns until ``stop`` is set, then releases the Lease if held."""
        while not stop.is_set():
            began = time.monotonic()
            try:
                held = self._try()
            except (client.ApiException, urllib3.exceptions.HTTPError) as exc:
                log.warning("lease %s/%s: %s", self.namespace, self.name, exc)
                held = False
            if held:
                self._last_renew = began  # the server saw the renewal after this
                if not self.leading.is_set():
                    log.info(
                        "leader election: %s leads (lease %s/%s)",
                        self.identity,
                        self.namespace,
                        self.name,
                    )
                    self.leading.set()
                    self.on_started()
            elif self.leading.is_set() and not self.is_leading():
                self._step_down("could not renew the lease in time")
            stop.wait(self.retry)
        if self.leading.is_set():
            self.release()

    def release(self) -> None:
        """Gives the Lease up (empty holder) so a standby takes over at once."""
        try:
            lease = self.coordination.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=self._timeout()
            )
            if lease.spec and lease.spec.holder_identity == self.identity:
                body = self._body(lease, holder="", renew=_now(), transitions=None)
                self.coordination.replace_namespaced_lease(
                    self.name, self.namespace, body, _request_timeout=self._timeout()
                )
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
            lease = self.coordination.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=self._timeout()
            )
        except client.ApiException as exc:
            if exc.status != 404:
                raise
            return self._create()
        spec = lease.spec or client.V1LeaseSpec()
        holder = spec.holder_identity or ""
        if holder and holder != self.identity and not self._expired(spec):
            published = (lease.metadata.annotations or {}).get(LEADER_URL, "")
            self.leader, self.leader_url = holder, str(published)
            return False  # someone else holds a live lease
        self.leader, self.leader_url = "", ""
        now = _now()
        transitions = (spec.lease_transitions or 0) + (0 if holder == self.identity else 1)
        body = self._body(lease, holder=self.identity, renew=now, transitions=transitions)
        if holder != self.identity:
            body["spec"]["acquireTime"] = _micro(now)
        try:
            self.coordination.replace_namespaced_lease(
                self.name, self.namespace, body, _request_timeout=self._timeout()
            )
        except client.ApiException as exc:
            if exc.status == 409:  # another candidate wrote first
                return False
            raise
        return True

    def _expired(self, spec: client.V1LeaseSpec) -> bool:
        """Whether the other holder's record has not changed for its lease duration, as this
        replica's monotonic clock measures from when it first saw the record (client-go's
        observedTime). A new standby therefore waits one full duration before taking over."""
        record = (
            spec.holder_identity,
            spec.renew_time,
            spec.acquire_time,
            spec.lease_transitions,
            spec.lease_duration_seconds,
        )
        now = time.monotonic()
        if record != self._observed:
            self._observed, self._observed_at = record, now
        duration = spec.lease_duration_seconds or self.lease_seconds
        return now >= self._observed_at + duration

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
            self.coordination.create_namespaced_lease(
                self.namespace, body, _request_timeout=self._timeout()
            )
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
