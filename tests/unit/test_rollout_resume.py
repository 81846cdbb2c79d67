"""A rollout run again after one that did not succeed — an agent SIGKILLed mid-way and
restarted, maybe with a newer commit waiting — gates every service, the "unchanged" ones too:
their spec is already Git's, but nothing says they are Healthy. Found by
tests/reliability/test_crash_safety.py: a restarted agent called a failed commit succeeded
(and promoted it), and applied a later wave while an earlier one was still starting.

The cluster and the state ConfigMap are in-memory fakes; the health of each object is one of
the YAML fixtures of tests/unit/health/."""

from __future__ import annotations

import copy
import threading
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from gitsync.config import RolloutSettings
from gitsync.kube.rayservices import RayServices
from gitsync.kube.state import StateStore
from gitsync.manifests.repoconfig import EnvironmentConfig
from gitsync.model import Action, Change, DesiredService, Outcome, Phase, RolloutState, ServiceKey
from gitsync.plan import Plan, Wave
from gitsync.progress import left_behind, lost_final_status
from gitsync.report.provider import Provider
from gitsync.report.reporter import Reporter
from gitsync.report.status import CommitStatus, State
from gitsync.rollout import Rollout

HEALTH = Path(__file__).parent / "health"
NS = "ray-prod"
EMBEDDER, RANKER = ServiceKey(NS, "embedder"), ServiceKey(NS, "ranker")
WAVES = {EMBEDDER: 0, RANKER: 1}
NEW, OLD = "b" * 40, "a" * 40


def fixture(name: str, key: ServiceKey) -> dict[str, Any]:
    obj: dict[str, Any] = yaml.safe_load((HEALTH / f"{name}.yaml").read_text())["object"]
    obj["metadata"]["name"] = key.name
    return obj


