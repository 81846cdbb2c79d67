"""The agent's rollout memory for the status page: records, steps, bounds."""

from __future__ import annotations

import itertools
from dataclasses import replace
from fractions import Fraction

from gitsync.capacity import Fit, Shortfall, Verdict
from gitsync.model import Action, Change, Outcome, RolloutResult, ServiceKey, StepKind, WaveEvent
from gitsync.plan import Plan, Wave, orphaned
from gitsync.web.facts import CommitInfo
from gitsync.web.history import MAX_STEPS, History
from gitsync.web.stored import (
    MAX_DETAIL_BYTES,
    MAX_HISTORY,
    EnvironmentMemory,
    from_data,
    to_data,
)
from gitsync.web.view import change_view

KEY = ServiceKey("ray-staging", "ranker")
SHA, NEXT = "a" * 40, "b" * 40


def plan(action: Action) -> Plan:
    return Plan("staging", "ray-staging", None, SHA, (Wave(1, (Change(KEY, action, 1, "x"),)),))


def history() -> History:
    ticks = itertools.count()
    return History(wall=lambda: 1_000.0 + next(ticks), mono=lambda: float(next(ticks)))


def test_a_rollout_is_recorded_step_by_step() -> None:
    h = history()
    h.commit(CommitInfo(SHA, "Ana", 1.0, "bump"))
    h.planned(plan(Action.SERVE_UPDATE), SHA)
    h.event("staging", WaveEvent(StepKind.APPLYING, 1, 1, ((KEY, Action.SERVE_UPDATE),)))
    h.event("staging", WaveEvent(StepKind.WAITING, 1, 1, ((KEY, Action.SERVE_UPDATE),)))
    [memory] = h.environments()
    assert memory.record is not None
    assert memory.record.outcome is None
    assert [s.kind for s in memory.record.steps] == ["started", "applying", "waiting"]
    assert memory.actions[KEY][0] == "serve-update"
    h.finished(RolloutResult("staging", SHA, Outcome.SUCCEEDED, "ok"))
    [memory] = h.environments()
    assert memory.record is not None
    assert memory.record.outcome == "succeeded"
    assert memory.record.commit == CommitInfo(SHA, "Ana", 1.0, "bump")
    assert memory.applied == CommitInfo(SHA, "Ana", 1.0, "bump")


def test_a_pass_that_changes_nothing_keeps_the_last_rollout() -> None:
    h = history()
    h.planned(plan(Action.SERVE_UPDATE), SHA)
    h.finished(RolloutResult("staging", SHA, Outcome.SUCCEEDED, "ok"))
    h.planned(plan(Action.UNCHANGED), NEXT)
    h.finished(RolloutResult("staging", NEXT, Outcome.SUCCEEDED, "up to date"))
    [memory] = h.environments()
    assert memory.record is not None
    assert memory.record.revision == SHA
    assert [c.action for c in memory.record.changes] == [Action.SERVE_UPDATE]
    assert memory.applied is not None
    assert memory.applied.sha == NEXT


def test_an_orphan_is_shown_with_the_rollout_and_alone_is_no_rollout() -> None:
    """Under prune: false the page says the service is left running, never deleted."""
    orphan = orphaned(Change(ServiceKey("ray-staging", "summarizer"), Action.PRUNE, 1, "x"))
    h = history()
    h.planned(Plan("staging", "ray-staging", None, SHA, (
        Wave(1, (Change(KEY, Action.SERVE_UPDATE, 1, "x"),)), Wave(2, (orphan,), prune=True),
    )), SHA)  # fmt: skip
    h.finished(RolloutResult("staging", SHA, Outcome.SUCCEEDED, "ok"))
    [memory] = h.environments()
    assert memory.record is not None
    shown = [change_view(c) for c in memory.record.changes]
    assert [(c.action, c.summary.split(";")[0]) for c in shown] == [
        ("serve-update", "x"),
        ("orphan", "no longer in Git"),
    ]
    h.planned(Plan("staging", "ray-staging", None, NEXT, (Wave(2, (orphan,), prune=True),)), NEXT)
    h.finished(RolloutResult("staging", NEXT, Outcome.SUCCEEDED, "up to date"))
    [memory] = h.environments()
    assert memory.record is not None
    assert memory.record.revision == SHA  # the last rollout that did something


def test_a_failure_it_did_not_see_start_is_recorded() -> None:
    h = history()
    h.environment("staging", "ray-staging")
    h.finished(RolloutResult("staging", SHA, Outcome.BLOCKED, "staging did not succeed", KEY))
    [memory] = h.environments()
    assert memory.record is not None
    assert (memory.record.outcome, memory.record.failed) == (Outcome.BLOCKED, KEY)


