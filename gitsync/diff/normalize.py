"""What Git owns of a RayService, in a form two sides can be compared in.

Owns stripping what the API server and controllers add (status, managedFields, uid,
resourceVersion, generation, timestamps, kubectl's last-applied annotation) and what gitsync
stamps itself (revision, source, environment), and filling the CRD's schema defaults the way
the API server does, so a written ``replicas: 0`` and an omitted one are equal. Pure.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from gitsync.diff.crd_defaults import RAYSERVICE_DEFAULTS

SERVER_METADATA = frozenset(
    {
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "managedFields",
        "selfLink",
        "ownerReferences",
        "finalizers",
        "generateName",
    }
)
# Stamped by gitsync on apply: they move with every commit and are not a change to roll out.
STAMPED_ANNOTATIONS = frozenset(
    {
        "gitsync.ray.io/revision",
        "gitsync.ray.io/source",
        "kubectl.kubernetes.io/last-applied-configuration",
    }
)
STAMPED_LABELS = frozenset({"app.kubernetes.io/managed-by", "gitsync.ray.io/environment"})


def fill_defaults(
    obj: dict[str, Any], table: tuple[tuple[tuple[str, ...], Any], ...] = RAYSERVICE_DEFAULTS
) -> dict[str, Any]:
    """Sets each schema default whose parent object exists and whose field is absent."""
    for path, value in table:
        _fill(obj, path, value)
    return obj


def _fill(node: Any, path: tuple[str, ...], value: Any) -> None:
    head, rest = path[0], path[1:]
    if head == "[]":
        for item in node if isinstance(node, list) else ():
            _fill(item, rest, value)
        return
    if head == "{}":
        for item in node.values() if isinstance(node, dict) else ():
            _fill(item, rest, value)
        return
    if not isinstance(node, dict):
        return
    if not rest:
        if head not in node:
            node[head] = copy.deepcopy(value)
        return
    if head in node:
        _fill(node[head], rest, value)


def owned(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The comparable part of a RayService: apiVersion, kind, name, namespace, labels,
    annotations (without gitsync's stamps) and spec with schema defaults filled."""
    metadata = obj.get("metadata") or {}
    labels = {k: v for k, v in (metadata.get("labels") or {}).items() if k not in STAMPED_LABELS}
    annotations = {
        k: v for k, v in (metadata.get("annotations") or {}).items() if k not in STAMPED_ANNOTATIONS
    }
    result: dict[str, Any] = {
        "apiVersion": obj.get("apiVersion"),
        "kind": obj.get("kind"),
        "metadata": {
            "name": metadata.get("name"),
            "namespace": metadata.get("namespace"),
            **({"labels": labels} if labels else {}),
            **({"annotations": annotations} if annotations else {}),
        },
        "spec": copy.deepcopy(dict(obj.get("spec") or {})),
    }
    return fill_defaults(result)
