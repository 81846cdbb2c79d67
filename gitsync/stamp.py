"""The object gitsync applies for a desired service: Git's manifest plus ownership stamps.

``app.kubernetes.io/managed-by: gitsync`` and ``gitsync.ray.io/environment`` labels (so
gitsync can list what it owns), revision, source, wave and applied-hash annotations
(docs/architecture.md, 'On the objects gitsync applies'). Pure.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from typing import Any, Protocol

from gitsync.diff.fieldsets import owns_all, union
from gitsync.names import (
    APPLIED_HASH,
    ENVIRONMENT,
    FIELD_MANAGER,
    MANAGED_BY,
    RECONCILE,
    REVISION,
    SOURCE,
    WAVE,
)

# The top-level fields (as managedFields name them) that are not an object's content: its
# spec, a ConfigMap's data, a Role's rules … are everything else.
NOT_CONTENT = frozenset({"f:apiVersion", "f:kind", "f:metadata", "f:status"})


def managed_selector(environment: str) -> str:
    """The label selector of everything gitsync applied for ``environment``."""
    return f"{MANAGED_BY}=gitsync,{ENVIRONMENT}={environment}"


def applied_for(obj: Mapping[str, Any], environment: str) -> bool:
    """Whether gitsync applied ``obj`` from Git for ``environment``: both ownership labels and
    the source annotation (gitsync's own state ConfigMaps carry the labels, not a source)."""
    metadata = obj.get("metadata") or {}
    labels = metadata.get("labels") or {}
    return (
        labels.get(MANAGED_BY) == "gitsync"
        and labels.get(ENVIRONMENT) == environment
        and SOURCE in (metadata.get("annotations") or {})
    )


def reconcile_disabled(
    live: Mapping[str, Any] | None, manifest: Mapping[str, Any] | None = None
) -> bool:
    """True when gitsync must leave this service alone: ``gitsync.ray.io/reconcile:
    disabled``, set by hand on the live object (``kubectl annotate``) during an incident.
    gitsync never writes that annotation unless Git declares it, and then Git wins: Git's
    value decides, whatever the live object says (the next apply would put it back)."""
    declared = ((manifest or {}).get("metadata") or {}).get("annotations") or {}
    if RECONCILE in declared:
        value = declared[RECONCILE]
    else:
        value = (((live or {}).get("metadata") or {}).get("annotations") or {}).get(RECONCILE)
    return str(value or "").strip().lower() == "disabled"


class Stampable(Protocol):
    """A desired object as Git declares it (a RayService or another allowed kind)."""

    @property
    def manifest(self) -> Mapping[str, Any]: ...
    @property
    def source(self) -> str: ...
    @property
    def wave(self) -> int: ...


def stamp_service(desired: Stampable, environment: str, revision: str | None) -> dict[str, Any]:
    """The body gitsync applies (and dry-runs) for ``desired`` of ``environment`` at
    ``revision``: the one way every stage stamps an object."""
    return stamped(
        desired.manifest,
        environment=environment,
        revision=revision,
        source=desired.source,
        wave=desired.wave,
    )


def stamped(
    manifest: Mapping[str, Any], *, environment: str, revision: str | None, source: str, wave: int
) -> dict[str, Any]:
    obj = copy.deepcopy(dict(manifest))
    metadata = obj.setdefault("metadata", {})
    metadata.setdefault("labels", {}).update({MANAGED_BY: "gitsync", ENVIRONMENT: environment})
    annotations = metadata.setdefault("annotations", {})
    annotations.update({SOURCE: source, WAVE: str(wave)})
    annotations[APPLIED_HASH] = applied_hash(obj)
    if revision:
        annotations[REVISION] = revision
    return obj


def stamped_hash(manifest: Mapping[str, Any], *, environment: str, source: str, wave: int) -> str:
    """``applied_hash(stamped(manifest, ...))`` without copying the manifest: what a no-op
    pass compares with the live object's annotation, for every service."""
    metadata = dict(manifest.get("metadata") or {})
    labels = {**(metadata.get("labels") or {}), MANAGED_BY: "gitsync", ENVIRONMENT: environment}
    annotations = {**(metadata.get("annotations") or {}), SOURCE: source, WAVE: str(wave)}
    metadata.update(labels=labels, annotations=annotations)
    return applied_hash({**manifest, "metadata": metadata})


def applied_hash(body: Mapping[str, Any]) -> str:
    """A hash of what gitsync applies, without the stamps that move by themselves (revision,
    the hash). Equal on the live object and in Git means Git has not changed since the apply."""
    metadata = dict(body.get("metadata") or {})
    annotations = {
        k: v
        for k, v in (metadata.get("annotations") or {}).items()
        if k not in (REVISION, APPLIED_HASH)
    }
    canonical = json.dumps(
        {**body, "metadata": {**metadata, "annotations": annotations}}, sort_keys=True
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def untouched_since_apply(
    live: Mapping[str, Any], body: Mapping[str, Any], applied: str | None = None
) -> bool:
    """True when the live object is provably what gitsync last applied and Git still wants,
    so a server-side dry run would show no change:

    - the applied hash matches (Git has not changed since the apply);
    - no other field manager has written its content (spec, or a ConfigMap's data …;
      KubeRay writes only the status subresource) nor owns a label or annotation Git
      declares (``ray.io/*`` annotations change KubeRay's behaviour);
    - gitsync's ``managedFields`` still own every field of ``body``: another client that
      changes a field takes it over, and one that removes it (a JSON patch ``remove``)
      leaves no owner at all, so only gitsync's own set shows it.

    ``body`` is the stamped body, or Git's manifest (then its fields are checked, not the
    stamps); ``applied`` its :func:`applied_hash` when already computed."""
    metadata = live.get("metadata") or {}
    wanted = applied if applied is not None else applied_hash(body)
    if (metadata.get("annotations") or {}).get(APPLIED_HASH) != wanted:
        return False
    declared = body.get("metadata") or {}
    mine: dict[str, Any] = {}
    for entry in metadata.get("managedFields") or []:
        fields = entry.get("fieldsV1") or {}
        if entry.get("subresource"):
            continue
        if entry.get("manager") == FIELD_MANAGER:
            mine = union(mine, fields)
            continue
        if any(name not in NOT_CONTENT for name in fields):  # spec, data, rules …
            return False
        theirs = fields.get("f:metadata") or {}
        for part in ("labels", "annotations"):
            owned_keys = theirs.get(f"f:{part}") or {}
            if any(f"f:{key}" in owned_keys for key in declared.get(part) or {}):
                return False
    mine_metadata = mine.get("f:metadata") or {}
    return (
        owns_all(mine_metadata.get("f:labels") or {}, declared.get("labels") or {})
        and owns_all(mine_metadata.get("f:annotations") or {}, declared.get("annotations") or {})
        and all(
            owns_all(mine.get(f"f:{name}") or {}, value)
            for name, value in body.items()
            if f"f:{name}" not in NOT_CONTENT
        )
    )
