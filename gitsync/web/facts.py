"""What the agent knows that the status page shows: plain frozen values. Pure.

The agent fills these (:mod:`gitsync.web.history`, the live RayServices it reads anyway);
:mod:`gitsync.web.view` turns them into the page's view model. Times are passed in, never
read here: ``wall`` is epoch seconds (shown), ``mono`` is monotonic seconds (durations).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gitsync.model import Action, Change, Hold, Outcome, RolloutState, ServiceKey, StepKind


@dataclass(frozen=True)
class Clock:
    wall: float
    mono: float


@dataclass(frozen=True)
class CommitInfo:
    sha: str
    author: str = ""
    timestamp: float | None = None  # committer time, epoch seconds
    message: str = ""  # the subject line


@dataclass(frozen=True)
class Step:
    """One entry of a rollout's timeline: ``started``, ``applying``/``waiting`` a wave
    (``index`` of ``total`` waves with work), or the outcome (``succeeded``, ``failed`` …)."""

    kind: StepKind | Outcome
    wall: float
    mono: float
    index: int = 0
    total: int = 0
    services: tuple[tuple[ServiceKey, Action], ...] = ()
    message: str = ""


@dataclass(frozen=True)
class RolloutRecord:
    """One rollout of one environment as the agent saw it; ``outcome`` is None in flight."""

    environment: str
    namespace: str
    revision: str
    commit: CommitInfo | None = None
    changes: tuple[Change, ...] = ()
    steps: tuple[Step, ...] = ()
    outcome: Outcome | None = None
    message: str = ""
    failed: ServiceKey | None = None  # the service that failed it


@dataclass(frozen=True)
class PastRollout:
    """One finished rollout, as the environment's history lists it."""

    revision: str
    outcome: Outcome | None
    started: float  # wall, epoch seconds
    finished: float
    message: str = ""
    failed: ServiceKey | None = None
    commit: CommitInfo | None = None
    changes: int = 0  # how many services it changed


@dataclass(frozen=True)
class DriftFacts:
    wall: float  # when the check ran
    drifted: tuple[tuple[ServiceKey, str], ...] = ()  # (service, message)
    fighting: tuple[ServiceKey, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class PreviewFacts:
    number: int
    revision: str
    services: tuple[str, ...]
    outcome: str
    message: str


@dataclass(frozen=True)
class Forge:
    """Where commits and pull requests are shown: a Gitea/Forgejo, GitHub or GitLab web root
    and the repository path on it."""

    kind: str  # gitea | github | gitlab
    root: str
    repository: str

    def commit_url(self, sha: str) -> str:
        middle = "/-/commit/" if self.kind == "gitlab" else "/commit/"
        return f"{self.root}/{self.repository}{middle}{sha}"

    def pull_url(self, number: int) -> str:
        middle = {"gitlab": "/-/merge_requests/", "github": "/pull/"}.get(self.kind, "/pulls/")
        return f"{self.root}/{self.repository}{middle}{number}"


@dataclass(frozen=True)
class EnvironmentFacts:
    name: str
    namespace: str
    record: RolloutRecord | None = None  # the rollout in flight, else the last one
    applied: CommitInfo | None = None  # the last revision that rolled out Healthy
    state: RolloutState | None = None  # the state ConfigMap (survives restarts)
    live: Mapping[ServiceKey, Mapping[str, Any]] = field(default_factory=dict)
    last_actions: Mapping[ServiceKey, tuple[Action, float]] = field(default_factory=dict)
    drift: DriftFacts | None = None
    history: tuple[PastRollout, ...] = ()  # earlier rollouts, newest first
    # Kubernetes Events about its RayServices, as the API returns them (slimmed).
    events: tuple[Mapping[str, Any], ...] = ()
    hold: Hold = field(default_factory=Hold)  # suspended, pinned (gitsync suspend, pin)
