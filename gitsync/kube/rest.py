"""Plain JSON requests to core API objects (ConfigMaps, Namespaces, Events).

The official client's typed ``CoreV1Api`` builds a pydantic model for every core kind when it
is first used: about 0.6 s and 20 MiB per process, for the three object kinds gitsync writes.
These calls go through the same :class:`~kubernetes.client.ApiClient` (configuration, auth,
TLS, connection pool) and raise the same :class:`~kubernetes.client.ApiException` on an error
status, so callers handle errors exactly as with the typed API.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from kubernetes import client

JSON = "application/json"
APPLY_PATCH = "application/apply-patch+yaml"


def request(
    api: client.ApiClient,
    method: str,
    path: str,
    *,
    query: Mapping[str, str] | None = None,
    body: Mapping[str, Any] | None = None,
    content_type: str = JSON,
    accept: str = JSON,
    timeout: float | None = None,
) -> dict[str, Any]:
    """``method path`` with a JSON ``body``; the decoded answer. An error status raises
    :class:`~kubernetes.client.ApiException` with the status, reason and body. ``timeout``
    (seconds, connect and read) replaces the client's."""
    headers = {"Accept": accept}
    if body is not None:
        headers["Content-Type"] = content_type
    serialized = api.param_serialize(
        method,
        path,
        query_params=list((query or {}).items()),
        header_params=headers,
        body=dict(body) if body is not None else None,  # the client serialises it
        auth_settings=["BearerToken"],
    )
    response = api.call_api(*serialized, _request_timeout=timeout)
    data = response.read()
    if not 200 <= response.status < 300:
        raise client.ApiException(
            status=response.status,
            reason=response.reason,
            body=data.decode("utf-8", "replace") if isinstance(data, bytes) else data,
        )
    decoded: dict[str, Any] = json.loads(data) if data else {}
    return decoded


def apply(
    api: client.ApiClient,
    path: str,
    body: Mapping[str, Any],
    field_manager: str,
    *,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Server-side apply of ``body`` at ``path`` as ``field_manager``, taking over conflicts."""
    return request(
        api,
        "PATCH",
        path,
        query={"fieldManager": field_manager, "force": "true"},
        body=body,
        content_type=APPLY_PATCH,
        timeout=timeout,
    )


# Asks a list for metadata only (what `kubectl get --show-kind -o name` and client-go's
# metadata informers use): no spec, no status.
METADATA_LIST = "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io"


def configmap_path(namespace: str, name: str = "") -> str:
    return f"/api/v1/namespaces/{namespace}/configmaps" + (f"/{name}" if name else "")
