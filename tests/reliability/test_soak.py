"""Soak: rounds of a hostile commit (refused) then a good commit (rolled out) through one
agent, to catch what only repetition shows — memory that grows per failed pass, a cache that
is never pruned, a pass that slows down. ``make test`` runs a few rounds; a long run sets
``GITSYNC_SOAK_ROUNDS`` (``-m soak`` selects only these tests).
"""

from __future__ import annotations

import os

import pytest
from kubernetes import client

from gitsync.agent import Agent
from testbed.simulator import Simulator
from tests.integration.gitops import GitOpsRepo
from tests.reliability.agents import live, reset, rss_mib, run_pass, wait_first_pass
from tests.reliability.conftest import Figures
from tests.reliability.corpus import BY_NAME

# Timing- or memory-sensitive: `make test` runs it alone, after the parallel phase.
pytestmark = pytest.mark.serial

ROUNDS = int(os.environ.get("GITSYNC_SOAK_ROUNDS", "4"))
# Small, fast cases of different kinds: a bomb, a symlink escape, a bad tag, a broken config.
ROTATION = ("laughs-manifest", "symlink-etc-passwd", "python-object-apply", "config-name-int")


@pytest.mark.soak
def test_rounds_of_bad_and_good_commits_do_not_grow_the_agent(
    agent: tuple[Agent, GitOpsRepo],
    api: client.ApiClient,
    sim: Simulator,
    namespace: str,
    figures: Figures,
) -> None:
    running, repo = agent
    wait_first_pass(running)
    samples = []
    for round_ in range(ROUNDS):
        case = BY_NAME[ROTATION[round_ % len(ROTATION)]]
        repo.commit(lambda root, case=case: reset(root, namespace, case), case.name)
        refused = run_pass(running)
        assert not running.last_ok, case.name
        replicas = 1 + (round_ + 1) % 2  # alternate, so every good commit changes the ranker
        sha = repo.commit(
            lambda root, replicas=replicas: (
                reset(root, namespace, None),
                repo.edit("ranker.yaml", "num_replicas: 1", f"num_replicas: {replicas}"),
            ),
            f"good {round_}",
        )
        rolled = run_pass(running)
        assert running.last_ok, round_
        assert live(api, namespace)["ranker"][1] == sha
        samples.append(rss_mib())
        figures.add(
            "soak",
            {
                "round": round_ + 1,
                "refused case": case.name,
                "refused pass s": round(refused, 2),
                "good pass s": round(rolled, 2),
                "agent process RSS MiB": round(samples[-1], 1),
            },
        )
    # Generous: a leak of a few MiB per failed pass would show over a long run.
    assert samples[-1] - samples[0] < 100
    figures.summary(
        "soak: refused and good commits in turn",
        trials=ROUNDS,
        failures=0,
        data_lost=0,
        recovery_s=None,
    )
