"""RayService reads and server-side-apply dry runs (field manager ``gitsync``).

API answers become gitsync's errors through :mod:`gitsync.kube.failures` (transient ones are
retried there). The generated client maps only HTTP 200 to a body for ``patch``; a
create-by-apply answers 201, so responses are read raw.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Iterator
from typing import Any, Protocol

import urllib3
from kubernetes import client, watch

from gitsync.errors import ApplyError
from gitsync.kube.capacity import pending_reasons
from gitsync.kube.client import REQUEST_TIMEOUT
from gitsync.kube.failures import (
    RAYSERVICE,
    about,
    access_refused,
    message,
    refusal,
    temporary,
)
from gitsync.kube.objects import Objects
from gitsync.kube.rest import METADATA_LIST, request
from gitsync.model import ServiceKey
from gitsync.names import FIELD_MANAGER, MANAGED_BY
from gitsync.stamp import managed_selector

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayservices"
log = logging.getLogger(__name__)


class RayServices(Protocol):
    """What the stages read and write in the cluster: RayServices, and through
    :attr:`objects` the other kinds a repository allows (:meth:`get`, :meth:`delete` and
    :meth:`apply` take either and route by kind). :class:`RayServicesClient` is the one
    implementation that talks to the API server; a test may pass an in-memory one."""

    api: client.ApiClient
    objects: Objects

    def list_managed(
        self, namespace: str, environment: str, *, names: Collection[str] | None = None
    ) -> dict[ServiceKey, dict[str, Any]]: ...

    def list_managed_metadata(
        self, namespace: str, environment: str
    ) -> dict[ServiceKey, dict[str, Any]]: ...

    def list_every_managed(self, namespace: str | None = None) -> list[dict[str, Any]]: ...

    def list_labelled(self, namespace: str, label: str) -> list[dict[str, Any]]: ...

    def list_managed_versioned(
        self, namespace: str, environment: str
    ) -> tuple[dict[ServiceKey, dict[str, Any]], str]: ...

    def watch_managed(
        self, namespace: str, environment: str, resource_version: str, seconds: float
    ) -> Iterator[tuple[str, dict[str, Any]]]: ...

    def get(self, key: ServiceKey) -> dict[str, Any] | None: ...

    def delete(self, key: ServiceKey) -> bool: ...

    def apply(
        self, obj: dict[str, Any], *, dry_run: bool = False, force: bool = False
    ) -> dict[str, Any]: ...

    def pending_reasons(self, namespace: str, cluster: str) -> str | None:
        """Why the RayCluster ``cluster``'s pods do not run, or None
        (:func:`gitsync.kube.capacity.pending_reasons`)."""
        ...


class RayServicesClient:
    """:class:`RayServices` through the API server."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.custom = client.CustomObjectsApi(api)
        self.objects = Objects(api)

    @about(RAYSERVICE)
    def pending_reasons(self, namespace: str, cluster: str) -> str | None:
        return pending_reasons(self.api, namespace, cluster)

    @about(RAYSERVICE)
    def list_managed(
        self, namespace: str, environment: str, *, names: Collection[str] | None = None
    ) -> dict[ServiceKey, dict[str, Any]]:
        """Every RayService gitsync applied for ``environment`` in ``namespace`` (of
        ``names`` only, when given): one request."""
        listing = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, label_selector=managed_selector(environment)
        )
        return {
            ServiceKey(namespace, o["metadata"]["name"]): o
            for o in listing.get("items", [])
            if names is None or o["metadata"]["name"] in names
        }

    @about(RAYSERVICE)
    def list_managed_metadata(
        self, namespace: str, environment: str
    ) -> dict[ServiceKey, dict[str, Any]]:
        """As :meth:`list_managed`, metadata only (labels, annotations, managedFields): a
        fraction of the bytes, for checks that need no spec or status."""
        listing = request(
            self.api,
            "GET",
            f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}",
            query={"labelSelector": managed_selector(environment)},
            accept=METADATA_LIST,
        )
        return {ServiceKey(namespace, o["metadata"]["name"]): o for o in listing.get("items") or []}

    @about(RAYSERVICE)
    def list_every_managed(self, namespace: str | None = None) -> list[dict[str, Any]]:
        """Every RayService gitsync manages, of every environment, in ``namespace`` or (None)
        in every namespace (which needs RBAC to list RayServices cluster-wide): one request."""
        where = f"/namespaces/{namespace}" if namespace else ""
        listing = request(
            self.api,
            "GET",
            f"/apis/{GROUP}/{VERSION}{where}/{PLURAL}",
            query={"labelSelector": f"{MANAGED_BY}=gitsync"},
        )
        return list(listing.get("items") or [])

    @about(RAYSERVICE)
    def list_labelled(self, namespace: str, label: str) -> list[dict[str, Any]]:
        """Every RayService gitsync manages in ``namespace`` that carries the label ``label``
        (any value), e.g. every preview: one request."""
        listing = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, label_selector=f"{MANAGED_BY}=gitsync,{label}"
        )
        return list(listing.get("items", []))

    @about(RAYSERVICE)
    def list_managed_versioned(
        self, namespace: str, environment: str
    ) -> tuple[dict[ServiceKey, dict[str, Any]], str]:
        """As :meth:`list_managed`, with the list's resourceVersion to watch from."""
        listing = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, label_selector=managed_selector(environment)
        )
        objects = {
            ServiceKey(namespace, o["metadata"]["name"]): o for o in listing.get("items", [])
        }
        return objects, str(listing["metadata"]["resourceVersion"])

    def watch_managed(
        self, namespace: str, environment: str, resource_version: str, seconds: float
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Changes to what gitsync manages there, from ``resource_version``, for about
        ``seconds`` (ended by the API server, so the caller regains control). Ends early,
        without raising, when the watch expired (410) or the connection broke: relist."""
        connect, read = getattr(self.api.rest_client, "timeout", REQUEST_TIMEOUT)
        stream = watch.Watch().stream(
            self.custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            label_selector=managed_selector(environment),
            resource_version=resource_version,
            timeout_seconds=max(1, round(seconds)),
            allow_watch_bookmarks=False,
            # The server ends the watch after timeout_seconds; a hung one is ended here.
            _request_timeout=(connect, max(1, round(seconds)) + read),
        )
        try:
            for event in stream:
                if event["type"] == "ERROR":
                    return
                yield event["type"], event["object"]
        except (client.ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            log.debug("watch ended namespace=%s error=%s", namespace, exc)

    def get(self, key: ServiceKey) -> dict[str, Any] | None:
        return self._get(key) if key.is_rayservice else self.objects.get(key)

    @about(RAYSERVICE)
    def _get(self, key: ServiceKey) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, key.namespace, PLURAL, key.name
            )
        except client.ApiException as exc:
            if temporary(exc) or access_refused(exc):
                raise
            if exc.status == 404:
                return None
            raise ApplyError(key, f"cannot read it: {message(exc)}") from None
        return obj

    def delete(self, key: ServiceKey) -> bool:
        """Deletes one object (background propagation); False if it was already gone."""
        return self._delete(key) if key.is_rayservice else self.objects.delete(key)

    @about(RAYSERVICE)
    def _delete(self, key: ServiceKey) -> bool:
        try:
            self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, key.namespace, PLURAL, key.name, propagation_policy="Background"
            )
        except client.ApiException as exc:
            if temporary(exc) or access_refused(exc):
                raise
            if exc.status == 404:
                return False
            raise refusal(exc, key, "delete") from None
        return True

    def apply(
        self, obj: dict[str, Any], *, dry_run: bool = False, force: bool = False
    ) -> dict[str, Any]:
        """Server-side apply; with ``dry_run`` the API server returns the object as it would
        be (defaults, admission and other managers' fields included) and stores nothing."""
        if (obj.get("apiVersion"), obj.get("kind")) != (f"{GROUP}/{VERSION}", "RayService"):
            return self.objects.apply(obj, dry_run=dry_run, force=force)
        return self._apply(obj, dry_run=dry_run, force=force)

    @about(RAYSERVICE)
    def _apply(
        self, obj: dict[str, Any], *, dry_run: bool = False, force: bool = False
    ) -> dict[str, Any]:
        key = ServiceKey(obj["metadata"]["namespace"], obj["metadata"]["name"])
        try:
            response = self.custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                key.namespace,
                PLURAL,
                key.name,
                obj,
                field_manager=FIELD_MANAGER,
                force=force,
                dry_run="All" if dry_run else None,
                _content_type="application/apply-patch+yaml",
                _preload_content=False,
            )
        except client.ApiException as exc:
            if temporary(exc) or access_refused(exc):
                raise
            raise refusal(exc, key, "dry-run apply" if dry_run else "apply") from None
        result: dict[str, Any] = json.loads(response.data)
        return result
