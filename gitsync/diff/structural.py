"""Structural differences between two plain values, with paths a person can read.

Lists of named mappings (containers, env, worker groups, applications, deployments) are keyed
by their name first, so a change reads ``workerGroupSpecs[cpu].template…image`` rather than an
index, and reordering named items is not a difference. deepdiff does the walking. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gitsync.mask import masked
from gitsync.model import FieldChange

NAME_KEYS = ("name", "groupName")


@dataclass(frozen=True)
class Difference:
    path: tuple[str | int, ...]
    kind: str  # added | removed | changed
    old: Any = None
    new: Any = None


def mask(difference: Difference, secret_roots: tuple[str, ...] = ()) -> Difference:
    """``difference`` with its secret values masked (:mod:`gitsync.mask`), before any text."""
    path = difference.path
    return Difference(
        path,
        difference.kind,
        masked(difference.old, path, secret_roots),
        masked(difference.new, path, secret_roots),
    )


def keyed(value: Any) -> Any:
    """Recursively turns lists of uniquely named mappings into mappings ``"[name]" → item``."""
    if isinstance(value, Mapping):
        return {k: keyed(v) for k, v in value.items()}
    if isinstance(value, list):
        items = [keyed(v) for v in value]
        names = _item_names(items)
        return items if names is None else dict(zip(names, items, strict=True))
    return value


def _item_names(items: list[Any]) -> list[str] | None:
    """``"[name]"`` for each item of a list of uniquely named mappings; None for another list."""
    for name_key in NAME_KEYS:
        names = [i.get(name_key) if isinstance(i, Mapping) else None for i in items]
        if items and all(isinstance(n, str) for n in names) and len(set(names)) == len(names):
            return [f"[{n}]" for n in names]
    return None


def keyed_path(value: Any, path: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """``path`` into ``value`` (list items by index) as :func:`keyed` names it: an item of a
    list of uniquely named mappings is ``"[name]"``."""
    named: list[str | int] = []
    for part in path:
        if isinstance(part, int) and isinstance(value, list) and 0 <= part < len(value):
            names = _item_names(value)
            named.append(names[part] if names is not None else part)
            value = value[part]
        else:
            named.append(part)
            value = value.get(part) if isinstance(value, Mapping) else None
    return tuple(named)


def differences(before: Any, after: Any, path: tuple[str | int, ...] = ()) -> list[Difference]:
    """Every difference, in path order. Mappings are walked here, skipping equal subtrees
    (a dict comparison is C-fast; most of a changed RayService is unchanged); the lists that
    remain after :func:`keyed` go to deepdiff."""
    if before == after:
        return []
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        found: list[Difference] = []
        for key in sorted({*before, *after}, key=str):
            if key not in before:
                found.append(Difference((*path, key), "added", None, after[key]))
            elif key not in after:
                found.append(Difference((*path, key), "removed", before[key], None))
            else:
                found.extend(differences(before[key], after[key], (*path, key)))
        return found
    if isinstance(before, list) and isinstance(after, list):
        return _list_differences(before, after, path)
    return [Difference(path, "changed", before, after)]


def _label(kind: str) -> str:
    if kind.endswith("_added"):
        return "added"
    return "removed" if kind.endswith("_removed") else "changed"


def _list_differences(
    before: list[Any], after: list[Any], path: tuple[str | int, ...]
) -> list[Difference]:
    # Imported here: deepdiff loads numpy when present (a quarter second), and a pass with
    # nothing changed never compares lists.
    from deepdiff import DeepDiff  # noqa: PLC0415

    tree = DeepDiff(before, after, verbose_level=2, view="tree")
    found = [
        Difference((*path, *item.path(output_format="list")), _label(kind), item.t1, item.t2)
        for kind in tree
        for item in tree[kind]
    ]
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


def field_change(difference: Difference, prefix: str = "") -> FieldChange:
    """``difference`` for programs: the full dotted path, the old and new values."""
    where = dotted(difference.path)
    where = f"{prefix}.{where}" if prefix and where else prefix or where
    return FieldChange(where, difference.old, difference.new)


def describe(difference: Difference, prefix: str = "") -> str:
    where = dotted(difference.path)
    where = f"{prefix}.{where}" if prefix and where else prefix or where
    if difference.kind == "added":
        return f"{where} added" + _value(difference.new, ": {}")
    if difference.kind == "removed":
        return f"{where} removed" + _value(difference.old, " (was {})")
    return f"{where}: {short(difference.old)} → {short(difference.new)}"
