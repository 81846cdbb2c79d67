"""Namespaces gitsync may create (``createNamespace: true`` on an environment)."""

from __future__ import annotations

from kubernetes import client

from gitsync.errors import GitsyncError
from gitsync.kube.client import reaching_the_api
from gitsync.stamp import MANAGED_BY


@reaching_the_api
def ensure_namespace(api: client.ApiClient, name: str) -> bool:
    """Creates ``name`` if it is missing; True when it was created."""
    core = client.CoreV1Api(api)
    try:
        core.read_namespace(name)
        return False
    except client.ApiException as exc:
        if exc.status != 404:
            raise GitsyncError(f"cannot read namespace {name}: {exc.status} {exc.reason}") from None
    body = client.V1Namespace(
        metadata=client.V1ObjectMeta(name=name, labels={MANAGED_BY: "gitsync"})
    )
    try:
        core.create_namespace(body)
    except client.ApiException as exc:
        if exc.status != 409:
            raise GitsyncError(
                f"cannot create namespace {name}: {exc.status} {exc.reason}"
            ) from None
        return False
    return True
