"""What Git owns of a RayService, in a form two sides can be compared in.

Owns stripping what the API server and controllers add (status, managedFields, uid,
resourceVersion, generation, timestamps, kubectl's last-applied annotation) and what gitsync
stamps itself (revision, source, environment), and filling the CRD's schema defaults the way
the API server does, so a written ``replicas: 0`` and an omitted one are equal. Pure.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gitsync import names
from gitsync.diff.crd_defaults import RAYSERVICE_DEFAULTS

# Stamped by gitsync on apply: they move with every commit and are not a change to roll out.
STAMPED_ANNOTATIONS = frozenset(
    {
        names.REVISION,
        names.SOURCE,
        names.APPLIED_HASH,
        names.PREVIEW_UPDATED,  # a preview's last rollout time, for its TTL
        "kubectl.kubernetes.io/last-applied-configuration",
    }
)
STAMPED_LABELS = frozenset({names.MANAGED_BY, names.ENVIRONMENT})


@dataclass
class _Node:
    """One level of the defaults trie: defaults set here, fields to descend into, and the
    subtrees for every list item (``[]``) or map value (``{}``)."""

    leaves: dict[str, Any] = field(default_factory=dict)
    branches: dict[str, _Node] = field(default_factory=dict)
    items: _Node | None = None
    values: _Node | None = None


def _trie(table: tuple[tuple[tuple[str, ...], Any], ...]) -> _Node:
    """The defaults table as a trie, so one walk of an object visits each shared prefix once."""
    root = _Node()
    for path, value in table:
        node = root
        for part in path[:-1]:
            if part == "[]":
                node.items = node.items or _Node()
                node = node.items
            elif part == "{}":
                node.values = node.values or _Node()
                node = node.values
            else:
                node = node.branches.setdefault(part, _Node())
        node.leaves[path[-1]] = value
    return root


_DEFAULTS = _trie(RAYSERVICE_DEFAULTS)


def fill_defaults(obj: dict[str, Any], trie: _Node = _DEFAULTS) -> dict[str, Any]:
    """Sets each schema default whose parent object exists and whose field is absent."""
    _fill(obj, trie)
    return obj


def _fill(node: Any, trie: _Node) -> None:
    if isinstance(node, list):
        if trie.items is not None:
            for item in node:
                _fill(item, trie.items)
        return
    if not isinstance(node, dict):
        return
    for key, value in trie.leaves.items():
        if key not in node:
            node[key] = copy.deepcopy(value)
    for key in node.keys() & trie.branches.keys():
        _fill(node[key], trie.branches[key])
    if trie.values is not None:
        for value in node.values():
            _fill(value, trie.values)


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
        # A JSON round trip: the same deep copy as copy.deepcopy for plain data, and
        # several times faster.
        "spec": json.loads(json.dumps(obj.get("spec") or {})),
    }
    return fill_defaults(result)


def owned_object(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The comparable part of an object of another kind (``allowedKinds``): as :func:`owned`
    for its metadata, and every top-level field but ``status`` (a ConfigMap's ``data``, a
    Service's ``spec``, a Role's ``rules`` …). No schema defaults are filled: both sides come
    from the API server (the live object, and the server-side-apply dry run of Git's body),
    so its defaults are in both."""
    metadata = obj.get("metadata") or {}
    labels = {k: v for k, v in (metadata.get("labels") or {}).items() if k not in STAMPED_LABELS}
    annotations = {
        k: v for k, v in (metadata.get("annotations") or {}).items() if k not in STAMPED_ANNOTATIONS
    }
    content = {
        k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata", "status")
    }
    return {
        "apiVersion": obj.get("apiVersion"),
        "kind": obj.get("kind"),
        "metadata": {
            "name": metadata.get("name"),
            "namespace": metadata.get("namespace"),
            **({"labels": labels} if labels else {}),
            **({"annotations": annotations} if annotations else {}),
        },
        **json.loads(json.dumps(content)),
    }


def comparable(obj: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`owned` for a RayService, :func:`owned_object` for any other kind."""
    if (obj.get("apiVersion"), obj.get("kind")) == ("ray.io/v1", "RayService"):
        return owned(obj)
    return owned_object(obj)
