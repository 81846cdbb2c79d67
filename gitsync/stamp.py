"""The object gitsync applies for a desired service: Git's manifest plus ownership stamps.

DESIGN §4: ``app.kubernetes.io/managed-by: gitsync`` and ``gitsync.ray.io/environment``
labels (so gitsync can list what it owns), revision, source and wave annotations. Pure.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

MANAGED_BY = "app.kubernetes.io/managed-by"
ENVIRONMENT = "gitsync.ray.io/environment"
REVISION = "gitsync.ray.io/revision"
SOURCE = "gitsync.ray.io/source"
WAVE = "gitsync.ray.io/wave"
FIELD_MANAGER = "gitsync"


def managed_selector(environment: str) -> str:
    """The label selector of everything gitsync applied for ``environment``."""
    return f"{MANAGED_BY}=gitsync,{ENVIRONMENT}={environment}"


def stamped(
    manifest: Mapping[str, Any], *, environment: str, revision: str | None, source: str, wave: int
) -> dict[str, Any]:
    obj = copy.deepcopy(dict(manifest))
    metadata = obj.setdefault("metadata", {})
    metadata.setdefault("labels", {}).update({MANAGED_BY: "gitsync", ENVIRONMENT: environment})
    annotations = metadata.setdefault("annotations", {})
    annotations.update({SOURCE: source, WAVE: str(wave)})
    if revision:
        annotations[REVISION] = revision
    return obj
