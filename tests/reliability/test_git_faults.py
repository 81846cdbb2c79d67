"""Git faults under a live agent: the repository is served by real ``git http-backend``
behind a fault proxy (down, hung, slow, answering garbage), then force-pushed and its branch
deleted. Each fault is reported (a failed poll or pass, logged, counted), applies nothing — the
services keep the last good revision — and the agent, still running, rolls the waiting commit
out as soon as Git is healthy again."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from kubernetes import client

from gitsync.agent import Agent
from gitsync.config import LeaderElection
from gitsync.metrics import Metrics
from testbed.gitserver import SmartHttpServer
from testbed.simulator import Simulator
from tests.integration.gitops import GitOpsRepo, git
from tests.reliability.agents import PASS_TIMEOUT, live, wait_first_pass
from tests.reliability.conftest import Figures, spread
from tests.reliability.faultproxy import FaultProxy

GIT_TIMEOUT = 3.0  # the source's per-process timeout: a hung server costs this much per poll


class Said(logging.Handler):
    """What the agent logged about failed polls and passes."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(("poll failed", "pass failed")):
            self.lines.append(message)


@pytest.fixture
def faulty(
    api: client.ApiClient, tmp_path: Path, namespace: str
) -> Iterator[tuple[Agent, GitOpsRepo, FaultProxy]]:
    repo = GitOpsRepo(tmp_path / "gitops", namespace)
    with SmartHttpServer(tmp_path / "gitops", tmp_path / "http-log") as server:
        proxy = FaultProxy(server.port)
        config = repo.agent_config(tmp_path / "cache")
        url = f"http://127.0.0.1:{proxy.port}/repo.git"
        config = replace(
            config,
            repository=replace(config.repository, url=url, timeout=GIT_TIMEOUT),
            poll_seconds=3600.0,
            leader_election=LeaderElection(enabled=False),
        )
        agent = Agent(config, api, "faults-agent", metrics=Metrics())
        agent.start()
        try:
            yield agent, repo, proxy
        finally:
            agent.shutdown(timeout=10)
            proxy.close()


def polls(agent: Agent) -> float:
    return sum(
        sample.value
        for metric in agent.metrics.registry.collect()
        if metric.name == "gitsync_git_poll"
        for sample in metric.samples
        if sample.name.endswith("_total")
    )


def poll(agent: Agent) -> float:
    """Triggers one poll and waits for it (and the pass it starts) to finish."""
    began, before = time.monotonic(), polls(agent)
    agent.trigger()
    while polls(agent) == before:
        assert time.monotonic() - began < PASS_TIMEOUT, "the poll did not run"
        time.sleep(0.02)
    time.sleep(0.1)  # a pass starts right after a poll that saw a new head
    while agent._lock.locked():
        assert time.monotonic() - began < PASS_TIMEOUT, "the pass did not finish"
        time.sleep(0.02)
    return time.monotonic() - began


def test_git_faults_apply_nothing_and_the_agent_recovers(
    faulty: tuple[Agent, GitOpsRepo, FaultProxy],
    api: client.ApiClient,
    sim: Simulator,
    namespace: str,
    figures: Figures,
) -> None:
    agent, repo, proxy = faulty
    wait_first_pass(agent)
    assert agent.last_ok
    said = Said()
    logging.getLogger("gitsync.agent").addHandler(said)
    replicas = iter(range(2, 100))
    recoveries: list[float] = []

    def scale(root: Path) -> None:
        text = repo.path("ranker.yaml").read_text()
        current = text.split("num_replicas: ", 1)[1].split("\n", 1)[0]
        repo.edit("ranker.yaml", f"num_replicas: {current}", f"num_replicas: {next(replicas)}")

    def record(fault: str, seconds: float, recovered: float, expect: str) -> None:
        recoveries.append(recovered)
        error = next((line for line in said.lines if expect in line), said.lines[:1])
        figures.add(
            "git-faults",
            {
                "fault": fault,
                "reported in s": round(seconds, 2),
                "recovered in s": round(recovered, 2),
                "what the agent said": error if isinstance(error, str) else "".join(error),
            },
        )
        assert any(expect in line for line in said.lines), (fault, said.lines)

    try:
        for mode, expect in (
            ("down", "cannot reach the Git server"),
            ("hang", f"did not finish within {GIT_TIMEOUT:g} s"),
            ("garbage", "protocol error"),
        ):
            before = live(api, namespace)
            sha = repo.commit(scale, f"waits for git: {mode}")
            proxy.set(mode)
            said.lines.clear()
            seconds = poll(agent)
            assert live(api, namespace) == before, f"{mode}: something was applied"
            proxy.set("pass")
            recovered = poll(agent)
            assert agent.last_ok, mode
            assert live(api, namespace)["ranker"][1] == sha, mode
            record(mode, seconds, recovered, expect)

        proxy.set("slow")  # slow but within the timeout: still rolls out
        sha = repo.commit(scale, "over a slow link")
        said.lines.clear()
        seconds = poll(agent)
        proxy.set("pass")
        assert agent.last_ok, said.lines
        assert live(api, namespace)["ranker"][1] == sha, said.lines
        figures.add("git-faults", {"fault": "slow (100 ms per KiB)", "reported in s": "",
                                   "recovered in s": round(seconds, 2),
                                   "what the agent said": "rolled out"})  # fmt: skip
        recoveries.append(seconds)

        # Force-push over the deployed commit: the rewritten branch's new head rolls out.
        git("reset", "-q", "--hard", "HEAD~1", cwd=repo.work)
        sha = repo.commit(scale, "rewritten history")
        seconds = poll(agent)
        assert agent.last_ok
        assert live(api, namespace)["ranker"][1] == sha
        figures.add("git-faults", {"fault": "force-push", "reported in s": "",
                                   "recovered in s": round(seconds, 2),
                                   "what the agent said": "rolled out the new head"})  # fmt: skip
        recoveries.append(seconds)

        # The branch deleted, then pushed again.
        before = live(api, namespace)
        git("--git-dir", str(repo.bare), "update-ref", "-d", "refs/heads/main", cwd=repo.work)
        said.lines.clear()
        seconds = poll(agent)
        assert live(api, namespace) == before
        sha = repo.commit(scale, "the branch is back")
        recovered = poll(agent)
        assert agent.last_ok
        assert live(api, namespace)["ranker"][1] == sha
        record("branch deleted", seconds, recovered, "branch 'main' does not exist")
        figures.summary(
            "Git server down, hung, garbage, slow; force-push; branch deleted",
            trials=6,
            failures=0,  # each fault reported and recovered, or the test stopped before this row
            data_lost=0,  # nothing applied during a fault; the waiting commit rolled out after
            recovery_s=spread(recoveries),
        )
    finally:
        logging.getLogger("gitsync.agent").removeHandler(said)
