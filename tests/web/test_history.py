"""The agent's rollout memory for the status page: records, steps, bounds."""

from __future__ import annotations

import itertools

from gitsync.model import Action, Change, ServiceKey
from gitsync.plan import Plan, Wave, orphaned
from gitsync.rollout import Outcome, RolloutResult, WaveEvent
from gitsync.web.facts import CommitInfo
from gitsync.web.history import MAX_STEPS, History
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
    h.event("staging", WaveEvent("applying", 1, 1, ((KEY, Action.SERVE_UPDATE),)))
    h.event("staging", WaveEvent("waiting", 1, 1, ((KEY, Action.SERVE_UPDATE),)))
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
    shown = [change_view(c, show_env_values=False) for c in memory.record.changes]
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
    assert (memory.record.outcome, memory.record.failed) == ("blocked", str(KEY))


def test_memory_is_bounded() -> None:
    h = history()
    for n in range(200):
        h.commit(CommitInfo(f"{n:040d}"))
    h.planned(plan(Action.SERVE_UPDATE), SHA)
    for _ in range(MAX_STEPS + 50):
        h.event("staging", WaveEvent("waiting", 1, 1, ()))
    [memory] = h.environments()
    assert memory.record is not None
    assert len(memory.record.steps) == MAX_STEPS
    assert len(h._commits) == 64
