"""Where a rollout starts, which waves have work, the order of the prunes (gitsync.progress)."""

from __future__ import annotations

import pytest

from gitsync.model import Action, Change, DesiredService, Phase, RolloutState, ServiceKey
from gitsync.plan import Plan, Wave
from gitsync.progress import kinds, prunes, start, succeeded_message, work

OLD, NEW = "a" * 40, "b" * 40
NOW = "2026-12-04T08:00:00Z"
EMBEDDER = ServiceKey("ray-staging", "embedder")
RANKER = ServiceKey("ray-staging", "ranker")
CONFIG = ServiceKey("ray-staging", "settings", "ConfigMap", "v1")
DISABLED = ServiceKey("ray-staging", "frozen")


def plan(*waves: Wave) -> Plan:
    return Plan("staging", "ray-staging", None, NEW, waves)


def change(key: ServiceKey, action: Action, wave: int = 0) -> Change:
    return Change(key, action, wave, str(action))


UNCHANGED = plan(Wave(0, (change(EMBEDDER, Action.UNCHANGED),)))
CHANGED = plan(Wave(0, (change(EMBEDDER, Action.SERVE_UPDATE),)))


def state(phase: Phase, revision: str = NEW, wave: int | None = None) -> RolloutState:
    return RolloutState(
        "staging", revision, phase, wave, "2026-12-04T07:00:00Z", last_healthy_revision=OLD
    )


def test_a_succeeded_revision_without_changes_is_up_to_date() -> None:
    begin = start(state(Phase.SUCCEEDED), NEW, UNCHANGED)
    assert begin.up_to_date
    assert not start(state(Phase.SUCCEEDED), NEW, CHANGED).up_to_date  # someone edited it
    assert not start(state(Phase.SUCCEEDED, OLD), NEW, UNCHANGED).up_to_date
    assert not start(state(Phase.FAILED), NEW, UNCHANGED).up_to_date
    assert not start(None, NEW, UNCHANGED).up_to_date


def test_the_same_revision_in_progress_resumes_at_its_wave_and_start() -> None:
    prior = state(Phase.IN_PROGRESS, wave=2)
    begin = start(prior, NEW, CHANGED)
    assert begin.resumed == prior
    assert begin.unfinished
    record = begin.record("staging", "ray-staging", NEW, NOW, ("v1/ConfigMap",))
    assert (record.phase, record.wave, record.started) == (Phase.IN_PROGRESS, 2, prior.started)
    assert (record.last_healthy_revision, record.kinds) == (OLD, ("v1/ConfigMap",))


@pytest.mark.parametrize(
    ("prior", "resumed", "unfinished", "last_healthy"),
    [
        (None, False, False, ""),
        (state(Phase.SUCCEEDED, OLD), False, False, OLD),
        (state(Phase.IN_PROGRESS, OLD, 1), False, True, OLD),  # another revision: fresh start
        (state(Phase.FAILED), False, True, OLD),
        (state(Phase.SUPERSEDED), False, True, OLD),
        (state(Phase.ROLLED_BACK), False, True, OLD),
    ],
)
def test_a_fresh_start(
    prior: RolloutState | None, resumed: bool, unfinished: bool, last_healthy: str
) -> None:
    begin = start(prior, NEW, CHANGED)
    assert (begin.resumed is not None, begin.unfinished) == (resumed, unfinished)
    record = begin.record("staging", "ray-staging", NEW, NOW, ())
    assert (record.wave, record.started, record.last_healthy_revision) == (None, NOW, last_healthy)


def test_waves_with_work_apply_what_changed_and_gate_it() -> None:
    changed = plan(
        Wave(0, (change(EMBEDDER, Action.UNCHANGED), change(CONFIG, Action.CONFIGURED))),
        Wave(1, (change(RANKER, Action.UNCHANGED), change(DISABLED, Action.SKIPPED, 1))),
        Wave(2, (change(RANKER, Action.CLUSTER_SWAP, 2), change(DISABLED, Action.SKIPPED, 2))),
        Wave(3, (change(EMBEDDER, Action.PRUNE, 3),), prune=True),
    )
    found = work(changed, unfinished=False)
    assert [(w.wave.number, w.changed, w.gate) for w in found] == [
        (0, (CONFIG,), (CONFIG,)),
        (2, (RANKER,), (RANKER,)),
    ]


def test_after_an_unfinished_rollout_every_service_is_gated_but_the_skipped() -> None:
    changed = plan(
        Wave(0, (change(EMBEDDER, Action.UNCHANGED), change(RANKER, Action.SERVE_UPDATE))),
        Wave(1, (change(DISABLED, Action.SKIPPED, 1),)),
    )
    found = work(changed, unfinished=True)
    assert [(w.wave.number, w.changed, w.gate) for w in found] == [
        (0, (RANKER,), (EMBEDDER, RANKER)),
    ]


def test_prunes_go_later_waves_first_rayservices_before_other_kinds() -> None:
    pruning = plan(
        Wave(0, (change(RANKER, Action.SERVE_UPDATE),)),
        Wave(
            9,
            (
                change(CONFIG, Action.PRUNE, 2),
                change(EMBEDDER, Action.PRUNE, 1),
                change(RANKER, Action.PRUNE, 2),
                change(DISABLED, Action.ORPHAN, 3),
            ),
            prune=True,
        ),
    )
    assert [c.key for c in prunes(pruning)] == [RANKER, CONFIG, EMBEDDER]


def test_kinds_and_the_succeeded_message() -> None:
    desired = {
        CONFIG: DesiredService(CONFIG, "staging", {}, "staging/settings.yaml", 1),
        RANKER: DesiredService(RANKER, "staging", {}, "staging/ranker.yaml", 1),
    }
    secret = ServiceKey("ray-staging", "old", "Secret", "v1")
    left = plan(Wave(9, (change(secret, Action.ORPHAN),), prune=True))
    assert kinds(desired, left) == ("v1/ConfigMap", "v1/Secret")
    assert succeeded_message(2, 1, 0) == "2 applied, 1 pruned, every service Healthy"
    assert succeeded_message(2, 0, 1) == (
        "2 applied, 0 pruned, 1 skipped (reconcile disabled), every other service Healthy"
    )
