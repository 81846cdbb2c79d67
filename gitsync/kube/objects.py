"""Objects of the other kinds a repository allows (``allowedKinds``): ConfigMaps, Services,
HTTPRoutes, ServiceMonitors … read, listed, server-side applied (field manager ``gitsync``)
and deleted through the same client and error mapping as RayServices.

Which resource serves a kind is asked of the API server's discovery (``GET /api/v1``,
``GET /apis/<group>/<version>``: what client-go's RESTMapper reads), once per group-version
and process, so any kind works (a CRD installed after the agent started is found at its next
lookup) and a kind that is not served is refused by name, before anything is applied.
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from gitsync.errors import ApplyError
from gitsync.kube.failures import message, reaching_the_api, refusal, temporary
from gitsync.kube.rest import APPLY_PATCH, request
from gitsync.model import ServiceKey
from gitsync.names import FIELD_MANAGER, SOURCE
from gitsync.stamp import managed_selector


@dataclass(frozen=True)
class Resource:
    """Where the API server serves one kind: ``/api/v1`` or ``/apis/<group>/<version>``, its
    plural name, and whether its objects live in a namespace."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool

    def path(self, namespace: str, name: str = "") -> str:
        prefix = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        scope = f"/namespaces/{namespace}" if self.namespaced else ""
        return f"{prefix}{scope}/{self.plural}" + (f"/{name}" if name else "")


class Discovery:
    """The API server's discovery documents, one request per group-version, kept for the
    process; a group-version that is not served (404) is asked again next time (its CRD may
    be installed meanwhile)."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self._served: dict[str, dict[str, Resource]] = {}
        self._lock = threading.Lock()

    @reaching_the_api
    def resource(self, api_version: str, kind: str) -> Resource | None:
        """The resource serving ``kind`` at ``api_version``; None when the API server serves
        no such kind (its CRD is not installed, or the version is wrong)."""
        with self._lock:
            known = self._served.get(api_version)
        if known is None:
            path = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            try:
                listing = request(self.api, "GET", path)
            except client.ApiException as exc:
                if exc.status == 404:
                    return None
                raise
            known = {
                str(r["kind"]): Resource(
                    api_version, str(r["kind"]), str(r["name"]), bool(r.get("namespaced"))
                )
                for r in listing.get("resources") or []
                if "/" not in str(r.get("name", ""))  # subresources: status, scale …
            }
            with self._lock:
                self._served[api_version] = known
        return known.get(kind)


class KindNotServed(ApplyError):
    """The API server serves no resource for an allowed kind: its CRD is not installed."""


class Objects:
    """gitsync's reads and writes of objects of any kind, keyed by :class:`ServiceKey`."""

    def __init__(self, api: client.ApiClient, discovery: Discovery | None = None) -> None:
        self.api = api
        self.discovery = discovery or Discovery(api)

    def resource(self, key: ServiceKey) -> Resource:
        found = self.discovery.resource(key.api_version, key.kind)
        if found is None:
            raise KindNotServed(
                key,
                f"the API server serves no {key.kind} in {key.api_version}: install the CRD "
                "that defines it (or fix apiVersion/kind)",
            )
        return found

    # Each verb resolves the kind first (discovery retries on its own), then makes its one
    # request under the retry: nesting them would multiply the attempts.

    def list_managed(
        self,
        namespace: str,
        environment: str,
        api_version: str,
        kind: str,
        *,
        names: Collection[str] | None = None,
    ) -> dict[ServiceKey, dict[str, Any]]:
        """Every object of ``kind`` gitsync applied for ``environment`` in ``namespace`` (of
        ``names`` only, when given): one request. Nothing when the kind is not served
        (nothing of it can exist)."""
        resource = self.discovery.resource(api_version, kind)
        if resource is None:
            return {}
        return self._list(resource, namespace, environment, names)

    @reaching_the_api
    def _list(
        self,
        resource: Resource,
        namespace: str,
        environment: str,
        names: Collection[str] | None = None,
    ) -> dict[ServiceKey, dict[str, Any]]:
        listing = request(
            self.api,
            "GET",
            resource.path(namespace),
            query={"labelSelector": managed_selector(environment)},
        )
        # Only what gitsync applied from Git (its source annotation): gitsync's own state
        # ConfigMaps carry the same labels, and must never look like a prune candidate.
        items = [
            o
            for o in listing.get("items") or []
            if SOURCE in ((o.get("metadata") or {}).get("annotations") or {})
            and (names is None or o["metadata"]["name"] in names)
        ]
        for item in items:  # a list's items leave out their kind (a core list's always do)
            item.setdefault("apiVersion", resource.api_version)
            item.setdefault("kind", resource.kind)
        return {
            ServiceKey(namespace, o["metadata"]["name"], resource.kind, resource.api_version): o
            for o in items
        }

    def get(self, key: ServiceKey) -> dict[str, Any] | None:
        resource = self.discovery.resource(key.api_version, key.kind)
        return None if resource is None else self._get(resource, key)

    @reaching_the_api
    def _get(self, resource: Resource, key: ServiceKey) -> dict[str, Any] | None:
        try:
            return request(self.api, "GET", resource.path(key.namespace, key.name))
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            if temporary(exc):
                raise
            raise ApplyError(key, f"cannot read it: {message(exc)}") from None

    def delete(self, key: ServiceKey) -> bool:
        """Deletes one object (background propagation); False if it was already gone."""
        resource = self.discovery.resource(key.api_version, key.kind)
        return False if resource is None else self._delete(resource, key)

    @reaching_the_api
    def _delete(self, resource: Resource, key: ServiceKey) -> bool:
        try:
            request(
                self.api,
                "DELETE",
                resource.path(key.namespace, key.name),
                body={"propagationPolicy": "Background"},
            )
        except client.ApiException as exc:
            if exc.status == 404:
                return False
            if temporary(exc):
                raise
            raise refusal(exc, key, "delete") from None
        return True

    def apply(
        self, obj: dict[str, Any], *, dry_run: bool = False, force: bool = False
    ) -> dict[str, Any]:
        """Server-side apply as ``gitsync``; with ``dry_run`` the object as it would be."""
        metadata = obj["metadata"]
        key = ServiceKey(metadata["namespace"], metadata["name"], obj["kind"], obj["apiVersion"])
        return self._apply(self.resource(key), key, obj, dry_run=dry_run, force=force)

    @reaching_the_api
    def _apply(
        self,
        resource: Resource,
        key: ServiceKey,
        obj: dict[str, Any],
        *,
        dry_run: bool,
        force: bool,
    ) -> dict[str, Any]:
        query = {"fieldManager": FIELD_MANAGER, "force": "true" if force else "false"}
        if dry_run:
            query["dryRun"] = "All"
        try:
            return request(
                self.api,
                "PATCH",
                resource.path(key.namespace, key.name),
                query=query,
                body=obj,
                content_type=APPLY_PATCH,
            )
        except client.ApiException as exc:
            if temporary(exc):
                raise
            raise refusal(exc, key, "dry-run apply" if dry_run else "apply") from None
