"""Drift: how a live RayService differs from Git at the revision last applied, and who did it.

Pure. Both sides arrive normalised (:func:`gitsync.diff.normalize.owned`), the desired side
as the API server's server-side-apply dry run of Git's body, so CRD defaults, admission and
other managers' *own* fields never count; KubeRay writes only the status subresource, which
``owned`` drops. What remains differs in a field Git owns. The culprit is read from
``managedFields``: the managers other than gitsync that own a drifted path (KubeRay's status
writes are the ``status`` subresource and are skipped). What healing would make KubeRay do
is the ordinary classification of live → Git, so a hand-edited image is reported as "healing
means a cluster swap".
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from gitsync.diff.classify import Options, classify_any
from gitsync.diff.fieldsets import owns_path
from gitsync.diff.structural import differences, dotted, keyed, keyed_path
from gitsync.manifests.yamldoc import Document, parse_documents
from gitsync.model import Action, Change, FieldChange, ServiceKey
from gitsync.names import FIELD_MANAGER


class DriftKind(enum.StrEnum):
    MODIFIED = "modified"  # a Git-owned field changed by someone else
    DELETED = "deleted"  # a managed service is gone
    UNEXPECTED = "unexpected"  # gitsync-labelled, but Git no longer declares it


@dataclass(frozen=True)
class Drift:
    key: ServiceKey
    kind: DriftKind
    revision: str  # the applied revision it differs from
    fields: tuple[str, ...] = ()  # dotted paths, e.g. spec.serveConfigV2
    managers: tuple[str, ...] = ()  # who owns a drifted field now, e.g. "kubectl-edit"
    heal: Change | None = None  # what re-applying Git's version makes KubeRay do
    # Each drifted field as it changed since the apply: old is Git's value, new the live one.
    changes: tuple[FieldChange, ...] = ()
    source: str = ""  # where Git declares the service: "file:line" (a rendered one's origin)
    # Drifted fields an overlay's patch set: (field path, the patch's "file:line").
    patched: tuple[tuple[str, str], ...] = ()
    # The other drifted fields Git writes in the service's own file: (field path, "file:line").
    written: tuple[tuple[str, str], ...] = ()

    @property
    def sources(self) -> tuple[str, ...]:
        """The files to look at in Git: the patches that set drifted fields, then the file
        declaring the service."""
        found = [where for _, where in self.patched]
        return tuple(dict.fromkeys([*found, *([self.source] if self.source else [])]))

    def source_of(self, path: str) -> str:
        """Where Git sets the field ``path``: the patch that set it, else its line in the
        service's file (the base, for an overlay), else the service's first line."""
        return next(
            (where for field, where in (*self.patched, *self.written) if field == path),
            self.source,
        )

    @property
    def message(self) -> str:
        if self.kind is DriftKind.DELETED:
            return f"{self.key} was deleted; Git at {self.revision[:12]} declares it"
        if self.kind is DriftKind.UNEXPECTED:
            return (
                f"{self.key} is managed by gitsync but Git at {self.revision[:12]} no longer "
                "declares it"
            )
        who = f" by {', '.join(self.managers)}" if self.managers else ""
        fields = ", ".join(self.fields[:4]) + (" …" if len(self.fields) > 4 else "")
        at = f": {', '.join(self.sources)}" if self.sources else ""
        text = f"{self.key}: {fields} changed{who} (Git at {self.revision[:12]}{at})"
        if self.heal is not None:
            text += f"; healing is a {self.heal.action}: {self.heal.summary}"
        return text


def owners(live: Mapping[str, Any], paths: Sequence[tuple[str | int, ...]]) -> tuple[str, ...]:
    """The field managers other than gitsync that own one of ``paths`` in ``live`` (from
    its ``managedFields``; status-subresource writers skipped): who changed the drifted
    field. A field someone removed has no owner left: nobody is named."""
    found = set()
    for entry in (live.get("metadata") or {}).get("managedFields") or []:
        if entry.get("manager") == FIELD_MANAGER or entry.get("subresource"):
            continue
        fields = entry.get("fieldsV1") or {}
        if any(owns_path(fields, live, path) for path in paths):
            found.add(str(entry.get("manager", "?")))
    return tuple(sorted(found))


def modified(
    key: ServiceKey,
    live_owned: Mapping[str, Any],
    desired_owned: Mapping[str, Any],
    live_raw: Mapping[str, Any],
    revision: str,
    options: Options,
) -> Drift | None:
    """The drift of one live service against Git's dry-run body, or None when they agree."""
    found = differences(keyed(dict(live_owned)), keyed(dict(desired_owned)))
    if not found:
        return None
    heal = classify_any(live_owned, desired_owned, options)
    # Each field as it changed since the apply (old: Git's, new: live). The heal's fields are
    # the Ray-aware ones (serveConfigV2 parsed down to the deployment), the reverse change;
    # the structural differences when it names none.
    changes = (
        tuple(FieldChange(f.path, f.new, f.old) for f in heal.fields)
        if heal is not None and heal.fields
        else tuple(FieldChange(dotted(d.path), d.new, d.old) for d in found)
    )
    return Drift(
        key,
        DriftKind.MODIFIED,
        revision,
        tuple(dict.fromkeys(dotted(d.path) for d in found)),
        owners(live_raw, [d.path for d in found]),
        heal,
        changes,
    )


