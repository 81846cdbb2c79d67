"""The vocabulary every stage shares: identities, predicted actions, health.

Plain frozen values only; no I/O and no behaviour beyond formatting.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True, order=True, slots=True)
class ServiceKey:
    """The one identity of a RayService, used as the key in logs, errors and reports."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def parse(cls, text: str) -> ServiceKey:
        namespace, sep, name = text.partition("/")
        if not sep or not namespace or not name or "/" in name:
            raise ValueError(f"expected <namespace>/<name>, got {text!r}")
        return cls(namespace, name)


class Action(enum.StrEnum):
    """What applying a change will make KubeRay do (DESIGN §2)."""

    CREATE = "create"
    SERVE_UPDATE = "serve-update"
    SERVE_REFORMAT = "serve-reformat"
    CLUSTER_SWAP = "cluster-swap"
    CLUSTER_IN_PLACE = "cluster-in-place"
    CLUSTER_IGNORED = "cluster-ignored"
    SCALE_INEFFECTIVE = "scale-ineffective"
    METADATA = "metadata"
    PRUNE = "prune"
    UNCHANGED = "unchanged"


class Health(enum.StrEnum):
    """gitsync's health of one RayService, stricter than Ready=True (DESIGN §3)."""

    HEALTHY = "Healthy"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"
    MISSING = "Missing"
    SUSPENDED = "Suspended"
    UNKNOWN = "Unknown"
