"""Semantic diff of two ``serveConfigV2`` strings, per application and per deployment.

KubeRay compares the strings byte for byte (``checkIfNeedSubmitServeApplications``) and PUTs
on any difference; Ray Serve then redeploys only applications whose config changed. So a
text-only difference is a *reformat* (a PUT that changes nothing), and a structural one names
the applications and deployments it touches. Pure.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from gitsync.diff.structural import Difference, differences, dotted, field_change, mask, short
from gitsync.mask import MASK
from gitsync.model import FieldChange

_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ServeChange(enum.StrEnum):
    NONE = "none"  # identical strings
    REFORMAT = "reformat"  # different text, same structure
    UPDATE = "update"  # different structure (or unparsable on one side)


@dataclass(frozen=True)
class ServeDiff:
    change: ServeChange
    details: tuple[str, ...] = ()
    apps_changed: tuple[str, ...] = ()
    fields: tuple[FieldChange, ...] = ()


def _keyed(items: Any, key: str, default: str | None = None) -> Any:
    """A list of named mappings → a mapping by name (order of apps/deployments is not
    meaningful to Ray Serve); anything else unchanged."""
    if not isinstance(items, list) or not all(isinstance(i, Mapping) for i in items):
        return items
    result: dict[str, Any] = {}
    for item in items:
        name = item.get(key, default)
        if not isinstance(name, str) or name in result:
            return items  # not keyable: compare as a list
        result[name] = {k: v for k, v in item.items() if k != key}
    return result


def structure(text: str) -> dict[str, Any] | None:
    """The parsed config with applications and deployments keyed by name; None if unparsable."""
    try:
        parsed = yaml.load(text, Loader=_Loader)  # noqa: S506 - a safe loader
    except yaml.YAMLError:
        return None
    if not isinstance(parsed, dict):
        return None
    apps = _keyed(parsed.get("applications"), "name", "default")
    if isinstance(apps, dict):
        apps = {
            name: {**app, "deployments": _keyed(app.get("deployments"), "name")}
            if "deployments" in app
            else app
            for name, app in apps.items()
        }
    return {**parsed, "applications": apps} if "applications" in parsed else parsed


def _describe(path: tuple[str | int, ...]) -> tuple[str | None, str]:
    """``('applications', 'rank', 'deployments', 'Ranker', 'num_replicas')`` →
    (``rank``, ``deployment Ranker: num_replicas``)."""
    if len(path) >= 2 and path[0] == "applications" and isinstance(path[1], str):
        app, rest = path[1], path[2:]
        if len(rest) >= 2 and rest[0] == "deployments" and isinstance(rest[1], str):
            field = dotted(rest[2:])
            return app, f"deployment {rest[1]}" + (f": {field}" if field else "")
        return app, dotted(rest)
    return None, dotted(path)


def diff_serve(old: str | None, new: str | None, reveal: bool = False) -> ServeDiff:
    """The difference, with environment variable values masked unless ``reveal``."""
    old, new = old or "", new or ""
    if old == new:
        return ServeDiff(ServeChange.NONE)
    before, after = structure(old), structure(new)
    if before is not None and before == after:
        return ServeDiff(
            ServeChange.REFORMAT,
            (
                "serveConfigV2 text changed but parses the same (layout, key order or "
                "whitespace): KubeRay resubmits it, Ray Serve redeploys nothing",
            ),
        )
    if before is None or after is None:
        side = "old" if before is None else "new"
        # Unparsable text cannot be walked for its env_vars: masked whole.
        shown = (old or None, new or None) if reveal else (old and MASK, new and MASK)
        whole = (FieldChange(SERVE_PATH, shown[0] or None, shown[1] or None),)
        return ServeDiff(
            ServeChange.UPDATE, (f"serveConfigV2: the {side} config does not parse",), (), whole
        )
    details: list[str] = []
    apps: list[str] = []
    found = differences(before, after)
    if not reveal:
        found = [mask(d) for d in found]
    for difference in found:
        app, field = _describe(difference.path)
        if app is not None and app not in apps:
            apps.append(app)
        where = f"app {app}" if app is not None else "serveConfigV2"
        if app is not None and not field:  # a whole application
            value = difference.new if difference.kind == "added" else difference.old
            prefix = value.get("route_prefix", "/") if isinstance(value, Mapping) else "?"
            details.append(f"{where}: {difference.kind} (route_prefix {prefix})")
        elif difference.kind == "added":
            details.append(f"{where}: {field} added: {short(difference.new)}")
        elif difference.kind == "removed":
            details.append(f"{where}: {field} removed (was {short(difference.old)})")
        else:
            details.append(f"{where}: {field}: {short(difference.old)} → {short(difference.new)}")
    fields = tuple(field_change(_named(d), SERVE_PATH) for d in found)
    return ServeDiff(ServeChange.UPDATE, tuple(details), tuple(apps), fields)


SERVE_PATH = "spec.serveConfigV2"


def _named(difference: Difference) -> Difference:
    """Applications and deployments keyed by name (:func:`structure`) named as list items:
    ``applications.rank.deployments.Ranker`` → ``applications[rank].deployments[Ranker]``."""
    path = list(difference.path)
    if len(path) >= 2 and path[0] == "applications" and isinstance(path[1], str):
        path[1] = f"[{path[1]}]"
        if len(path) >= 4 and path[2] == "deployments" and isinstance(path[3], str):
            path[3] = f"[{path[3]}]"
    return Difference(tuple(path), difference.kind, difference.old, difference.new)
