"""``gitsync.ray.io/reconcile: disabled`` on a live RayService: the rule (Git wins when it
declares the key), the plan's skipped changes, the rollout leaving them alone without
holding up later waves, and the success status that says so. The cluster is the in-memory
fake of test_rollout_resume."""

from __future__ import annotations

from typing import Any, cast

import pytest

from gitsync.config import RolloutSettings
from gitsync.kube.state import StateStore
from gitsync.manifests.repoconfig import EnvironmentConfig
from gitsync.model import Action, Change, Outcome, Phase, RolloutState, ServiceKey
from gitsync.names import RECONCILE
from gitsync.plan import Plan, Wave, build_plan, plan_json, plan_table, skipped, unchanged_plan
from gitsync.progress import Lines
from gitsync.report.status import Describer, State
from gitsync.rollout import Rollout
from gitsync.stamp import reconcile_disabled

from .test_rollout_resume import EMBEDDER, NEW, NS, OLD, RANKER, Cluster, Store, desired


def annotated(value: str | None) -> dict[str, Any]:
    return {"metadata": {"annotations": {} if value is None else {RECONCILE: value}}}


@pytest.mark.parametrize(
    ("live", "git", "expected"),
    [
        (None, None, False),
        ("disabled", None, True),
        ("Disabled ", None, True),
        ("enabled", None, False),
        ("disabled", "enabled", False),  # Git declares the key: Git wins
        (None, "disabled", True),
        ("enabled", "disabled", True),
    ],
)
def test_the_live_annotation_decides_unless_git_declares_it(
    live: str | None, git: str | None, expected: bool
) -> None:
    manifest = annotated(git) if git is not None else {"metadata": {}}
    assert reconcile_disabled(annotated(live), manifest) is expected


def service(key: ServiceKey, import_path: str = "x:app") -> dict[str, Any]:
    serve = f"applications:\n- name: rank\n  import_path: {import_path}\n"
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": key.name, "namespace": key.namespace},
        "spec": {"serveConfigV2": serve},
    }


def test_a_disabled_service_is_planned_as_skipped_with_what_git_would_do() -> None:
    current = {RANKER: service(RANKER), EMBEDDER: service(EMBEDDER)}
    wanted = {RANKER: service(RANKER, "y:app"), EMBEDDER: service(EMBEDDER)}
    plan = build_plan("production", NS, current, wanted, prune=True, disabled=frozenset({RANKER}))
    by_key = {c.key: c for c in plan.changes}
    assert by_key[RANKER].action is Action.SKIPPED
    assert "reconcile disabled" in by_key[RANKER].summary
    assert "Git's version would be" in by_key[RANKER].summary
    assert by_key[EMBEDDER].action is Action.UNCHANGED
    assert plan.skipped == (RANKER,)
    assert not plan.has_changes  # nothing gitsync will do: `gitsync plan` exits 0
    assert "skipped" in plan_table(plan)
    assert plan_json(plan)["waves"][0]["changes"][1]["action"] == "skipped"


def test_a_disabled_service_git_no_longer_declares_is_not_pruned() -> None:
    plan = build_plan(
        "production", NS, {RANKER: service(RANKER)}, {}, prune=True, disabled=frozenset({RANKER})
    )
    [wave] = plan.waves
    assert wave.prune
    assert [c.action for c in wave.changes] == [Action.SKIPPED]


def test_the_metadata_shortcut_plan_marks_disabled_services_too() -> None:
    plan = unchanged_plan("production", NS, {RANKER: 1, EMBEDDER: 0}, disabled=frozenset({RANKER}))
    assert plan.skipped == (RANKER,)
    assert "no difference from Git" in plan.changes[1].summary


def test_success_says_how_many_services_were_skipped() -> None:
    status = Describer(NEW).healthy("production", 2, 1)
    assert status.state is State.SUCCESS
    assert status.description.endswith("2 service(s), every app RUNNING; 1 service skipped: "
                                       "reconcile disabled")  # fmt: skip
    assert "skipped" not in Describer(NEW).healthy("production", 3).description


def rollout(cluster: Cluster, state: Store, plan: Plan) -> Any:
    settings = RolloutSettings(
        healthy_reads=1, healthy_seconds=0.0, poll_interval=0.01, health_timeout=0.5
    )
    events: list[tuple[ServiceKey, str]] = []
    run = Rollout(
        cluster,
        cast(StateStore, state),
        settings,
        observer=Lines(
            lambda line: None, lambda key, kind, reason, text: events.append((key, reason))
        ),
    )
    env = EnvironmentConfig("production", "environments/production", NS)
    return run.run(env, plan, desired(), NEW), events


def two_waves(embedder: Action, ranker: Action) -> Plan:
    first = Change(EMBEDDER, embedder, 0, str(embedder))
    second = Change(RANKER, ranker, 1, str(ranker))
    return Plan("production", NS, None, NEW, (Wave(0, (first,)), Wave(1, (second,))))


@pytest.mark.parametrize("prior", [Phase.SUCCEEDED, Phase.FAILED])
def test_a_skipped_service_in_wave_0_is_neither_applied_nor_waited_for(prior: Phase) -> None:
    """Degraded in wave 0 (the incident), and after a failed rollout too, when every other
    service is gated: wave 1 rolls out all the same."""
    cluster = Cluster({EMBEDDER: "deploy-failed-under-ready-true", RANKER: "healthy"})
    state = Store(RolloutState("production", OLD, prior, None))
    plan = two_waves(Action.SKIPPED, Action.SERVE_UPDATE)
    result, events = rollout(cluster, state, plan)
    assert result.outcome is Outcome.SUCCEEDED, result.message
    assert [key for key, _ in cluster.applied] == [RANKER]
    assert result.skipped == (EMBEDDER,)
    assert "1 skipped (reconcile disabled)" in result.message
    assert (EMBEDDER, "ReconcileDisabled") in events


def test_a_service_disabled_while_an_earlier_wave_rolls_out_is_not_applied() -> None:
    cluster = Cluster({EMBEDDER: "healthy", RANKER: "healthy"})
    cluster.objects[RANKER]["metadata"].setdefault("annotations", {})[RECONCILE] = "disabled"
    plan = two_waves(Action.SERVE_UPDATE, Action.SERVE_UPDATE)  # planned before the annotation
    result, events = rollout(cluster, Store(None), plan)
    assert result.outcome is Outcome.SUCCEEDED, result.message
    assert [key for key, _ in cluster.applied] == [EMBEDDER]
    assert result.skipped == (RANKER,)
    assert events.count((RANKER, "ReconcileDisabled")) == 1


def test_an_up_to_date_pass_still_reports_the_skipped_services_without_a_new_event() -> None:
    cluster = Cluster({EMBEDDER: "healthy", RANKER: "healthy"})
    state = Store(RolloutState("production", NEW, Phase.SUCCEEDED, None))
    plan = two_waves(Action.UNCHANGED, Action.SKIPPED)
    result, events = rollout(cluster, state, plan)
    assert result.message == "up to date"
    assert result.skipped == (RANKER,)
    assert events == []


def test_skipped_keeps_the_change_details() -> None:
    change = Change(RANKER, Action.CLUSTER_SWAP, 1, "image changed", ("image: a → b",))
    assert skipped(change).details == change.details
    assert skipped(change).wave == 1
