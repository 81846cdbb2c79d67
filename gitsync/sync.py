"""One full pass, ``gitsync sync --once``: source → plan → rollout for every environment in
``after:`` order, and ``gitsync status``. Wires the edges; decides nothing itself.

A newer commit on the branch while a rollout waits on health supersedes it: the pass starts
over at the new head, so a fix is never stuck behind a broken commit. An environment that
fails stops the environments after it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from gitsync.checkout import read_tree
from gitsync.config import AgentConfig
from gitsync.health import assess
from gitsync.kube.rayservices import RayServices
from gitsync.kube.state import StateStore
from gitsync.model import DesiredService, RolloutState, ServiceKey
from gitsync.plan import plan_table
from gitsync.planning import environment_manifests, live_environment_plan, ordered_environments
from gitsync.rollout import Outcome, Rollout, RolloutResult, expected_apps
from gitsync.source.git import GitSource

SUPERSEDE_CHECK_SECONDS = 5.0  # at most one ls-remote this often while waiting on health


@dataclass(frozen=True)
class PassResult:
    revision: str
    results: tuple[RolloutResult, ...]

    @property
    def ok(self) -> bool:
        return all(r.outcome is Outcome.SUCCEEDED for r in self.results)


def _desired_at(tree: Path, environment: str, label: str) -> Mapping[ServiceKey, DesiredService]:
    return {s.key: s for s in environment_manifests(read_tree(tree), environment, label).services}


def _superseded_check(
    source: GitSource, revision: str, every: float = SUPERSEDE_CHECK_SECONDS
) -> Callable[[], bool]:
    last = [time.monotonic()]

    def check() -> bool:
        if time.monotonic() - last[0] < every:
            return False
        last[0] = time.monotonic()
        return source.head() != revision

    return check


def sync_once(
    config: AgentConfig,
    services: RayServices,
    state: StateStore,
    *,
    environments: Sequence[str] | None = None,
    dry_run: bool = False,
    progress: Callable[[str], None] = lambda line: None,
    supersede_every: float = SUPERSEDE_CHECK_SECONDS,
) -> PassResult:
    source = GitSource(config.repository)
    while True:
        revision = source.head()
        tree = source.checkout(revision)
        report = read_tree(tree)
        names = ordered_environments(report, environments, revision[:12])
        progress(f"revision {revision[:12]}: environments {', '.join(names)}")
        results: list[RolloutResult] = []
        restart = False
        for name in names:
            loaded = environment_manifests(report, name, revision[:12])
            plan = live_environment_plan(loaded, services, config.classify, revision)
            if dry_run:
                progress(plan_table(plan).rstrip())
                continue
            env, desired = loaded.environment, {s.key: s for s in loaded.services}

            def previous(old: str, name: str = name) -> Mapping[ServiceKey, DesiredService]:
                return _desired_at(source.checkout(old), name, old[:12])

            rollout = Rollout(
                services,
                state,
                config.rollout,
                progress,
                _superseded_check(source, revision, supersede_every),
            )
            result = rollout.run(env, plan, desired, revision, previous)
            results.append(result)
            if result.outcome is Outcome.SUPERSEDED:
                restart = True
                break
            if result.outcome is not Outcome.SUCCEEDED:
                remaining = names[names.index(name) + 1 :]
                if remaining:
                    progress(f"not rolling out {', '.join(remaining)}: {name} did not succeed")
                break
        if not restart:
            return PassResult(revision, tuple(results))
        progress("starting over at the new head")


@dataclass(frozen=True)
class ServiceStatus:
    key: ServiceKey
    revision: str
    health: str
    message: str


def environment_status(
    config: AgentConfig, services: RayServices, state: StateStore, tree: Path, revision: str
) -> list[tuple[str, RolloutState | None, list[ServiceStatus]]]:
    """Per environment: its recorded rollout state and each managed service's health."""
    report = read_tree(tree)
    rows = []
    for name in ordered_environments(report, None, revision[:12]):
        loaded = environment_manifests(report, name, revision[:12])
        env = loaded.environment
        live = services.list_managed(env.namespace, env.name)
        wanted = {s.key: s for s in loaded.services}
        statuses = []
        for key in sorted({*live, *wanted}):
            obj = live.get(key)
            result = assess(obj, expected_apps(wanted[key]) if key in wanted else ())
            annotations = ((obj or {}).get("metadata") or {}).get("annotations") or {}
            statuses.append(
                ServiceStatus(
                    key,
                    str(annotations.get("gitsync.ray.io/revision", "")),
                    str(result.health),
                    result.message,
                )
            )
        rows.append((name, state.read(name), statuses))
    return rows
