"""Reads what the capacity check (:mod:`gitsync.capacity`) compares a new cluster with: the
namespace's ResourceQuotas, the Nodes, and the pods bound to nodes that have not finished;
and, while a new cluster starts, why its pods do not run (:func:`pending_reasons`).

Each is one list (paged by ``limit``/``continue``). Reading them is optional: a 403 (no RBAC
to list quotas, nodes or pods; deploy/capacity/rbac.yaml grants it) makes that half of
the check unknown, with the API server's reason, never an error. Other failures are those of
every API call (:mod:`gitsync.kube.failures`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from kubernetes import client

from gitsync.capacity import PODS, Cluster, Node, Quota, pending_explanation, pod_resources
from gitsync.errors import ReadRefused
from gitsync.kube.failures import CORE, about, access_refused, message, temporary
from gitsync.kube.rest import request
from gitsync.manifests.quantity import parse_quantity

PAGE = 500
# Pods that hold their node's resources: bound, and neither Succeeded nor Failed.
BOUND_PODS = "spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed"
RBAC_HINT = "grant the optional capacity RBAC (deploy/capacity/rbac.yaml)"


@dataclass(frozen=True)
class _Listing:
    items: tuple[dict[str, Any], ...] | None  # None: refused
    refused: str = ""


@about(CORE)
def _list(api: client.ApiClient, path: str, query: Mapping[str, str] | None = None) -> _Listing:
    items: list[dict[str, Any]] = []
    token = ""
    while True:
        asked = {**(query or {}), "limit": str(PAGE), **({"continue": token} if token else {})}
        try:
            page = request(api, "GET", path, query=asked)
        except client.ApiException as exc:
            if exc.status == 403:
                return _Listing(None, f"not allowed (403): {message(exc)}; {RBAC_HINT}")
            if temporary(exc) or access_refused(exc):
                raise  # asked again, or explained, by about(CORE)
            raise ReadRefused(f"cannot list {path}: {message(exc)}") from exc
        items += [i for i in page.get("items") or [] if isinstance(i, dict)]
        token = str((page.get("metadata") or {}).get("continue") or "")
        if not token:
            return _Listing(tuple(items))


def _amounts(raw: Any) -> dict[str, Fraction]:
    out: dict[str, Fraction] = {}
    for name, value in (raw or {}).items() if isinstance(raw, Mapping) else ():
        amount = parse_quantity(value)
        if amount is not None:
            out[str(name)] = amount
    return out


def quota(obj: Mapping[str, Any]) -> Quota:
    """A ResourceQuota object as the check reads it: ``spec.hard``, ``status.used``, scopes."""
    spec = obj.get("spec") or {}
    selector = (spec.get("scopeSelector") or {}).get("matchExpressions") or []
    return Quota(
        str((obj.get("metadata") or {}).get("name") or ""),
        _amounts(spec.get("hard")),
        _amounts((obj.get("status") or {}).get("used")),
        tuple(str(s) for s in spec.get("scopes") or []),
        tuple(e for e in selector if isinstance(e, Mapping)),
    )


def nodes(
    node_objects: tuple[dict[str, Any], ...], pods: tuple[dict[str, Any], ...]
) -> tuple[Node, ...]:
    """Nodes with what the bound pods already request on each (and one ``pods`` per pod)."""
    used: dict[str, dict[str, Fraction]] = {}
    for pod in pods:
        spec = pod.get("spec") or {}
        name = spec.get("nodeName")
        if not name:
            continue
        row = used.setdefault(str(name), {})
        requests, _ = pod_resources(spec)
        for resource, value in {**requests, PODS: Fraction(1)}.items():
            row[resource] = row.get(resource, Fraction(0)) + value
    out = []
    for obj in node_objects:
        metadata, spec = obj.get("metadata") or {}, obj.get("spec") or {}
        name = str(metadata.get("name") or "")
        out.append(
            Node(
                name,
                _amounts((obj.get("status") or {}).get("allocatable")),
                used.get(name, {}),
                {str(k): str(v) for k, v in (metadata.get("labels") or {}).items()},
                tuple(t for t in spec.get("taints") or [] if isinstance(t, Mapping)),
                spec.get("unschedulable") is True,
            )
        )
    return tuple(out)


def read_cluster(api: client.ApiClient, namespace: str) -> Cluster:
    """What ``namespace``'s quotas and the nodes have, as far as gitsync may read it."""
    quotas = _list(api, f"/api/v1/namespaces/{namespace}/resourcequotas")
    node_list = _list(api, "/api/v1/nodes")
    pods = _list(api, "/api/v1/pods", {"fieldSelector": BOUND_PODS}) if node_list.items else None
    nodes_unknown = ""
    if node_list.items is None:
        nodes_unknown = f"cannot list nodes: {node_list.refused}"
    elif pods is not None and pods.items is None:
        nodes_unknown = f"cannot list the pods bound to nodes: {pods.refused}"
    return Cluster(
        quotas=None if quotas.items is None else tuple(quota(o) for o in quotas.items),
        nodes=(
            None
            if nodes_unknown or node_list.items is None
            else nodes(node_list.items, pods.items if pods is not None and pods.items else ())
        ),
        quotas_unknown=f"cannot list ResourceQuotas in {namespace}: {quotas.refused}"
        if quotas.items is None
        else "",
        nodes_unknown=nodes_unknown,
    )


# KubeRay labels every pod of a RayCluster with the cluster's name (utils.RayClusterLabelKey).
CLUSTER_LABEL = "ray.io/cluster"


def pending_reasons(api: client.ApiClient, namespace: str, cluster: str) -> str | None:
    """Why the RayCluster ``cluster``'s pods do not run, as the API server tells it
    (:func:`gitsync.capacity.pending_explanation`): its unschedulable Pending pods and the
    Warning Events of pods KubeRay could not create. None when nothing says so, or when gitsync
    may not list pods or Events there."""
    pods = _list(
        api, f"/api/v1/namespaces/{namespace}/pods", {"labelSelector": f"{CLUSTER_LABEL}={cluster}"}
    )
    selector = f"involvedObject.kind=RayCluster,involvedObject.name={cluster},type=Warning"
    events = _list(api, f"/api/v1/namespaces/{namespace}/events", {"fieldSelector": selector})
    return pending_explanation(pods.items or (), events.items or ())
