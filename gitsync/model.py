"""The vocabulary every stage shares: identities, predicted actions, health, and how a
rollout goes (its steps and its outcome).

Plain frozen values only; no I/O and no behaviour beyond formatting.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

RAYSERVICE_KIND = "RayService"
RAYSERVICE_API_VERSION = "ray.io/v1"


@dataclass(frozen=True, order=True, slots=True)
class ServiceKey:
    """The one identity of an object gitsync manages, used as the key in logs, errors and
    reports: a RayService (printed ``namespace/name``) or another kind the repository config
    allows (``allowedKinds``; printed ``namespace/Kind/name``)."""

    namespace: str
    name: str
    kind: str = RAYSERVICE_KIND
    api_version: str = RAYSERVICE_API_VERSION

    def __str__(self) -> str:
        if self.is_rayservice:
            return f"{self.namespace}/{self.name}"
        return f"{self.namespace}/{self.kind}/{self.name}"

    @property
    def is_rayservice(self) -> bool:
        return self.kind == RAYSERVICE_KIND and self.api_version == RAYSERVICE_API_VERSION

    @property
    def label(self) -> str:
        """The name within its namespace: ``name`` for a RayService, else ``Kind/name``."""
        return self.name if self.is_rayservice else f"{self.kind}/{self.name}"

    @classmethod
    def parse(cls, text: str) -> ServiceKey:
        namespace, sep, name = text.partition("/")
        if not sep or not namespace or not name or "/" in name:
            raise ValueError(f"expected <namespace>/<name>, got {text!r}")
        return cls(namespace, name)


class Action(enum.StrEnum):
    """What applying a change will make KubeRay do (docs/architecture.md, 'KubeRay rules')."""

    CREATE = "create"
    SERVE_UPDATE = "serve-update"
    SERVE_REFORMAT = "serve-reformat"
    CLUSTER_SWAP = "cluster-swap"
    CLUSTER_IN_PLACE = "cluster-in-place"
    CLUSTER_IGNORED = "cluster-ignored"
    CONFIGURED = "configured"  # another kind (allowedKinds) whose applied fields change
    SCALE_INEFFECTIVE = "scale-ineffective"
    METADATA = "metadata"
    PRUNE = "prune"
    ORPHAN = "orphan"  # no longer in Git, left running: the environment does not prune
    UNCHANGED = "unchanged"
    SKIPPED = "skipped"  # the live object says gitsync.ray.io/reconcile: disabled


class Health(enum.StrEnum):
    """gitsync's health of one RayService, stricter than Ready=True (docs/architecture.md,
    'Health')."""

    HEALTHY = "Healthy"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"
    MISSING = "Missing"
    SUSPENDED = "Suspended"
    UNKNOWN = "Unknown"


@dataclass(frozen=True, order=True, slots=True)
class Problem:
    """One thing wrong with the repository's content, printed ``file:line: message``."""

    file: str
    line: int | None
    message: str

    # A hostile value echoed into a message (a 1 MB name) must not make a 1 MB log line or
    # commit status: the middle goes, the start (what) and the end (what to do) stay.
    MAX_MESSAGE: ClassVar[int] = 1000

    def __post_init__(self) -> None:
        if not self.file.isprintable():  # a file named "a\nb.yaml" must not forge a log line
            shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in self.file)
            object.__setattr__(self, "file", shown)
        if len(self.message) > self.MAX_MESSAGE:
            half = self.MAX_MESSAGE // 2
            cut = len(self.message) - 2 * half
            text = f"{self.message[:half]} …[{cut} characters]… {self.message[-half:]}"
            object.__setattr__(self, "message", text)

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.message}"


@dataclass(frozen=True, slots=True)
class SourceFile:
    """A file of a checkout, read into memory: its repo-relative path and bytes."""

    path: str
    data: bytes


@dataclass(frozen=True)
class DesiredService:
    """A RayService as Git declares it for one environment, with where it was written."""

    key: ServiceKey
    environment: str
    manifest: Mapping[str, Any]  # as written, with the environment's namespace filled in
    source: str  # repo-relative file
    line: int  # where its document starts
    wave: int = 0
    # A rendered service's fields an overlay's patch set: path (list items by index) → the
    # patch's (file, line). Where drift of such a field is fixed in Git.
    patched: Mapping[tuple[str | int, ...], tuple[str, int]] = field(
        default_factory=dict, compare=False, repr=False
    )


@dataclass(frozen=True)
class DesiredObject:
    """Another kind the repository config allows (``allowedKinds``), applied alongside the
    RayServices: server-side applied in its wave (before the wave's RayServices), stamped,
    pruned and drift-checked like them. Same shape as :class:`DesiredService`."""

    key: ServiceKey
    environment: str
    manifest: Mapping[str, Any]
    source: str
    line: int
    wave: int = 0

    @property
    def api_version(self) -> str:
        return self.key.api_version

    @property
    def kind(self) -> str:
        return self.key.kind

    @property
    def namespace(self) -> str:
        return self.key.namespace

    @property
    def name(self) -> str:
        return self.key.name


