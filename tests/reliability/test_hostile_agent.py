"""The agent under the whole hostile corpus, one commit after another, against real Git
(``file://``), the real API server and the KubeRay simulator: every hostile commit fails its
pass with the case's problem, nothing is applied (the services of the last good revision keep
their generation and revision), the agent keeps running, and a good commit after all of them
still rolls out."""

from __future__ import annotations

import logging
import re

import pytest
from kubernetes import client

from gitsync.agent import Agent
from testbed.simulator import Simulator
from tests.integration.gitops import GitOpsRepo
from tests.reliability.agents import live, reset, rss_mib, run_pass, wait_first_pass
from tests.reliability.conftest import Figures
from tests.reliability.corpus import CASES

# Timing- or memory-sensitive: `make test` runs it alone, after the parallel phase.
pytestmark = pytest.mark.serial


class Failures(logging.Handler):
    """The agent's "pass failed" lines, as they are logged."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("pass failed"):
            self.lines.append(record.getMessage())


_SHA = re.compile(r"^[0-9a-f]{40}$")


def test_the_agent_refuses_every_hostile_commit_and_recovers(
    agent: tuple[Agent, GitOpsRepo],
    api: client.ApiClient,
    sim: Simulator,
    namespace: str,
    figures: Figures,
) -> None:
    running, repo = agent
    wait_first_pass(running)
    assert running.last_ok
    good = live(api, namespace)
    assert set(good) == {"embedder", "ranker", "summarizer"}
    failures = Failures()
    logging.getLogger("gitsync.agent").addHandler(failures)
    before_rss = rss_mib()
    try:
        for case in CASES:
            repo.commit(lambda root, case=case: reset(root, namespace, case), case.name)
            failures.lines.clear()
            seconds = run_pass(running)
            error = failures.lines[0] if failures.lines else ""
            figures.add(
                "hostile-agent",
                {
                    "case": case.name,
                    "pass": "ok" if running.last_ok else "failed",
                    "seconds": round(seconds, 2),
                    "agent process RSS MiB": round(rss_mib(), 1),
                    "error": " ".join(error.split("\n")[:2]),
                },
            )
            if case.expect is None:
                assert running.last_ok, case.name
            else:
                assert not running.last_ok, case.name
                assert case.expect in error, (case.name, error[:2000])
            assert live(api, namespace) == good, f"{case.name} changed the cluster"
        sha = repo.commit(
            lambda root: (
                reset(root, namespace, None),
                repo.edit("ranker.yaml", "num_replicas: 1", "num_replicas: 2"),
            ),
            "a good commit after the corpus",
        )
        recovered = run_pass(running)
    finally:
        logging.getLogger("gitsync.agent").removeHandler(failures)
    assert running.last_ok, failures.lines
    # The cache keeps the trees the agent still reads, not one per commit (100 MB among them).
    trees = sorted(p.name for p in running.source.trees_dir.iterdir() if _SHA.match(p.name))
    assert len(trees) <= 2, trees
    reports = {p.name[:40] for p in running.source.trees_dir.glob("*.report-*")}
    assert reports <= set(trees), reports  # a parsed report goes with its tree
    after = live(api, namespace)
    assert after["ranker"] == (good["ranker"][0] + 1, sha)
    figures.add(
        "hostile-agent",
        {
            "case": "(good commit after the corpus)",
            "pass": "ok",
            "seconds": "",
            "agent process RSS MiB": round(rss_mib(), 1),
            "error": f"RSS growth over the corpus: {rss_mib() - before_rss:+.1f} MiB; "
            f"cached trees left: {len(trees)}",
        },
    )
    figures.summary(
        "hostile commits under a live agent",
        trials=len(CASES),
        failures=0,  # each case refused as expected, or the test stopped before this row
        data_lost=0,  # every service kept its generation and revision through the corpus
        recovery_s=recovered,
    )