class Cluster(RayServices):
    """What a rollout reads and writes, in memory; each object shows a fixed health."""

    api = None

    def __init__(self, health: dict[ServiceKey, str]) -> None:
        self.objects = {key: fixture(name, key) for key, name in health.items()}
        self.applied: list[tuple[ServiceKey, set[ServiceKey]]] = []  # (key, Healthy then)
        self.health = health

    def apply(self, obj: dict[str, Any], *, dry_run: bool = False, force: bool = False) -> Any:
        key = ServiceKey(obj["metadata"]["namespace"], obj["metadata"]["name"])
        self.applied.append((key, {k for k, h in self.health.items() if h == "healthy"}))
        return copy.deepcopy(self.objects[key])

    def list_managed(
        self, namespace: str, environment: str, *, names: Collection[str] | None = None
    ) -> dict[ServiceKey, Any]:
        return {
            k: copy.deepcopy(o)
            for k, o in self.objects.items()
            if k.namespace == namespace and (names is None or k.name in names)
        }

    def list_managed_metadata(self, namespace: str, environment: str) -> dict[ServiceKey, Any]:
        return self.list_managed(namespace, environment)

    def list_managed_versioned(
        self, namespace: str, environment: str
    ) -> tuple[dict[ServiceKey, Any], str]:
        return self.list_managed(namespace, environment), "1"

    def watch_managed(
        self, namespace: str, environment: str, version: str, seconds: float
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        threading.Event().wait(min(seconds, 0.01))
        return iter(())

    def get(self, key: ServiceKey) -> Any:
        return copy.deepcopy(self.objects.get(key))


class Store:
    def __init__(self, prior: RolloutState | None) -> None:
        self.states = {} if prior is None else {prior.environment: prior}
        self.written: list[RolloutState] = []

    def read(self, environment: str) -> RolloutState | None:
        return self.states.get(environment)

    def write(self, state: RolloutState) -> None:
        self.states[state.environment] = state
        self.written.append(state)


def desired() -> dict[ServiceKey, DesiredService]:
    manifest = {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "spec": {"serveConfigV2": "applications:\n- name: rank\n  import_path: x:app\n"},
    }
    return {
        key: DesiredService(
            key,
            "production",
            {**manifest, "metadata": {"name": key.name, "namespace": NS}},
            f"{key.name}.yaml",
            1,
            WAVES[key],
        )
        for key in WAVES
    }


def plan(changed: set[ServiceKey]) -> Plan:
    def change(key: ServiceKey) -> Change:
        action = Action.SERVE_UPDATE if key in changed else Action.UNCHANGED
        return Change(key, action, WAVES[key], str(action))

    return Plan(
        "production", NS, None, NEW, (Wave(0, (change(EMBEDDER),)), Wave(1, (change(RANKER),)))
    )


def run(cluster: Cluster, state: Store, changed: set[ServiceKey]) -> Outcome:
    settings = RolloutSettings(
        healthy_reads=1, healthy_seconds=0.0, poll_interval=0.01, health_timeout=0.5
    )
    rollout = Rollout(cluster, cast(StateStore, state), settings)
    env = EnvironmentConfig("production", "environments/production", NS)
    return rollout.run(env, plan(changed), desired(), NEW).outcome


def test_a_failed_revision_run_again_is_still_failed() -> None:
    """Killed after the rollout failed (or merely restarted): the restarted agent's pass
    found nothing to change and reported success, and production was promoted."""
    cluster = Cluster({EMBEDDER: "healthy", RANKER: "deploy-failed-under-ready-true"})
    state = Store(RolloutState("production", NEW, Phase.FAILED, 1, last_healthy_revision=OLD))
    assert run(cluster, state, changed=set()) is Outcome.FAILED
    assert state.written[-1].phase is Phase.FAILED
    assert not cluster.applied


@pytest.mark.parametrize(
    "prior",
    [
        # killed while wave 0 started, a newer commit pushed meanwhile
        RolloutState("production", OLD, Phase.IN_PROGRESS, 0),
        # killed between the rollout's first state write and its wave's (wave not yet known)
        RolloutState("production", NEW, Phase.IN_PROGRESS, None),
        # superseded while wave 0 started
        RolloutState("production", OLD, Phase.SUPERSEDED, 0),
    ],
    ids=["in-progress-older", "in-progress-no-wave", "superseded"],
)
def test_the_next_wave_waits_for_an_unchanged_wave_left_starting(prior: RolloutState) -> None:
    cluster = Cluster({EMBEDDER: "app-deploying", RANKER: "healthy"})
    state = Store(prior)
    assert run(cluster, state, changed={RANKER}) is Outcome.FAILED  # wave 0 never Healthy
    assert not cluster.applied, "the ranker (wave 1) was applied before the embedder was Healthy"


def test_after_a_success_only_changes_are_gated() -> None:
    cluster = Cluster({EMBEDDER: "app-deploying", RANKER: "healthy"})
    state = Store(RolloutState("production", OLD, Phase.SUCCEEDED, None))
    assert run(cluster, state, changed={RANKER}) is Outcome.SUCCEEDED
    assert [key for key, _ in cluster.applied] == [RANKER]


@pytest.mark.parametrize(
    ("prior", "expected"),
    [
        (None, None),
        (RolloutState("staging", OLD, Phase.IN_PROGRESS, 1), OLD),
        (RolloutState("staging", OLD, Phase.SUPERSEDED, 1), OLD),
        (RolloutState("staging", NEW, Phase.IN_PROGRESS, 1), None),  # resumed, not superseded
        (RolloutState("staging", OLD, Phase.SUCCEEDED), None),
        (RolloutState("staging", OLD, Phase.FAILED), None),
    ],
)
def test_a_revision_left_unfinished_is_told_superseded(
    prior: RolloutState | None, expected: str | None
) -> None:
    """Its commit status said pending for good when the agent died mid-rollout and a newer
    commit arrived before it came back."""
    assert left_behind(prior, NEW) == expected


@pytest.mark.parametrize(
    ("prior", "seen", "expected"),
    [
        # killed after the state said succeeded, before the status went out; a newer commit
        (RolloutState("staging", OLD, Phase.SUCCEEDED, message="3 applied"), "pending", "success"),
        (RolloutState("staging", OLD, Phase.SUCCEEDED, message="3 applied"), None, "success"),
        (
            RolloutState("staging", OLD, Phase.FAILED, message="ranker Degraded"),
            "pending",
            "failure",
        ),
        (RolloutState("staging", OLD, Phase.ROLLED_BACK), "pending", "failure"),
        (RolloutState("staging", OLD, Phase.SUCCEEDED), "success", None),  # it went out
        (RolloutState("staging", OLD, Phase.FAILED), "failure", None),
        (RolloutState("staging", NEW, Phase.SUCCEEDED), "pending", None),  # this pass posts it
        (RolloutState("staging", OLD, Phase.IN_PROGRESS), "pending", None),  # superseded instead
        (None, None, None),
    ],
)
def test_a_final_status_lost_with_the_agent_is_posted_again(
    prior: RolloutState | None, seen: str | None, expected: str | None
) -> None:
    shown = None if seen is None else CommitStatus("gitsync/staging", State(seen), "")
    lost = lost_final_status(prior, NEW, shown)
    assert (None if lost is None else str(lost[0])) == expected
    if lost is not None and prior is not None and prior.message:
        assert lost[1] == prior.message


def test_the_reporter_remembers_what_it_was_asked_to_post() -> None:
    class Forge:
        name = "fake"

        def post(self, revision: str, status: CommitStatus) -> None:
            pass

        def statuses(self, revision: str) -> dict[str, CommitStatus]:
            return {}

    reporter = Reporter(cast(Provider, Forge()))
    try:
        assert reporter.asked(OLD, "gitsync/staging") is None
        reporter.post(OLD, CommitStatus("gitsync/staging", State.PENDING, "applying"))
        reporter.post(OLD, CommitStatus("gitsync/staging", State.SUCCESS, "Healthy"))
        asked = reporter.asked(OLD, "gitsync/staging")
        assert asked is not None
        assert asked.state is State.SUCCESS
    finally:
        reporter.close(timeout=5)
