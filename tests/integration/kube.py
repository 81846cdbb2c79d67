"""Helpers the integration tests share: server-side apply and status polling."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from gitsync.kube.rayservices import RayServicesClient

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayservices"


class CountingRayServices(RayServicesClient):
    """The real client, counting its server-side-apply dry runs."""

    def __init__(self, api: client.ApiClient) -> None:
        super().__init__(api)
        self.dry_runs = 0

    def apply(
        self, obj: dict[str, Any], *, dry_run: bool = False, force: bool = False
    ) -> dict[str, Any]:
        self.dry_runs += dry_run
        return super().apply(obj, dry_run=dry_run, force=force)


class RequestLog:
    """Every request an API client makes (method and URL, query included), from now on."""

    def __init__(self, api: client.ApiClient) -> None:
        self.calls: list[tuple[str, str]] = []
        sent = api.rest_client.request

        def request(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            self.calls.append((method, url))
            return sent(method, url, *args, **kwargs)

        api.rest_client.request = request

    def clear(self) -> None:
        self.calls.clear()

    def requests(self) -> list[tuple[str, str]]:
        """The requests made, watches (long-running, not per pass) left out."""
        return [(m, u) for m, u in self.calls if "watch=1" not in u and "watch=true" not in u]


def load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    return document


def apply(
    api: client.ApiClient, namespace: str, body: dict[str, Any], manager: str = "gitsync"
) -> dict[str, Any]:
    """Server-side apply of a RayService (the way gitsync writes).

    The generated client maps only 200 to a body for this call; a create answers 201, so the
    response is read raw."""
    body = {**body, "metadata": {**body["metadata"], "namespace": namespace}}
    response = client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        body["metadata"]["name"],
        body,
        field_manager=manager,
        force=True,
        _content_type="application/apply-patch+yaml",
        _preload_content=False,
    )
    result: dict[str, Any] = json.loads(response.data)
    return result


def get(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name
    )
    return result


def wait_for(
    api: client.ApiClient,
    namespace: str,
    name: str,
    predicate: Callable[[dict[str, Any]], bool],
    what: str,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """Polls the API server until ``predicate(object)``; fails with the last status seen."""
    deadline = time.monotonic() + timeout
    obj: dict[str, Any] = {}
    while time.monotonic() < deadline:
        obj = get(api, namespace, name)
        if predicate(obj):
            return obj
        time.sleep(0.05)
    raise AssertionError(
        f"{namespace}/{name} never became {what}; last status: {obj.get('status')}"
    )


def condition(obj: dict[str, Any], kind: str) -> tuple[str, str]:
    for found in (obj.get("status") or {}).get("conditions") or []:
        if found["type"] == kind:
            return found["status"], found["reason"]
    return "", ""


def app_statuses(obj: dict[str, Any], side: str = "activeServiceStatus") -> dict[str, str]:
    statuses = ((obj.get("status") or {}).get(side) or {}).get("applicationStatuses") or {}
    return {name: app["status"] for name, app in statuses.items()}


def is_ready(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    apps = app_statuses(obj)
    return (
        condition(obj, "Ready") == ("True", "NonZeroServeEndpoints")
        and condition(obj, "UpgradeInProgress")[0] == "False"
        and status.get("observedGeneration") == obj["metadata"]["generation"]
        and bool(apps)
        and all(s == "RUNNING" for s in apps.values())
    )
