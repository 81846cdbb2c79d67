"""Namespaces gitsync may create (``createNamespace: true`` on an environment)."""

from __future__ import annotations

from kubernetes import client

from gitsync.errors import GitsyncError
from gitsync.kube.failures import CORE, about, access_refused, temporary
from gitsync.kube.rest import request
from gitsync.names import MANAGED_BY


@about(CORE)
def ensure_namespace(api: client.ApiClient, name: str) -> bool:
    """Creates ``name`` if it is missing; True when it was created."""
    try:
        request(api, "GET", f"/api/v1/namespaces/{name}")
        return False
    except client.ApiException as exc:
        if temporary(exc) or access_refused(exc):
            raise
        if exc.status != 404:
            raise GitsyncError(f"cannot read namespace {name}: {exc.status} {exc.reason}") from None
    body = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {MANAGED_BY: "gitsync"}},
    }
    try:
        request(api, "POST", "/api/v1/namespaces", body=body)
    except client.ApiException as exc:
        if temporary(exc) or access_refused(exc):
            raise
        if exc.status != 409:
            raise GitsyncError(
                f"cannot create namespace {name}: {exc.status} {exc.reason}"
            ) from None
        return False
    return True
