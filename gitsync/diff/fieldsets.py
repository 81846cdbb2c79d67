"""managedFields field sets (``fieldsV1``): does a manager own a value, or one path in it.

A field set is a set of paths, written as a trie: ``f:<field>`` for a map field, ``k:{json}``
for the member of a keyed list (``x-kubernetes-list-type: map``) named by its key fields,
``v:<json>`` for a member of a set, ``.`` for the item itself. An atomic list is owned as a
whole: its own path is in the set, with nothing below it. Pure.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from gitsync.diff.structural import NAME_KEYS


def union(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(a)
    for key, value in b.items():
        merged[key] = union(merged[key], value) if key in merged else value
    return merged


def owns_all(fields: Mapping[str, Any], value: Any) -> bool:
    """Whether ``fields`` owns every field of ``value``, the part of an applied body it
    describes. A keyed list appears only as the prefix of one member entry per item, so one
    whose members are all gone is absent."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            child = fields.get(f"f:{key}")
            if item is not None and (child is None or not owns_all(child, item)):
                return False
        return True
    if isinstance(value, list):
        members = _members(fields)
        if not members:
            return True  # atomic: owned as a whole
        for item in value:
            child = next((v for k, v in members if is_member(k, item)), None)
            if child is None or not owns_all(child, item):
                return False
    return True


def owns_path(fields: Mapping[str, Any], value: Any, path: tuple[str | int, ...]) -> bool:
    """Whether ``fields`` owns ``path`` of the object ``value``, or a whole field above it (an
    atomic list, a string). List steps are indices or :func:`~gitsync.diff.structural.keyed`
    names (``[ray-head]``), resolved in ``value`` and matched with the member entries."""
    node: Mapping[str, Any] | None = fields
    for part in path:
        assert node is not None
        if isinstance(part, str) and not part.startswith("["):
            node = node.get(f"f:{part}")
            value = value.get(part) if isinstance(value, Mapping) else None
        else:
            members = _members(node)
            if not members:
                return True  # an atomic list: owned as a whole
            item = _item(value, part)
            node = next((v for k, v in members if item is not None and is_member(k, item)), None)
            value = item
        if node is None:
            return False
        if not node:
            return True  # a leaf: owned with everything in it
    return True


def is_member(name: str, item: Any) -> bool:
    """Whether ``k:{"name":"head"}`` / ``v:"x"`` names ``item``. A key field the item omits
    counts as equal: the API server fills the schema's default (a port's ``protocol: TCP``)."""
    try:
        key = json.loads(name[2:])
    except ValueError:
        return False
    if name.startswith("v:"):
        return bool(key == item)
    if not isinstance(key, dict) or not isinstance(item, Mapping):
        return False
    present = [k for k in key if k in item]
    return bool(present) and all(item[k] == key[k] for k in present)


def _members(fields: Mapping[str, Any]) -> list[tuple[str, Any]]:
    return [(k, v) for k, v in fields.items() if k.startswith(("k:", "v:"))]


def _item(value: Any, part: str | int) -> Any:
    if not isinstance(value, list):
        return None
    if isinstance(part, int):
        return value[part] if 0 <= part < len(value) else None
    name = part[1:-1]
    return next(
        (
            i
            for i in value
            if isinstance(i, Mapping) and any(i.get(key) == name for key in NAME_KEYS)
        ),
        None,
    )
