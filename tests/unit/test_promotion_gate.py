"""The promotion gate's decisions (``_Pass._gate``): an environment whose ``after:`` names one
another agent manages rolls out only once that predecessor shows ``success`` on this very
commit. Statuses come from an in-memory provider; the integration tests (test_promotion.py)
run the same gate against two agents, a real Gitea and git notes."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import pytest

from gitsync.config import AgentConfig, PromotionGate
from gitsync.errors import ForgeError, GitsyncError
from gitsync.manifests.repoconfig import EnvironmentConfig
from gitsync.model import Outcome, RolloutResult
from gitsync.progress import Lines
from gitsync.report.reporter import Reporter
from gitsync.report.status import CommitStatus, Describer, State
from gitsync.source.config import RepoSource
from gitsync.sync import _Pass, _Statuses

NEW = "1111111111111111111111111111111111111111"
OLD = "0000000000000000000000000000000000000000"
PRODUCTION = EnvironmentConfig("production", "environments/production", "ray-prod", ("staging",))


class Statuses:
    """Commit statuses in memory, per revision; ``fail`` makes every read raise. ``reads``
    are the gate's (the reporter's own first look at a commit is not counted)."""

    name = "memory"

    def __init__(self) -> None:
        self.shown: dict[str, dict[str, CommitStatus]] = {}
        self.reads: list[str] = []
        self.fail: GitsyncError | None = None
        self.on_read: Callable[[int], None] = lambda count: None

    def post(self, revision: str, status: CommitStatus) -> None:
        self.shown.setdefault(revision, {})[status.context] = status

    def statuses(self, revision: str) -> Mapping[str, CommitStatus]:
        if threading.current_thread().name != "gitsync-reporter":  # not its first look
            self.reads.append(revision)
            self.on_read(len(self.reads))
        if self.fail is not None:
            raise self.fail
        return dict(self.shown.get(revision, {}))


@pytest.fixture
def memory() -> Statuses:
    return Statuses()


@pytest.fixture
def reporter(memory: Statuses) -> Iterator[Reporter]:
    made = Reporter(memory)
    yield made
    made.close(timeout=5)


def gate(
    reporter: Reporter, *, timeout: float = 0.3, lines: list[str] | None = None
) -> RolloutResult | None:
    """Runs production's gate at ``NEW``, reading every 10 ms."""
    config = AgentConfig(
        RepoSource("file:///nowhere.git", "main", Path("/nonexistent")),
        environments=("production",),
        promotion=PromotionGate(timeout=timeout, poll_interval=0.01),
    )
    run = _Pass(
        config=config,
        services=cast(Any, None),  # services, state, source: the gate reads only statuses
        state=cast(Any, None),
        source=cast(Any, None),
        reporter=reporter,
        observer=Lines((lines if lines is not None else []).append),
        stop=threading.Event(),
        supersede_every=5.0,
    )
    return run._gate(
        PRODUCTION, ("production",), _Statuses(reporter, Describer(NEW)), lambda: False
    )


def staging(state: State, text: str = "") -> CommitStatus:
    return CommitStatus("gitsync/staging", state, text)


def test_success_on_this_commit_opens_the_gate(memory: Statuses, reporter: Reporter) -> None:
    memory.post(NEW, staging(State.PENDING, "applying wave 1/1"))

    def later(count: int) -> None:
        if count == 3:  # staging's agent finishes while production waits
            memory.post(NEW, staging(State.SUCCESS, "Healthy"))

    memory.on_read = later
    assert gate(reporter, timeout=30) is None
    assert len(memory.reads) == 3
    assert reporter.flush(5)
    waiting = memory.shown[NEW]["gitsync/production"]
    assert waiting.state is State.PENDING
    assert waiting.description.startswith("waiting for gitsync/staging: success at 111111111111")


def test_a_gate_that_times_out_is_blocked_naming_the_predecessor(
    memory: Statuses, reporter: Reporter
) -> None:
    memory.post(NEW, staging(State.PENDING, "applying wave 1/2: ranker cluster-swap"))
    result = gate(reporter)
    assert result is not None
    assert (result.outcome, result.revision) == (Outcome.BLOCKED, NEW)
    assert result.message.startswith("no gitsync/staging: success at 111111111111 within 0s")
    assert reporter.flush(5)
    blocked = memory.shown[NEW]["gitsync/production"]
    assert blocked.state is State.FAILURE
    assert blocked.description.startswith("not rolled out: no gitsync/staging: success at")
    assert "staging is pending: applying wave 1/2" in blocked.description


@pytest.mark.parametrize("state", [State.ERROR, State.FAILURE])
def test_a_predecessor_that_failed_blocks_at_once(
    memory: Statuses, reporter: Reporter, state: State
) -> None:
    memory.post(NEW, staging(state, "gitsync error: the Kubernetes API server is unreachable"))
    result = gate(reporter, timeout=30)
    assert result is not None
    assert result.outcome is Outcome.BLOCKED
    assert len(memory.reads) == 1  # no waiting: the predecessor's verdict is in
    assert reporter.flush(5)
    blocked = memory.shown[NEW]["gitsync/production"]
    assert blocked.state is State.FAILURE
    assert blocked.description.startswith(f"not rolled out: gitsync/staging is {state} at ")
    assert "API server is unreachable" in blocked.description


def test_success_on_an_older_commit_does_not_open_the_gate(
    memory: Statuses, reporter: Reporter
) -> None:
    memory.post(OLD, staging(State.SUCCESS, "Healthy at 000000000000"))
    result = gate(reporter)
    assert result is not None
    assert result.outcome is Outcome.BLOCKED
    assert set(memory.reads) == {NEW}  # only this commit's statuses count
    assert "(no status yet)" in result.message


def test_unreadable_statuses_keep_the_gate_waiting_until_it_times_out(
    memory: Statuses, reporter: Reporter
) -> None:
    memory.fail = ForgeError("GET …/commits/1111/status: HTTP 502: Bad Gateway")
    lines: list[str] = []
    result = gate(reporter, lines=lines)
    assert result is not None
    assert result.outcome is Outcome.BLOCKED
    assert result.message.endswith("(statuses unreadable)")
    assert len(memory.reads) > 2  # it kept reading
    assert any("cannot read the statuses of 111111111111: GET" in line for line in lines)
