"""A RayService spec against the CRD's OpenAPI v3 schema: what the API server would refuse.

The API server validates every RayService against the structural schema KubeRay's CRD
declares (gitsync/manifests/crd_schema.py, generated from it): types, int-or-string fields,
the quantity pattern of ``resources`` (``4Gib`` is refused), enums, int32 ranges (which the
API server leaves to KubeRay's Go types to fail on), required
fields, items a list-type map or set holds twice (two containers named alike). This walker
applies the same rules offline so ``gitsync validate`` refuses what the apply would. Pure.

Unknown fields are refused too: gitsync applies server-side, and server-side apply refuses a
field the schema does not declare (a plain create would prune it). Left out on purpose: the
CEL rule on ``rayClusterConfig.managedBy`` and date-time formats (only under status
fields). A null field is treated as absent, as the API server prunes nulls of non-nullable
fields before it validates; a null list item is not pruned and fails its type.

Why not the ``jsonschema`` package: the Kubernetes dialect differs where it matters (int32
formats, int-or-string, list-type map keys with their defaults, defaulting before
``required``, nulls pruned, Go's end anchor), so each would need a custom keyword or a
rewrite of the schema, and its errors would be reworded to say what and where anyway; a
walker of about 200 lines does it with no new dependency (jsonschema pulls in a compiled
one, rpds-py) and stops at the first hundred problems.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterator, Mapping
from functools import cache
from itertools import islice
from typing import Any

from gitsync.manifests.crd_schema import NODES, SPEC

Path = tuple[str | int, ...]

_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
_QUANTITY = next(n["pattern"] for n in NODES if "pattern" in n and "KMGTPE" in n["pattern"])
UNKNOWN = "the RayService CRD does not declare it and server-side apply refuses it"
_KINDS = {
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "boolean": "true or false",
    "object": "a mapping",
    "array": "a list",
    "int-or-string": "an integer or a string",
}


# A hostile document (50,000 worker groups, each wrong) would otherwise yield a problem per
# value; the first ones say what is wrong, as the environment's own cap reasons.
MAX_PROBLEMS = 100
MAX_SHOWN = 80  # characters of a refused value quoted in a message


def spec_problems(spec: Any) -> list[tuple[Path, str]]:
    """The schema violations in a RayService ``spec`` (at most MAX_PROBLEMS, found lazily so
    the walk stops there): (field path, message)."""
    return list(islice(_walk(spec, SPEC, ("spec",)), MAX_PROBLEMS))


def _walk(value: Any, index: int, path: Path) -> Iterator[tuple[Path, str]]:
    node = NODES[index]
    kind = node.get("type")
    if kind is not None and not _is(value, kind):
        yield path, f"must be {_KINDS.get(kind, kind)}, not {_shown(value)}" + _hint(value, kind)
        return
    if "enum" in node and value not in node["enum"]:
        choices = ", ".join(str(c) for c in node["enum"])
        close = difflib.get_close_matches(str(value), [str(c) for c in node["enum"]], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        yield path, f"must be one of {choices}, not {_shown(value)}{hint}"
    if isinstance(value, str):
        yield from _string(value, node, path)
    elif isinstance(value, int) and not isinstance(value, bool):
        yield from _integer(value, node, path)
    elif isinstance(value, Mapping):
        yield from _object(value, node, path)
    elif isinstance(value, list):
        if "items" in node:
            # A null item is not pruned as a null field is: it fails its type.
            for position, item in enumerate(value):
                yield from _walk(item, node["items"], (*path, position))
        if "listType" in node:
            yield from _duplicates(value, node, path)


def _string(value: str, node: Mapping[str, Any], path: Path) -> Iterator[tuple[Path, str]]:
    pattern = node.get("pattern")
    if pattern is not None and not _compiled(pattern).search(value):
        if pattern == _QUANTITY:
            yield path, f"must be a quantity such as 4Gi, 500m or 2, not {_shown(value)}"
        else:
            yield path, f"must match {pattern}, not {_shown(value)}"
    # Kubernetes counts characters (runes), as len() does.
    if "maxLength" in node and len(value) > node["maxLength"]:
        yield path, f"must be at most {node['maxLength']} characters, not {len(value)}"
    if "minLength" in node and len(value) < node["minLength"]:
        yield path, f"must be at least {node['minLength']} characters, not {len(value)}"


def _integer(value: int, node: Mapping[str, Any], path: Path) -> Iterator[tuple[Path, str]]:
    low, high = _RANGES.get(node.get("format", ""), (None, None))
    if low is not None and high is not None and not low <= value <= high:
        bits = node["format"][3:]
        yield path, f"must fit a {bits}-bit integer ({low} to {high}), not {value}"
    if "minimum" in node and value < node["minimum"]:
        yield path, f"must be at least {node['minimum']}, not {value}"
    if "maximum" in node and value > node["maximum"]:
        yield path, f"must be at most {node['maximum']}, not {value}"


def _object(
    value: Mapping[str, Any], node: Mapping[str, Any], path: Path
) -> Iterator[tuple[Path, str]]:
    for name in node.get("required", ()):
        if value.get(name) is None:
            yield path, f"needs {name!r}"
    properties: Mapping[str, int] = node.get("properties", {})
    extra = node.get("additionalProperties")
    for key, child in value.items():
        if child is None:
            continue
        if key in properties:
            yield from _walk(child, properties[key], (*path, key))
        elif extra is not None:
            yield from _walk(child, extra, (*path, key))
        elif properties:
            # Server-side apply converts the body to the schema's type before anything is
            # pruned, and a field the type lacks fails that conversion ("field not declared
            # in schema", structuredMergeManager.Apply). An object without properties (an
            # embedded template's metadata) takes any field.
            close = difflib.get_close_matches(str(key), sorted(properties), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            yield (*path, key), f"unknown field: {UNKNOWN}{hint}"


def _duplicates(
    items: list[Any], node: Mapping[str, Any], path: Path
) -> Iterator[tuple[Path, str]]:
    """Items a list-type map (or set) holds twice: the API server refuses the object."""
    keys: tuple[str, ...] = node.get("listMapKeys", ())
    defaults: Mapping[str, Any] = node.get("listMapDefaults", {})
    first: dict[str, int] = {}
    field = str(path[-1])
    for position, item in enumerate(items):
        if keys:
            if not isinstance(item, Mapping):
                continue  # reported as a wrong type
            values = [item.get(k, defaults.get(k)) for k in keys]
            shown = ", ".join(f"{k} {_shown(v)}" for k, v in zip(keys, values, strict=True))
            what = (
                f"{shown} is already used by {field}[{{}}]; the list is keyed by {', '.join(keys)}"
            )
        else:
            values = [item]
            what = f"{_shown(item)} is already at {field}[{{}}]; the list is a set"
        identity = json.dumps(values, sort_keys=True, default=str)
        if identity in first:
            yield (*path, position), what.format(first[identity])
        else:
            first[identity] = position


def _is(value: Any, kind: str) -> bool:
    if isinstance(value, bool):
        return kind == "boolean"
    if kind == "integer":
        # JSON has one number type: 3.0 reaches the API server as an integer.
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if kind == "number":
        return isinstance(value, int | float)
    if kind == "int-or-string":
        return isinstance(value, int | str)
    expected = {"string": str, "boolean": bool, "object": Mapping, "array": list}[kind]
    return isinstance(value, expected)


def _shown(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = json.dumps(value)
    # A hostile 100,000-character value would otherwise be repeated in the message.
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 1] + "…"


def _hint(value: Any, kind: str) -> str:
    if kind in ("string", "int-or-string") and isinstance(value, bool | int | float):
        return f'; quote it: "{json.dumps(value)}"'
    if kind == "array" and not isinstance(value, list):
        return "; write it as a list (each item on a '- ' line)"
    return ""


@cache
def _compiled(pattern: str) -> re.Pattern[str]:
    # Go's regexp (which the API server uses) has `$` match only at the very end; Python's
    # `$` also matches before a final newline, so the anchor is made exact.
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern)