def test_memory_is_bounded() -> None:
    h = history()
    for n in range(200):
        h.commit(CommitInfo(f"{n:040d}"))
    h.planned(plan(Action.SERVE_UPDATE), SHA)
    for _ in range(MAX_STEPS + 50):
        h.event("staging", WaveEvent(StepKind.WAITING, 1, 1, ()))
    [memory] = h.environments()
    assert memory.record is not None
    assert len(memory.record.steps) == MAX_STEPS
    assert len(h._commits) == 64


class Cluster:
    """The sink and seed the agent gives History, over a dict instead of ConfigMaps."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, str]] = {}
        self.writes = 0

    def sink(self, environment: str, data: dict[str, str]) -> bool:
        self.writes += 1
        self.data[environment] = {**self.data.get(environment, {}), **data}
        return True

    def seed(self, environment: str) -> EnvironmentMemory | None:
        found = self.data.get(environment)
        return from_data(environment, found) if found is not None else None


def test_what_is_kept_in_the_cluster_reads_back_the_same() -> None:
    cluster = Cluster()
    h = History(wall=lambda: 1_000.0, sink=cluster.sink, seed=cluster.seed)
    h.commit(CommitInfo(SHA, "Ana", 1.0, "bump"))
    h.planned(plan(Action.SERVE_UPDATE), SHA)
    h.event("staging", WaveEvent(StepKind.APPLYING, 1, 1, ((KEY, Action.SERVE_UPDATE),)))
    h.finished(RolloutResult("staging", SHA, Outcome.SUCCEEDED, "ok"))
    [memory] = h.environments()
    stored = from_data("staging", cluster.data["staging"])
    assert stored is not None
    assert stored.record is not None
    assert memory.record is not None
    assert stored.record.changes == memory.record.changes
    assert [(s.kind, s.wall) for s in stored.record.steps] == [
        (s.kind, s.wall) for s in memory.record.steps
    ]
    assert (stored.record.outcome, stored.applied) == ("succeeded", memory.applied)
    assert stored.actions == memory.actions
    assert [(p.revision, p.outcome, p.commit) for p in stored.history] == [
        (SHA, "succeeded", CommitInfo(SHA, "Ana", 1.0, "bump"))
    ]


def test_a_pass_that_changes_nothing_writes_nothing() -> None:
    cluster = Cluster()
    h = History(sink=cluster.sink, seed=cluster.seed)
    h.environment("staging", "ray-staging")
    h.planned(plan(Action.SERVE_UPDATE), SHA)
    h.finished(RolloutResult("staging", SHA, Outcome.SUCCEEDED, "ok"))
    before = cluster.writes
    for _ in range(3):
        h.environment("staging", "ray-staging")  # every poll
        h.planned(plan(Action.UNCHANGED), SHA)
        h.finished(RolloutResult("staging", SHA, Outcome.SUCCEEDED, "up to date"))
    assert cluster.writes == before


def test_a_new_leader_continues_the_history_and_it_is_bounded() -> None:
    cluster = Cluster()
    first = History(sink=cluster.sink, seed=cluster.seed)
    first.planned(plan(Action.SERVE_UPDATE), SHA)
    first.finished(RolloutResult("staging", SHA, Outcome.SUCCEEDED, "ok"))
    following = History(sink=cluster.sink, seed=cluster.seed)  # after a restart
    for n in range(MAX_HISTORY + 5):
        revision = f"{n:040d}"
        following.planned(replace(plan(Action.SERVE_UPDATE), to_rev=revision), revision)
        following.finished(RolloutResult("staging", revision, Outcome.FAILED, f"no {n}", KEY))
    stored = from_data("staging", cluster.data["staging"])
    assert stored is not None
    assert len(stored.history) == MAX_HISTORY
    assert stored.history[0].revision == f"{MAX_HISTORY + 4:040d}"  # newest first
    assert stored.history[0].failed == KEY
    following.planned(plan(Action.SERVE_UPDATE), SHA)
    following.finished(RolloutResult("staging", SHA, Outcome.SUCCEEDED, "ok"))
    seeded = History(sink=cluster.sink, seed=cluster.seed)
    seeded.planned(plan(Action.UNCHANGED), NEXT)  # kept: the last rollout did something
    [memory] = seeded.environments()
    assert memory.record is not None
    assert memory.record.revision == SHA


def test_the_stored_diff_is_capped() -> None:
    lines = tuple(
        f"apps[a].deployments[d].num_replicas: {n} → {n + 1} " + "x" * 1000 for n in range(400)
    )
    big = Plan(
        "staging",
        "ray-staging",
        None,
        SHA,
        (Wave(1, (Change(KEY, Action.SERVE_UPDATE, 1, "x", lines),)),),
    )
    cluster = Cluster()
    h = History(sink=cluster.sink, seed=cluster.seed)
    h.planned(big, SHA)
    assert len(cluster.data["staging"]["rollout"].encode()) < MAX_DETAIL_BYTES + 64 * 1024
    stored = from_data("staging", cluster.data["staging"])
    assert stored is not None
    assert stored.record is not None
    [change] = stored.record.changes
    assert change.details[-1].endswith("more line(s) not kept (the stored diff is capped)")


def test_unreadable_values_are_left_out() -> None:
    data = {
        "namespace": "ray-staging",
        "rollout": "{not json",
        "history": "[1, {}]",
        "actions": "[]",
    }
    memory = from_data("staging", data)
    assert memory is not None
    assert (memory.record, memory.history, memory.actions) == (None, (), {})
    assert from_data("preview-7", {"phase": "succeeded"}) is None


def test_keys_outcomes_and_steps_read_back_as_written() -> None:
    """Stored as strings, read back as ServiceKey, Action, Outcome and StepKind: another
    kind's key keeps its kind and name; a step, outcome or action no gitsync wrote is left out."""
    config = ServiceKey("ray-staging", "settings", "ConfigMap", "v1")
    cluster = Cluster()
    h = History(wall=lambda: 1_000.0, sink=cluster.sink, seed=cluster.seed)
    h.planned(plan(Action.SERVE_UPDATE), SHA)
    h.event("staging", WaveEvent(StepKind.APPLYING, 1, 1, ((config, Action.CONFIGURED),)))
    h.finished(RolloutResult("staging", SHA, Outcome.FAILED, "no", config))
    data = dict(cluster.data["staging"])
    stored = from_data("staging", data)
    assert stored is not None
    assert stored.record is not None
    assert [s.kind for s in stored.record.steps] == [
        StepKind.STARTED,
        StepKind.APPLYING,
        Outcome.FAILED,
    ]
    [(key, action)] = stored.record.steps[1].services
    assert (str(key), key.kind, key.name, action) == (str(config), "ConfigMap", "settings",
                                                      Action.CONFIGURED)  # fmt: skip
    assert stored.record.failed is not None
    assert (stored.record.outcome, str(stored.record.failed)) == (Outcome.FAILED, str(config))
    data["rollout"] = data["rollout"].replace('"applying"', '"dancing"')
    data["history"] = data["history"].replace('"failed"', '"exploded"')
    data["actions"] = data["actions"].replace('"configured"', '"painted"')
    odd = from_data("staging", data)
    assert odd is not None
    assert odd.record is not None
    assert [s.kind for s in odd.record.steps] == [StepKind.STARTED, Outcome.FAILED]
    assert [p.outcome for p in odd.history] == [None]
    assert odd.actions == {}


