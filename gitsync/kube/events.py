"""Kubernetes Events on RayServices: what gitsync did to them and what it saw.

``kubectl describe rayservice ranker`` then shows gitsync's applies and health verdicts next to
KubeRay's own events. Best effort: an event that cannot be written is logged, never raised.
"""

from __future__ import annotations

import datetime
import logging
import uuid

import urllib3
from kubernetes import client

from gitsync.kube.rest import request
from gitsync.model import ServiceKey

log = logging.getLogger(__name__)

COMPONENT = "gitsync"


class EventRecorder:
    def __init__(self, api: client.ApiClient, instance: str = "") -> None:
        self.api = api
        self.instance = instance

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
                "apiVersion": "ray.io/v1",
                "kind": "RayService",
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
        try:
            request(self.api, "POST", f"/api/v1/namespaces/{key.namespace}/events", body=body)
        except (client.ApiException, urllib3.exceptions.HTTPError) as exc:
            log.debug("event %s on %s not written: %s", reason, key, exc)
