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

from gitsync.model import ServiceKey

log = logging.getLogger(__name__)

COMPONENT = "gitsync"


class EventRecorder:
    def __init__(self, api: client.ApiClient, instance: str = "") -> None:
        self.core = client.CoreV1Api(api)
        self.instance = instance

    def __call__(self, key: ServiceKey, kind: str, reason: str, message: str) -> None:
        """``kind`` is ``Normal`` or ``Warning``; ``reason`` a CamelCase word."""
        now = datetime.datetime.now(datetime.UTC)
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(
                name=f"{key.name}.{uuid.uuid4().hex[:16]}", namespace=key.namespace
            ),
            involved_object=client.V1ObjectReference(
                api_version="ray.io/v1", kind="RayService", name=key.name, namespace=key.namespace
            ),
            reason=reason,
            message=message[:1024],
            type=kind,
            source=client.V1EventSource(component=COMPONENT, host=self.instance or None),
            reporting_component=COMPONENT,
            reporting_instance=self.instance or COMPONENT,
            first_timestamp=now,
            last_timestamp=now,
            count=1,
        )
        try:
            self.core.create_namespaced_event(key.namespace, body)
        except (client.ApiException, urllib3.exceptions.HTTPError) as exc:
            log.debug("event %s on %s not written: %s", reason, key, exc)
