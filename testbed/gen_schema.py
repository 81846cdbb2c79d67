"""Generates gitsync/manifests/crd_schema.py from the RayService CRD's OpenAPI v3 schema.

The API server refuses a RayService whose ``spec`` breaks the CRD's structural schema: a
string where an integer belongs, ``memory: 4Gib`` (the quantity pattern), a value outside an
enum or an int32. ``gitsync validate`` checks the same schema offline, so these fail in CI,
not at apply time. The table is derived from the CRD in Go's module cache, never typed by
hand; tests/integration/test_crd_schema.py checks it is current.

Only what validates is kept (type, enum, required, pattern, int32/int64 formats,
int-or-string, items, properties, additionalProperties, length and minimum bounds, the keys
of list-type map and set lists), and equal
subtrees (the pod template of the head and of every worker group) are stored once: a node
refers to its children by their index in ``NODES``.

    python -m testbed.gen_schema > gitsync/manifests/crd_schema.py && ruff format gitsync
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from testbed import crds
from testbed.binaries import ensure_binaries

# Formats the API server checks on integers; date-time appears only under status fields.
_FORMATS = frozenset({"int32", "int64"})
_BOUNDS = ("maxLength", "minLength", "minimum", "maximum")


def spec_schema(crd_file: Path) -> dict[str, Any]:
    crd = crds.crd(crd_file)
    schema = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]
    spec: dict[str, Any] = schema["openAPIV3Schema"]["properties"]["spec"]
    return spec


def _kind(schema: dict[str, Any]) -> str | None:
    """The node's type; int-or-string fields are one type here rather than an anyOf."""
    # Fields the walker would wrongly call unknown, or embedded objects it cannot check: a
    # CRD that starts using them needs the walker taught first.
    for unsupported in ("x-kubernetes-preserve-unknown-fields", "x-kubernetes-embedded-resource"):
        if unsupported in schema:
            raise ValueError(f"unsupported schema keyword: {unsupported}")
    if schema.get("x-kubernetes-int-or-string"):
        assert schema.get("anyOf") == [{"type": "integer"}, {"type": "string"}], schema
        return "int-or-string"
    if "anyOf" in schema or "oneOf" in schema or "allOf" in schema:
        raise ValueError(f"unsupported schema combinator: {sorted(schema)}")
    kind = schema.get("type")
    return str(kind) if kind is not None else None


def compact(spec: dict[str, Any]) -> tuple[tuple[dict[str, Any], ...], int]:
    """The schema as a table of distinct nodes, children first, and the index of ``spec``."""
    nodes: list[dict[str, Any]] = []
    index: dict[str, int] = {}

    def add(schema: dict[str, Any]) -> int:
        node: dict[str, Any] = {}
        kind = _kind(schema)
        if kind is not None:
            node["type"] = kind
        if "enum" in schema:
            node["enum"] = tuple(schema["enum"])
        if "pattern" in schema:
            node["pattern"] = schema["pattern"]
        if schema.get("format") in _FORMATS:
            node["format"] = schema["format"]
        for bound in _BOUNDS:
            if bound in schema:
                node[bound] = schema[bound]
        properties = schema.get("properties") or {}
        # The API server fills a default before it validates: a defaulted field is never
        # missing, so only the required fields without a default are kept.
        required = tuple(
            name
            for name in schema.get("required", ())
            if "default" not in (properties.get(name) or {})
        )
        if required:
            node["required"] = required
        if properties:
            node["properties"] = {name: add(child) for name, child in sorted(properties.items())}
        if isinstance(schema.get("items"), dict):
            node["items"] = add(schema["items"])
        # The API server refuses two items with the same key in a list of type map (or the
        # same value in a set); a key field's default counts when an item leaves it out.
        if schema.get("x-kubernetes-list-type") in ("map", "set"):
            node["listType"] = schema["x-kubernetes-list-type"]
        if schema.get("x-kubernetes-list-type") == "map":
            keys = schema["x-kubernetes-list-map-keys"]
            fields = schema["items"].get("properties") or {}
            node["listMapKeys"] = tuple(keys)
            defaults = {k: fields[k]["default"] for k in keys if "default" in fields.get(k, {})}
            if defaults:
                node["listMapDefaults"] = defaults
        if isinstance(schema.get("additionalProperties"), dict):
            node["additionalProperties"] = add(schema["additionalProperties"])
        key = repr(node)
        if key not in index:
            index[key] = len(nodes)
            nodes.append(node)
        return index[key]

    root = add(spec)
    return tuple(nodes), root


def render(crd_file: Path, version: str) -> str:
    nodes, root = compact(spec_schema(crd_file))
    lines = [
        f'"""The OpenAPI v3 schema of the ray.io/v1 RayService spec (KubeRay {version}).',
        "",
        "Generated by ``python -m testbed.gen_schema``; do not edit. Each node names its",
        "children by their index in NODES, so subtrees the CRD repeats are stored once; only",
        'the keywords the API server validates with are kept."""',
        "",
        "# ruff: noqa: E501  (the CRD's patterns are longer than a line)",
        "",
        "from __future__ import annotations",
        "",
        "from typing import Any",
        "",
        f'KUBERAY_VERSION = "{version}"',
        "",
        f"SPEC = {root}",
        "",
        "NODES: tuple[dict[str, Any], ...] = (",
    ]
    lines += [f"    {node!r}," for node in nodes]
    lines.append(")")
    return "\n".join(lines) + "\n"


def main() -> int:
    binaries = ensure_binaries(quiet=True)
    sys.stdout.write(
        render(binaries.kuberay_crds / "ray.io_rayservices.yaml", binaries.kuberay_version)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