Desired = DesiredService | DesiredObject


@dataclass(frozen=True)
class FieldChange:
    """One changed field: its path in the RayService (``spec.serveConfigV2.applications[rank]
    .deployments[Ranker].num_replicas``), its old and new value (None: absent)."""

    path: str
    old: Any = None
    new: Any = None


@dataclass(frozen=True)
class Change:
    """What applying Git's version of one service will make KubeRay do, and why:
    ``details`` for people, ``fields`` for programs (``-o json``)."""

    key: ServiceKey
    action: Action
    wave: int
    summary: str
    details: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    fields: tuple[FieldChange, ...] = ()


class Phase(enum.StrEnum):
    """Where an environment's rollout stands (kept in its state ConfigMap)."""

    IN_PROGRESS = "in-progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SUPERSEDED = "superseded"
    ROLLED_BACK = "rolled-back"


@dataclass(frozen=True)
class RolloutState:
    """Everything needed to continue or report an environment's rollout after a restart."""

    environment: str
    revision: str
    phase: Phase
    wave: int | None = None
    started: str = ""
    finished: str = ""
    message: str = ""
    last_healthy_revision: str = ""
    namespace: str = ""  # where the environment's services are ("" in records before it)
    # The other kinds (allowedKinds) it applies or leaves running, as ``apiVersion/Kind``
    # (``v1/ConfigMap``), so ``gitsync status`` can list them from the cluster alone.
    kinds: tuple[str, ...] = ()


class Outcome(enum.StrEnum):
    """How one environment's rollout of one revision ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SUPERSEDED = "superseded"
    ROLLED_BACK = "rolled-back"
    BLOCKED = "blocked"  # a promotion gate: an earlier environment failed or never succeeded
    INTERRUPTED = "interrupted"  # the agent stopped (shutdown, lost the lease): resumable
    HELD = "held"  # suspended, or pinned to another revision: the head is not rolled out


@dataclass(frozen=True)
class RolloutResult:
    environment: str
    revision: str
    outcome: Outcome
    message: str
    failed: ServiceKey | None = None
    applied: tuple[ServiceKey, ...] = ()
    pruned: tuple[ServiceKey, ...] = ()
    skipped: tuple[ServiceKey, ...] = ()  # reconcile disabled on the live object


class StepKind(enum.StrEnum):
    """A step of a rollout before its outcome: it ``started``, then for each wave with work
    it is ``applying`` the wave's changes, then ``waiting`` for them to be Healthy."""

    STARTED = "started"
    APPLYING = "applying"
    WAITING = "waiting"


@dataclass(frozen=True)
class WaveEvent:
    """What a rollout is doing, for commit statuses and the status page: ``applying`` a
    wave's changes, then ``waiting`` for them to be Healthy. ``index`` counts the waves that
    have work (1-based). ``detail``: why a ``waiting`` wave is not done yet, when the API
    server says (the new cluster's pods are unschedulable or refused by a quota)."""

    kind: StepKind
    index: int
    total: int
    actions: tuple[tuple[ServiceKey, Action], ...]
    detail: str = ""


@dataclass(frozen=True)
class Hold:
    """An environment's holds: suspended (no applies, no self-heal) and/or pinned to a
    revision of the watched branch (rolled out and held there instead of the head). ``by``
    and ``at`` say who set each and when (UTC, ISO 8601); ``reason`` is free text."""

    suspended: bool = False
    suspended_by: str = ""
    suspended_at: str = ""
    suspend_reason: str = ""
    pinned: str = ""  # a full SHA, "" when not pinned
    pinned_by: str = ""
    pinned_at: str = ""
    pin_reason: str = ""
    # Change windows set aside until then (``gitsync open-window``; UTC, ISO 8601).
    window_open_until: str = ""
    window_opened_by: str = ""
    window_reason: str = ""

    @property
    def held(self) -> bool:
        return self.suspended or bool(self.pinned)

    def describe(self) -> str:
        """One line for people: ``suspended by alice (reason)``, ``pinned to abc123… by bob``."""
        parts = []
        if self.suspended:
            why = f" ({self.suspend_reason})" if self.suspend_reason else ""
            parts.append(f"suspended by {self.suspended_by or 'someone'}{why}")
        if self.pinned:
            why = f" ({self.pin_reason})" if self.pin_reason else ""
            parts.append(f"pinned to {self.pinned[:12]} by {self.pinned_by or 'someone'}{why}")
        return "; ".join(parts)