def placed(
    drift: Drift,
    source: str,
    line: int,
    patched: Mapping[tuple[str | int, ...], tuple[str, int]],
    manifest: Mapping[str, Any],
    lines: Mapping[str, int] | None = None,
) -> Drift:
    """``drift`` with where Git declares the service (``source:line``) and, for each drifted
    field a patch set (``patched``: the rendered service's patched paths, list items by
    index), that patch's file and line: what to edit to change Git's version. Any other
    drifted field is placed at its own line (or its nearest written parent's) in ``source``
    (``lines``: each field of the service's document there, dotted as drift names fields)."""
    sites = {
        dotted(keyed_path(manifest, path)): f"{file}:{at}" for path, (file, at) in patched.items()
    }
    own = {path: f"{source}:{at}" for path, at in (lines or {}).items() if path}
    found, written = [], []
    for change in drift.changes or tuple(FieldChange(f, None, None) for f in drift.fields):
        site = _nearest(sites, change.path)
        if site is not None:
            found.append((change.path, sites[site]))
            continue
        at = _nearest(own, change.path)
        if at is not None:
            written.append((change.path, own[at]))
    return replace(
        drift,
        source=f"{source}:{line}",
        patched=tuple(dict.fromkeys(found)),
        written=tuple(dict.fromkeys(written)),
    )


SERVE_CONFIG = ("spec", "serveConfigV2")


def field_lines(doc: Document) -> dict[str, int]:
    """The line of each field of a RayService's document, dotted as drift names fields
    (named list items by name), with the fields inside a ``serveConfigV2: |`` block too."""
    found = {dotted(keyed_path(doc.data, path)): doc.line_of(*path) for path in doc.lines}
    serve = doc.data.get("spec", {}) if isinstance(doc.data, Mapping) else {}
    text = serve.get("serveConfigV2") if isinstance(serve, Mapping) else None
    if isinstance(text, str) and SERVE_CONFIG in doc.block_scalars:
        # A `|` block's first line is the file's line after `serveConfigV2:`.
        inner, problems = parse_documents(text, doc.file, offset=doc.line_of(*SERVE_CONFIG))
        if len(inner) == 1 and not problems:
            found.update(
                {
                    dotted((*SERVE_CONFIG, *keyed_path(inner[0].data, path))): inner[0].line_of(
                        *path
                    )
                    for path in inner[0].lines
                    if path
                }
            )
    return found


def _nearest(sites: Mapping[str, str], path: str) -> str | None:
    """The longest of ``sites`` that is ``path`` or a parent of it."""
    return max(
        (p for p in sites if path == p or path.startswith((p + ".", p + "["))),
        key=len,
        default=None,
    )


def corrections_left(history: Sequence[float], now: float, limit: int, window: float) -> int:
    """How many more corrections of one field the backoff allows now (0: stop, it's a fight)."""
    recent = [t for t in history if now - t < window]
    return max(0, limit - len(recent))


def heal_cost(drifts: Sequence[Drift]) -> list[str]:
    """Lines warning what healing will cost: cluster swaps double the cluster for a while."""
    lines = []
    for drift in drifts:
        if drift.heal is not None and drift.heal.action is Action.CLUSTER_SWAP:
            lines.append(
                f"{drift.key}: healing is a cluster swap ({'; '.join(drift.heal.details[:2])}): "
                "KubeRay starts a new RayCluster and needs about twice the cluster's resources "
                "until it switches over"
            )
    return lines
