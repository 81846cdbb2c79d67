"""Structural differences between two plain values, with paths a person can read.

Lists of named mappings (containers, env, worker groups, applications, deployments) are keyed
by their name first, so a change reads ``workerGroupSpecs[cpu].template…image`` rather than an
index, and reordering named items is not a difference. deepdiff does the walking. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from deepdiff import DeepDiff

NAME_KEYS = ("name", "groupName")


@dataclass(frozen=True)
class Difference:
    path: tuple[str | int, ...]
    kind: str  # added | removed | changed
    old: Any = None
    new: Any = None


def keyed(value: Any) -> Any:
    """Recursively turns lists of uniquely named mappings into mappings ``"[name]" → item``."""
    if isinstance(value, Mapping):
        return {k: keyed(v) for k, v in value.items()}
    if isinstance(value, list):
        items = [keyed(v) for v in value]
        for name_key in NAME_KEYS:
            names = [i.get(name_key) if isinstance(i, Mapping) else None for i in items]
            if items and all(isinstance(n, str) for n in names) and len(set(names)) == len(names):
                return {f"[{n}]": i for n, i in zip(names, items, strict=True)}
        return items
    return value


def differences(before: Any, after: Any) -> list[Difference]:
    if before == after:
        return []
    tree = DeepDiff(before, after, verbose_level=2, view="tree")
    found: list[Difference] = []
    for kind in sorted(tree):
        label = (
            "added"
            if kind.endswith("_added")
            else "removed"
            if kind.endswith("_removed")
            else "changed"
        )
        for item in tree[kind]:
            path = tuple(item.path(output_format="list"))
            found.append(Difference(path, label, item.t1, item.t2))
    return sorted(found, key=lambda d: [str(p) for p in d.path])


def dotted(path: tuple[str | int, ...]) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part.startswith("["):
            text += part
        else:
            text += f".{part}" if text else part
    return text


def short(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _value(value: Any, template: str) -> str:
    """Scalars are shown; a whole added or removed object is named by its path alone."""
    return "" if isinstance(value, Mapping | list) else template.format(short(value))


def describe(difference: Difference, prefix: str = "") -> str:
    where = dotted(difference.path)
    where = f"{prefix}.{where}" if prefix and where else prefix or where
    if difference.kind == "added":
        return f"{where} added" + _value(difference.new, ": {}")
    if difference.kind == "removed":
        return f"{where} removed" + _value(difference.old, " (was {})")
    return f"{where}: {short(difference.old)} → {short(difference.new)}"
