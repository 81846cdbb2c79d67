"""The Lease holder's pod, read so a standby relays webhooks only to a gitsync replica.

The leader publishes its URL on the Lease (:data:`gitsync.kube.lease.LEADER_URL`), and whoever
may write the Lease could publish any URL. Unless ``webhooks.relayNetworks`` says where a
leader may be, a standby checks the URL against the holder's pod: it must name that pod's IP,
and the pod must run under this replica's own service account (the decision is
:func:`gitsync.relay.not_the_holder`). A replica with no pod of its own (a local run) relays to
loopback addresses only (:func:`gitsync.relay.not_loopback`). Answers are kept for a short
while: a webhook burst costs one read, and a new holder or URL is read at once.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import urllib3
from kubernetes import client

from gitsync.errors import GitsyncError
from gitsync.kube.rest import request
from gitsync.relay import not_loopback, not_the_holder

# How long a verdict about one (holder, URL) is kept: pods keep their IP for their lifetime,
# and a Lease that changes names a new pair.
VERDICT_SECONDS = 30.0


class LeaderPods:
    def __init__(self, api: client.ApiClient, namespace: str, own_pod: str) -> None:
        self.api = api
        self.namespace = namespace
        self.own_pod = own_pod
        self._lock = threading.Lock()
        self._own: dict[str, str] | None = None
        self._own_read = False
        self._verdicts: dict[tuple[str, str], tuple[float, str | None]] = {}

    def refused(self, holder: str, base: str) -> str | None:
        """Why this standby must not relay to ``base``, published by ``holder`` (None: it may)."""
        now = time.monotonic()
        with self._lock:
            kept = self._verdicts.get((holder, base))
            if kept is not None and now - kept[0] < VERDICT_SECONDS:
                return kept[1]
        try:
            own = self._own_pod()
            if own is None:
                verdict = not_loopback(base)
            else:
                pod = self._pod(holder) if holder else None
                verdict = not_the_holder(base, holder, pod, own["serviceAccount"])
        except client.ApiException as exc:  # not kept: the next webhook asks again
            return f"cannot read the Lease holder's pod: {exc.status} {exc.reason}"
        except (GitsyncError, urllib3.exceptions.HTTPError, OSError) as exc:
            return f"cannot read the Lease holder's pod: {exc}"
        with self._lock:
            fresh = {k: v for k, v in self._verdicts.items() if now - v[0] < VERDICT_SECONDS}
            self._verdicts = fresh
            self._verdicts[(holder, base)] = (now, verdict)
        return verdict

    def _own_pod(self) -> dict[str, str] | None:
        with self._lock:
            if self._own_read:
                return self._own
        own = self._pod(self.own_pod) if self.own_pod else None
        with self._lock:
            self._own, self._own_read = own, True
        return own

    def _pod(self, name: str) -> dict[str, str] | None:
        """The pod's IP and service account; None when there is no such pod."""
        try:
            pod: dict[str, Any] = request(
                self.api, "GET", f"/api/v1/namespaces/{self.namespace}/pods/{name}", timeout=5
            )
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return {
            "ip": str((pod.get("status") or {}).get("podIP") or ""),
            "serviceAccount": str((pod.get("spec") or {}).get("serviceAccountName") or "default"),
        }
