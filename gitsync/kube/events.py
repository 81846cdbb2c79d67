"""Kubernetes Events on RayServices (and the other kinds gitsync applies): what gitsync did to
them and what it saw.

``kubectl describe rayservice ranker`` then shows gitsync's applies and health verdicts next to
KubeRay's own events. Best effort: an event that cannot be written is logged, never raised.

kubectl describe lists only events whose ``involvedObject.uid`` is the object's, so each event
carries the live object's uid and resourceVersion, read (metadata only) by the writer thread
just before the event is written: after an apply, that is the applied object. An object that is
gone (a prune) gets its event without them.

Written by one background thread from a bounded queue (as client-go's event broadcaster
does), so a rollout never waits for its events; when the API server falls behind, events
beyond the queue's capacity are dropped (and counted in ``dropped``). ``close()`` writes what
is queued, within a deadline.
"""

from __future__ import annotations

import datetime
import logging
import queue
import threading
import time
import uuid
from typing import Any

import urllib3
from kubernetes import client

from gitsync.errors import GitsyncError
from gitsync.kube.objects import Discovery
from gitsync.kube.rest import request
from gitsync.model import ServiceKey

log = logging.getLogger(__name__)

COMPONENT = "gitsync"
# The object's metadata only (PartialObjectMetadata): a RayService's status can be large.
METADATA = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"


QUEUE_SIZE = 2000


class EventRecorder:
    def __init__(self, api: client.ApiClient, instance: str = "") -> None:
        self.api = api
        self.instance = instance
        self.dropped = 0
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(QUEUE_SIZE)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._discovery = Discovery(api)

    def __call__(self, key: ServiceKey, kind: str, reason: str, message: str) -> None:
        """``kind`` is ``Normal`` or ``Warning``; ``reason`` a CamelCase word."""
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{key.name}.{uuid.uuid4().hex[:16]}",
                "namespace": key.namespace,
            },
            "involvedObject": {
                "apiVersion": key.api_version,
                "kind": key.kind,
                "name": key.name,
                "namespace": key.namespace,
            },
            "reason": reason,
            "message": message[:1024],
            "type": kind,
            "source": {
                "component": COMPONENT,
                **({"host": self.instance} if self.instance else {}),
            },
            "reportingComponent": COMPONENT,
            "reportingInstance": self.instance or COMPONENT,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._drain, name="gitsync-events", daemon=True
                )
                self._thread.start()
        try:
            self._queue.put_nowait(body)
        except queue.Full:
            self.dropped += 1
            log.debug("event %s on %s dropped: %d queued", reason, key, QUEUE_SIZE)

    def _drain(self) -> None:
        while (body := self._queue.get()) is not None:
            try:
                namespace = body["metadata"]["namespace"]
                body["involvedObject"].update(self._identity(body["involvedObject"]))
                request(self.api, "POST", f"/api/v1/namespaces/{namespace}/events", body=body)
            except (client.ApiException, urllib3.exceptions.HTTPError) as exc:
                log.debug("event %s not written: %s", body["reason"], exc)
            finally:
                self._queue.task_done()
        self._queue.task_done()

    def _identity(self, involved: dict[str, Any]) -> dict[str, str]:
        """The live RayService's uid and resourceVersion; none when it is gone or cannot be
        read."""
        path = f"/apis/ray.io/v1/namespaces/{involved['namespace']}/rayservices/{involved['name']}"
        try:
            if involved["kind"] != "RayService":  # another kind (allowedKinds)
                resource = self._discovery.resource(involved["apiVersion"], involved["kind"])
                if resource is None:
                    return {}
                path = resource.path(involved["namespace"], involved["name"])
            metadata = request(self.api, "GET", path, accept=METADATA).get("metadata") or {}
        except (client.ApiException, urllib3.exceptions.HTTPError, GitsyncError) as exc:
            # Gone (a prune), or the lookup failed: the event is still worth writing.
            log.debug("no uid for the event on %s: %s", involved["name"], exc)
            return {}
        found = {"uid": metadata.get("uid"), "resourceVersion": metadata.get("resourceVersion")}
        return {k: str(v) for k, v in found.items() if v}

    def flush(self, timeout: float = 10.0) -> bool:
        """Waits until every queued event was written (or failed); False on the deadline."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Writes what is queued (within ``timeout``) and stops the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is None:
            return
        self.flush(timeout)
        try:
            self._queue.put(None, timeout=1)
        except queue.Full:
            return  # the deadline passed with a full queue: the daemon thread dies with us
        thread.join(timeout=1)

    def __enter__(self) -> EventRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def list_events(api: client.ApiClient, namespace: str, kind: str = "RayService") -> list[Any]:
    """The Events in ``namespace`` about objects of ``kind`` (core/v1, which also shows the
    events.k8s.io ones): gitsync's and KubeRay's, for the status page. One request."""
    listing = request(
        api,
        "GET",
        f"/api/v1/namespaces/{namespace}/events",
        query={"fieldSelector": f"involvedObject.kind={kind}"},
    )
    return list(listing.get("items") or [])
