"""The forge away while a rollout runs: the agent's status provider reaches the real Gitea
through a loopback fault proxy (``faultproxy.py``) that is down (connection refused), hangs,
or answers every request with a 500, while Git is read from Gitea directly. The rollout is
not held up — the services are applied and Healthy, the pass ends; the statuses are retried
with backoff and, once Gitea answers again, the commit carries the rollout's final status,
read back through Gitea's API. No status is lost."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from kubernetes import client

from gitsync.agent import Agent
from gitsync.config import LeaderElection
from gitsync.kube.state import StateStore
from gitsync.metrics import Metrics
from gitsync.report.gitea import GiteaProvider
from gitsync.report.http import JsonClient, RetryPolicy
from gitsync.report.reporter import Reporter
from testbed.gitea import Gitea
from testbed.simulator import Simulator
from tests.integration.gitops import GitOpsRepo
from tests.reliability.agents import live, wait_first_pass
from tests.reliability.conftest import Figures
from tests.reliability.faultproxy import FaultProxy
from tests.reliability.watchers import ENVIRONMENT, statuses, wait_for_status

GUARD = 120.0  # a hang guard, never a timing assertion


@dataclass
class Forged:
    agent: Agent
    reporter: Reporter
    repo: GitOpsRepo
    proxy: FaultProxy
    metrics: Metrics


@pytest.fixture
def forged(
    api: client.ApiClient, gitea: Gitea, sim: Simulator, tmp_path: Path, namespace: str
) -> Iterator[Forged]:
    name = f"forge-{uuid.uuid4().hex[:8]}"
    repo = GitOpsRepo(
        tmp_path / "gitops", namespace, origin=gitea.create_repo(name),
        push_args=gitea.git_auth_config(),
    )  # fmt: skip
    proxy = FaultProxy(gitea.port)
    metrics = Metrics()
    # Shorter than the defaults (5 HTTP attempts from 1 s, 10 s timeout, 3 rounds, redelivery
    # after 10 s), so an outage of seconds outlasts every retry of a delivery round.
    forge = JsonClient(
        f"http://127.0.0.1:{proxy.port}",
        lambda: {"Authorization": f"token {gitea.token}"},
        timeout=1.0,
        policy=RetryPolicy(attempts=3, backoff=0.3),
        on_retry=lambda reason: metrics.status_retries.labels("gitea").inc(),
    )
    reporter = Reporter(
        GiteaProvider(forge, f"{gitea.admin}/{name}"),
        metrics,
        attempts=2,
        backoff=0.3,
        redeliver=1.0,
    )
    config = replace(
        repo.agent_config(tmp_path / "cache"),
        poll_seconds=3600.0,
        leader_election=LeaderElection(enabled=False),
    )
    agent = Agent(config, api, "forge-faults-agent", metrics=metrics, reporter=reporter)
    agent.start()
    try:
        wait_first_pass(agent)
        yield Forged(agent, reporter, repo, proxy, metrics)
    finally:
        agent.shutdown(timeout=10)
        proxy.close()


def posts(metrics: Metrics, result: str) -> float:
    return sum(
        sample.value
        for metric in metrics.registry.collect()
        if metric.name == "gitsync_status_post"
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.labels["result"] == result
    )


def test_the_forge_away_never_holds_a_rollout_and_no_status_is_lost(
    forged: Forged, api: client.ApiClient, gitea: Gitea, namespace: str, figures: Figures
) -> None:
    agent, repo, proxy, metrics = forged.agent, forged.repo, forged.proxy, forged.metrics
    replicas = iter(range(2, 100))
    for mode in ("down", "hang", "error500"):
        text = repo.path("ranker.yaml").read_text()
        current = text.split("num_replicas: ", 1)[1].split("\n", 1)[0]
        repo.edit("ranker.yaml", f"num_replicas: {current}", f"num_replicas: {next(replicas)}")
        sha = repo.commit(lambda root: None, f"while the forge is {mode}")
        failed, retried = (
            posts(metrics, "failed"),
            metrics.registry.get_sample_value(
                "gitsync_status_post_retries_total", {"provider": "gitea"}
            )
            or 0.0,
        )
        proxy.set(mode)
        began = time.monotonic()
        agent.trigger()
        while not (agent.last_revision == sha and not agent._lock.locked()):
            assert time.monotonic() - began < GUARD, f"{mode}: the rollout did not finish"
            time.sleep(0.05)
        rollout = time.monotonic() - began
        # Not held up: applied, Healthy, recorded, while no status could be posted.
        assert agent.last_ok, mode
        assert live(api, namespace)["ranker"][1] == sha, mode
        state = StateStore(api, namespace).read(ENVIRONMENT)
        assert state is not None, mode
        assert (state.revision, state.phase) == (sha, "succeeded"), (mode, state)
        assert not [s for s in statuses(gitea, repo, sha) if s["context"].startswith("gitsync/")]
        # Every retry of a delivery round spent: the final status waits for a redelivery.
        while forged.reporter.waiting == 0 or posts(metrics, "failed") == failed:
            assert time.monotonic() - began < GUARD, f"{mode}: no delivery round failed"
            time.sleep(0.05)
        proxy.set("pass")
        back = time.monotonic()
        recovery = wait_for_status(gitea, repo, sha, "success")
        shown = [
            s["status"] for s in statuses(gitea, repo, sha) if s["context"] == "gitsync/staging"
        ]
        lost = 0 if shown[-1:] == ["success"] and forged.reporter.waiting == 0 else 1
        assert lost == 0, (mode, shown)
        retries = (
            metrics.registry.get_sample_value(
                "gitsync_status_post_retries_total", {"provider": "gitea"}
            )
            or 0.0
        ) - retried
        assert retries > 0, mode
        figures.add(
            "forge-faults",
            {
                "forge": mode,
                "rollout s (forge away)": round(rollout, 2),
                "outage s": round(back - began, 2),
                "HTTP retries": int(retries),
                "rounds failed": int(posts(metrics, "failed") - failed),
                "recovery s (back → status shown)": round(recovery, 2),
                "statuses on the commit": " → ".join(shown),
                "statuses lost": lost,
            },
        )
        figures.add(
            "summary",
            {
                "scenario": f"Gitea {mode} while a rollout posts statuses",
                "trials": 1,
                "failures": 0,
                "data lost": lost,
                "recovery s": round(recovery, 2),
            },
        )
