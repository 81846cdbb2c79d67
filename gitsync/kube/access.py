"""The start-up check of ``gitsync run``: may this agent use the API server at all?

Passes that find the API server refusing them report it per environment and are retried; a
refusal that no retry gets past — credentials, no RayService CRD, no RBAC for the Lease or
the state ConfigMaps — is better told once, at start-up, with what to do (kube/failures.py).
"""

from __future__ import annotations

from kubernetes import client

from gitsync.kube.failures import COORDINATION, CORE, RAYSERVICE, about, not_served
from gitsync.kube.rest import configmap_path, request


def check_access(
    api: client.ApiClient, state_namespace: str, lease: tuple[str, str] | None
) -> None:
    """Raises :class:`~gitsync.errors.AccessRefused` (or ClusterUnreachable) when the agent
    could not work: three reads, each allowed to find nothing (404 for an object)."""
    _served(api)
    _read(api, configmap_path(state_namespace, "gitsync-access-check"))
    if lease is not None:
        namespace, name = lease
        _lease(api, f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}")


@about(RAYSERVICE)
def _served(api: client.ApiClient) -> None:
    """Discovery of ray.io/v1: every authenticated user may read it (system:discovery), so a
    401 is the credentials and a 404 the missing CRD."""
    request(api, "GET", "/apis/ray.io/v1")


@about(CORE)
def _read(api: client.ApiClient, path: str) -> None:
    _found_or_missing(api, path)


@about(COORDINATION)
def _lease(api: client.ApiClient, path: str) -> None:
    _found_or_missing(api, path)


def _found_or_missing(api: client.ApiClient, path: str) -> None:
    try:
        request(api, "GET", path)
    except client.ApiException as exc:
        if exc.status != 404 or not_served(exc):  # the object missing is fine
            raise