def test_the_rollout_keeps_each_changes_capacity_verdict_and_why_a_wave_waits() -> None:
    gpu = "nvidia.com/gpu"
    short = Shortfall("quota compute", f"requests.{gpu}", Fraction(1), Fraction(0))
    other = ServiceKey("ray-staging", "summarizer")
    swaps = Plan(
        "staging",
        "ray-staging",
        None,
        SHA,
        (
            Wave(
                1,
                (
                    Change(KEY, Action.CLUSTER_SWAP, 1, "new image"),
                    Change(other, Action.CLUSTER_SWAP, 1, "new image"),
                ),
            ),
        ),
        capacity={
            KEY: Verdict(Fit.FITS, {"cpu": Fraction(3)}, 2),
            other: Verdict(Fit.DOES_NOT_FIT, {gpu: Fraction(1)}, 2, (short,)),
        },
    )
    h = history()
    h.planned(swaps, SHA)
    why = "summarizer: 1 pod unschedulable: 0/2 nodes are available: 2 Insufficient nvidia.com/gpu"
    h.event("staging", WaveEvent(StepKind.WAITING, 1, 1, ((other, Action.CLUSTER_SWAP),), why))
    [memory] = h.environments()
    assert memory.record is not None
    ranker, summarizer = (change_view(c) for c in memory.record.changes)
    assert ranker.details == ("capacity: fits (2 pods: cpu 3)",)
    assert summarizer.warnings == (
        "capacity: does not fit: quota compute: requests.nvidia.com/gpu needs 1, 0 available, "
        "1 missing",
    )
    assert memory.record.steps[-1].message == why
    # Stored and read back as the page reads it after a restart.
    again = from_data("staging", to_data(memory))
    assert again is not None
    assert again.record is not None
    assert again.record.changes == memory.record.changes
    assert again.record.steps[-1].message == why
