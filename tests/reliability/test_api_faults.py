"""Kubernetes API faults under a live agent in the middle of rollouts: the agent reaches the
real kube-apiserver through a TLS-terminating proxy (``apiproxy.py``) that answers chosen
requests with 409, 429 (``Retry-After``), 500, or not at all — the server-side apply, the list
and watch of the health wait, the state ConfigMap's read and write — in short bursts (absorbed
by the API-call retries: the rollout goes on) and for long (the pass errors, the commit shows
``error``, the agent retries with backoff and resumes). Then, on a control plane of its own,
kube-apiserver and etcd are stopped and started again mid-rollout.

Throughout, an observer watching through a direct client checks that every version of every
RayService the API server holds is one commit's complete version; at the end of each scenario
the commit shows ``success`` at the newest revision, every changed service carries it, and the
rollout state says succeeded."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from kubernetes import client

from gitsync.agent import Agent
from gitsync.config import LeaderElection, WatchConfig
from gitsync.kube.client import api_client
from gitsync.kube.state import StateStore
from gitsync.metrics import Metrics
from gitsync.report.gitea import GiteaProvider
from gitsync.report.http import JsonClient
from gitsync.report.reporter import Reporter
from testbed.binaries import Binaries
from testbed.controlplane import ControlPlane
from testbed.gitea import Gitea
from testbed.simulator import Delays, Simulator
from tests.integration.gitops import GitOpsRepo
from tests.reliability.agents import live, wait_first_pass
from tests.reliability.apiproxy import ApiFaultProxy, Rule
from tests.reliability.conftest import Figures
from tests.reliability.watchers import ENVIRONMENT, Observer, Versions, statuses, wait_for_status

TIMEOUT = (2.0, 3.0)  # the agent's API request timeout (connect, read): a hung request costs 3 s
GUARD = 180.0  # a hang guard, never a timing assertion


@dataclass
class Bed:
    agent: Agent
    repo: GitOpsRepo
    versions: Versions
    observer: Observer
    gitea: Gitea
    namespace: str
    replicas: Iterator[int]

    def commit(self, message: str) -> str:
        text = self.repo.path("ranker.yaml").read_text()
        current = text.split("num_replicas: ", 1)[1].split("\n", 1)[0]
        self.repo.edit(
            "ranker.yaml", f"num_replicas: {current}", f"num_replicas: {next(self.replicas)}"
        )
        return self.versions.add(self.repo.commit(lambda root: None, message))

    def done(self, sha: str) -> float:
        """Waits until the agent finished ``sha`` (it retries by itself); seconds."""
        began = time.monotonic()
        while not (
            self.agent.last_revision == sha and self.agent.last_ok and not self.agent._lock.locked()
        ):
            assert time.monotonic() - began < GUARD, f"{sha[:12]} did not roll out"
            time.sleep(0.05)
        return time.monotonic() - began

    def shown(self, sha: str) -> list[str]:
        return [
            s["status"]
            for s in statuses(self.gitea, self.repo, sha)
            if s["context"] == f"gitsync/{ENVIRONMENT}"
        ]


def gitea_reporter(gitea: Gitea, name: str, metrics: Metrics) -> Reporter:
    forge = JsonClient(gitea.url, lambda: {"Authorization": f"token {gitea.token}"}, timeout=5)
    return Reporter(GiteaProvider(forge, f"{gitea.admin}/{name}"), metrics)


def start_bed(
    tmp_path: Path, namespace: str, gitea: Gitea, kubeconfig: Path, direct: client.ApiClient
) -> tuple[Bed, client.ApiClient]:
    name = f"api-{uuid.uuid4().hex[:8]}"
    repo = GitOpsRepo(
        tmp_path / "gitops", namespace, origin=gitea.create_repo(name),
        push_args=gitea.git_auth_config(),
    )  # fmt: skip
    versions = Versions(repo)
    observer = Observer(direct, namespace, versions)
    agent_api = api_client(kubeconfig, timeout=TIMEOUT)
    metrics = Metrics()
    config = replace(
        repo.agent_config(tmp_path / "cache"),
        poll_seconds=3600.0,  # passes run when the test commits; retries by the agent itself
        leader_election=LeaderElection(enabled=False),
        # Watches re-opened every second, so that faults meet the cache's list and watch
        # during a rollout; a watch answered by nothing is cut after the read timeout.
        watch=WatchConfig(timeout=1.0, silent=TIMEOUT[1]),
    )
    agent = Agent(
        config,
        agent_api,
        "api-faults-agent",
        metrics=metrics,
        reporter=gitea_reporter(gitea, name, metrics),
    )
    agent.start()
    bed = Bed(agent, repo, versions, observer, gitea, namespace, iter(range(2, 1000)))
    return bed, agent_api


def stop_bed(bed: Bed, agent_api: client.ApiClient) -> None:
    bed.agent.shutdown(timeout=10)
    bed.observer.close()
    agent_api.close()


@pytest.fixture
def proxied(
    api: client.ApiClient,
    control_plane: ControlPlane,
    gitea: Gitea,
    sim: Simulator,
    tmp_path: Path,
    namespace: str,
) -> Iterator[tuple[Bed, ApiFaultProxy]]:
    proxy = ApiFaultProxy(control_plane, tmp_path)
    bed, agent_api = start_bed(tmp_path, namespace, gitea, proxy.kubeconfig, api)
    try:
        wait_first_pass(bed.agent)
        yield bed, proxy
    finally:
        proxy.clear()
        stop_bed(bed, agent_api)
        proxy.close()


def targets(namespace: str) -> dict[str, tuple[str, str | None]]:
    """What a fault hits: (request pattern, armed by). The apply and the state ConfigMap's
    write are the rollout's own requests. Its reads come from the watch-backed cache, whose
    watches the agent here re-opens every second (``watch.watchTimeout``): the RayServices'
    watch and list (a failed watch lists again, and while the cache lists, the health wait
    reads the API server directly with the same list), and the state ConfigMaps' read (their
    watch and list, or a direct GET while the cache lists); all after the apply."""
    services = rf"/apis/ray\.io/v1/namespaces/{namespace}/rayservices"
    apply = rf"^PATCH {services}/ranker\?(?!.*dryRun)"
    configmaps = rf"/api/v1/namespaces/{namespace}/configmaps"
    state = rf"{configmaps}/gitsync-rollout-{ENVIRONMENT}"
    return {
        "apply (server-side PATCH)": (apply, None),
        "list (health wait)": (rf"^GET {services}\?(?!.*watch=)", apply),
        "watch (health wait)": (rf"^GET {services}\?.*watch=", apply),
        "state ConfigMap read": (rf"^GET ({state}|{configmaps}\?)", apply),
        "state ConfigMap write": (rf"^PATCH {state}", apply),
    }


def check_end(bed: Bed, api: client.ApiClient, sha: str, label: str) -> None:
    """Nothing ends at an older revision; the state says succeeded; every version was whole."""
    assert bed.agent.last_revision == sha, label
    assert live(api, bed.namespace)["ranker"][1] == sha, label
    state = StateStore(api, bed.namespace).read(ENVIRONMENT)
    assert state is not None, label
    assert (state.revision, state.phase) == (sha, "succeeded"), (label, state)
    assert not bed.observer.problems, (label, bed.observer.problems[:5])


def summary(figures: Figures, scenario: str, failures: int, recovery: float | str) -> None:
    figures.add(
        "summary",
        {
            "scenario": scenario,
            "trials": 1,
            "failures": failures,
            "data lost": 0,
            "recovery s": recovery if isinstance(recovery, str) else round(recovery, 2),
        },
    )


FAULTS: tuple[tuple[int | str, int], ...] = ((409, 2), (429, 2), (500, 2), ("timeout", 1))


def test_api_fault_bursts_are_retried_and_the_rollout_goes_on(
    proxied: tuple[Bed, ApiFaultProxy], api: client.ApiClient, figures: Figures
) -> None:
    """One rollout per fault, the fault injected on every target in it: the apply, the
    health wait's list and watch, the state ConfigMap's read and write."""
    bed, proxy = proxied
    for fault, times in FAULTS:
        label = f"{fault} on every target"
        sha = bed.commit(label)
        rules = {
            target: proxy.add(Rule(pattern, fault, times, armed_by=armed_by))
            for target, (pattern, armed_by) in targets(bed.namespace).items()
        }
        bed.agent.trigger()
        seconds = bed.done(sha)
        # The cache's watches meet their faults as they re-open, during the rollout or
        # just after it: the agent must ride them out either way.
        began = time.monotonic()
        while not all(rule.spent for rule in rules.values()):
            assert time.monotonic() - began < GUARD, (label, proxy.requests[-30:])
            time.sleep(0.05)
        proxy.clear()
        hits = {target: len(rule.hits) for target, rule in rules.items()}
        assert hits == dict.fromkeys(rules, times), (label, hits, proxy.requests[-30:])
        wait_for_status(bed.gitea, bed.repo, sha, "success")
        recovery = time.monotonic() - max(r.hits[-1] for r in rules.values())
        shown = bed.shown(sha)
        check_end(bed, api, sha, label)
        assert shown[-1] == "success", (label, shown)
        assert "failure" not in shown, (label, shown)
        name = fault if fault == "timeout" else f"HTTP {fault}"
        figures.add(
            "api-faults",
            {
                "fault": name,
                "injected on each of": ", ".join(rules),
                "times each": times,
                "pass s": round(seconds, 2),
                "last fault → success s": round(recovery, 2),
                "statuses": " → ".join(shown),
                "versions seen": bed.observer.seen,
            },
        )
        summary(
            figures,
            f"API {name} (x{times}) on apply, list, watch, state read and write",
            0,
            recovery,
        )


def test_a_failing_api_errors_the_pass_then_the_agent_resumes(
    proxied: tuple[Bed, ApiFaultProxy], api: client.ApiClient, figures: Figures
) -> None:
    """Every request fails from the apply on, longer than the API-call retries last: the
    commit shows ``error``; once the API answers again the agent (retrying by itself, with
    backoff) resumes the rollout and the commit shows ``success``."""
    bed, proxy = proxied
    apply, _ = targets(bed.namespace)["apply (server-side PATCH)"]
    for fault in (500, 429, "timeout"):
        sha = bed.commit(f"through a failing API server: {fault}")
        rule = proxy.add(Rule(".", fault, None, armed_by=apply))
        began = time.monotonic()
        bed.agent.trigger()
        until_error = wait_for_status(bed.gitea, bed.repo, sha, "error")
        error = next(
            s["description"]
            for s in reversed(statuses(bed.gitea, bed.repo, sha))
            if s["status"] == "error"
        )
        assert "unreachable or failing" in error, error
        proxy.clear()
        back = time.monotonic()
        recovery = wait_for_status(bed.gitea, bed.repo, sha, "success")
        bed.done(sha)
        check_end(bed, api, sha, str(fault))
        shown = bed.shown(sha)
        assert "failure" not in shown, shown
        figures.add(
            "api-outages",
            {
                "fault": f"every request: {fault}",
                "injected": len(rule.hits),
                "error shown after s": round(until_error, 2),
                "outage s": round(back - began, 2),
                "recovery s": round(recovery, 2),
                "statuses": " → ".join(shown),
                "error said": error,
            },
        )
        summary(figures, f"API failing ({fault}) mid-health-wait", 0, recovery)


# -- kube-apiserver and etcd stopped and started again, on a control plane of their own ------


@pytest.fixture
def own_plane(binaries: Binaries, tmp_path: Path) -> Iterator[ControlPlane]:
    plane = ControlPlane(binaries=binaries, workdir=tmp_path / "plane", verbose=False, crds=False)
    plane.start()
    try:
        # Only the RayService CRD (the simulator keeps clusters in memory): a third of the
        # CRD bytes, and of the start-up time.
        crds = tmp_path / "crds"
        crds.mkdir()
        shutil.copy(binaries.kuberay_crds / "ray.io_rayservices.yaml", crds)
        plane.install_crds(crds)
        yield plane
    finally:
        plane.stop()


def test_the_control_plane_restarted_mid_rollout(
    own_plane: ControlPlane, gitea: Gitea, tmp_path: Path, figures: Figures
) -> None:
    """kube-apiserver, then etcd, stopped (by pid) while a rollout waits on health, and
    started again on the same ports and data directory."""
    namespace = f"t-{uuid.uuid4().hex[:10]}"
    with own_plane.api_client() as direct, own_plane.api_client() as sim_api:
        client.CoreV1Api(direct).create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace))
        )
        sim = Simulator(
            sim_api, Delays(cluster_start=0.3, app_deploy=0.4, tick=0.05, requeue=1.0), seed=7
        )
        sim.start()
        bed, agent_api = start_bed(tmp_path, namespace, gitea, own_plane.kubeconfig, direct)
        try:
            wait_first_pass(bed.agent)
            for process in ("kube-apiserver", "etcd"):
                sha = bed.commit(f"while {process} restarts")
                bed.agent.trigger()
                while live(direct, namespace)["ranker"][1] != sha:  # applied: the wait runs
                    time.sleep(0.05)
                began = time.monotonic()
                own_plane.stop_process(process)
                stopped = time.monotonic() - began
                until_error = wait_for_status(gitea, bed.repo, sha, "error")
                own_plane.start_process(process)
                back = time.monotonic()
                recovery = wait_for_status(gitea, bed.repo, sha, "success")
                bed.done(sha)
                check_end(bed, direct, sha, process)
                shown = bed.shown(sha)
                assert "failure" not in shown, shown
                figures.add(
                    "api-restarts",
                    {
                        "stopped": process,
                        "stop s": round(stopped, 2),
                        "then error shown after s": round(until_error, 2),
                        "down s": round(back - began, 2),
                        "recovery s (ready → success)": round(recovery, 2),
                        "statuses": " → ".join(shown),
                        "plane start s (CRD not counted)": round(own_plane.startup_seconds, 1),
                    },
                )
                summary(figures, f"{process} stopped and restarted mid-rollout", 0, recovery)
        finally:
            stop_bed(bed, agent_api)
            sim.stop()
