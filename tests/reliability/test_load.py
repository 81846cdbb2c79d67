"""Load: ``gitsync run`` as a process under a burst of commits, and over 3,000 services.

- **A burst.** 50 commits pushed back to back, each changing every service of four
  environments, while the agent polls every second. The rollouts coalesce: the agent goes
  to the newest head it sees, never back (a watch of every RayService, ordered by
  resourceVersion), ends with every service at the 50th commit and Healthy and its status
  success, and its threads and memory stay bounded while the commits pile up — work is a
  head to reach, not a queue of commits.
- **A steady state.** 1,000 services (3,000 with ``GITSYNC_LOAD_SERVICES=3000``) in 10
  environments, nothing new in Git: an hour of polls at the default 30 s interval (120) run
  back to back, after 20 to warm up, with the agent's RSS sampled every 10 polls. Each poll lists every environment's services for the health gauges; what it parses
  must be freed. The services are created as gitsync's rollout would apply them (stamped, by
  its own ``RayServices.apply``) and marked Healthy by the test, the simulator left out of
  those namespaces: 3,000 simulated rollouts would take minutes and measure the simulator.

``GITSYNC_LOAD_SERVICES`` (1000) and ``GITSYNC_LOAD_POLLS`` (120) size the steady state, which
is also a soak test (``GITSYNC_LOAD_SERVICES=3000 pytest -m soak tests/reliability``). Each poll
lists every service (the health gauges): at 3,000 services on 2 busy cores that is seconds
per poll, so the default run keeps 1,000 and stays within a few minutes.
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from bench.workload import Repo as Workload
from bench.workload import git as wgit
from gitsync.checkout import read_tree
from gitsync.kube.rayservices import RayServicesClient
from gitsync.model import Health
from gitsync.planning import environment_manifests, ordered_environments
from gitsync.report.gitnotes import decode
from gitsync.stamp import stamped
from testbed.controlplane import ControlPlane, free_port
from testbed.simulator import Simulator
from tests.integration.gitops import git
from tests.integration.kube import GROUP, PLURAL, VERSION
from tests.reliability.cluster import Recorder, agent_process, rss_mib, threads
from tests.reliability.conftest import Figures

# Timing- or memory-sensitive: `make test` runs it alone, after the parallel phase.
pytestmark = pytest.mark.serial

COMMITS = 50
SERVICES = int(os.environ.get("GITSYNC_LOAD_SERVICES", "1000"))
POLLS = int(os.environ.get("GITSYNC_LOAD_POLLS", "120"))
WARM_UP = 20  # polls before the RSS baseline: imports, caches and pools fill up first
SAMPLE_EVERY = 10
HANG = 600.0  # a hang guard, never a timing


def metrics(port: int) -> dict[str, float]:
    """Sample name with labels → value, from the agent's /metrics ({} when unreachable)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return {}
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            found[name] = float(value)
    return found


def total(samples: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in samples.items() if k.startswith(prefix))


@pytest.fixture
def namespaces(api: client.ApiClient) -> Iterator[list[str]]:
    """A prefix whose ``<prefix>-<n>`` namespaces the test creates; all removed afterwards."""
    made: list[str] = []
    yield made
    core = client.CoreV1Api(api)
    for name in made:
        client.CustomObjectsApi(api).delete_collection_namespaced_custom_object(
            GROUP, VERSION, name, PLURAL
        )
        core.delete_namespace(name)


def make_namespaces(api: client.ApiClient, made: list[str], prefix: str, count: int) -> None:
    core = client.CoreV1Api(api)
    for n in range(count):
        name = f"{prefix}-{n}"
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        made.append(name)


def agent_document(workload: Workload, cache: Path, port: int, poll: str) -> dict[str, Any]:
    return {
        "repository": {"url": workload.origin, "branch": "main"},
        "cacheDir": str(cache),
        "intervals": {"poll": poll},
        "listen": f"127.0.0.1:{port}",
        "leaderElection": {"enabled": False},
        "rollout": {
            "healthyReads": 2,
            "healthySeconds": "1500ms",
            "pollInterval": "100ms",
            "healthTimeout": "120s",
            "stateNamespace": f"{workload.namespace_prefix}-0",
        },
    }


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.mark.timeout(1200)
def test_fifty_commits_in_a_burst_coalesce_to_the_newest(
    api: client.ApiClient,
    control_plane: ControlPlane,
    sim: Simulator,
    namespaces: list[str],
    tmp_path: Path,
    figures: Figures,
) -> None:
    prefix = f"b{uuid.uuid4().hex[:6]}"
    environments = 4
    make_namespaces(api, namespaces, prefix, environments)
    workload = Workload(tmp_path / "repo", 20, environments, namespace_prefix=prefix)
    order = [git("rev-parse", "HEAD", cwd=workload.work)]
    port = free_port()
    document = agent_document(workload, tmp_path / "cache", port, "1s")
    process = agent_process(document, control_plane.kubeconfig, tmp_path, "burst")
    try:
        with Recorder(api, set(namespaces)) as recorder:

            def at(sha: str) -> bool:
                latest = recorder.latest()
                return len(latest) == 20 and all(
                    s.revision == sha and s.health is Health.HEALTHY for s in latest.values()
                )

            recorder.wait("the first rollout", lambda: at(order[0]), HANG)
            threads_before, rss_before = threads(process.pid), rss_mib(process.pid)
            peak_threads, peak_rss = threads_before, rss_before
            for n in range(COMMITS):  # made first, so that pushing them is a burst
                workload.write(replicas=3 + n)
                wgit("add", "-A", cwd=workload.work)
                wgit("commit", "-q", "-m", f"burst {n + 1}", cwd=workload.work)
                order.append(wgit("rev-parse", "HEAD", cwd=workload.work))
            began = time.monotonic()
            for sha in order[1:]:
                wgit("push", "-q", "-f", workload.origin, f"{sha}:refs/heads/main",
                     cwd=workload.work)  # fmt: skip
                peak_threads = max(peak_threads, threads(process.pid))
                peak_rss = max(peak_rss, rss_mib(process.pid))
            pushed = time.monotonic() - began
            newest = order[-1]
            deadline = time.monotonic() + HANG
            while not at(newest):
                assert process.poll() is None, "the agent exited"
                assert time.monotonic() < deadline, "the newest commit did not roll out"
                peak_threads = max(peak_threads, threads(process.pid))
                peak_rss = max(peak_rss, rss_mib(process.pid))
                time.sleep(0.1)
            settled = time.monotonic() - began
            history = recorder.ordered()
        rank = {sha: i for i, sha in enumerate(order)}
        latest: dict[tuple[str, str], int] = {}
        applies = 0
        for s in history:
            key = (s.namespace, s.name)
            assert s.revision in rank, s
            if key in latest and rank[s.revision] < latest[key]:
                raise AssertionError(f"{key} went back from {latest[key]} to {rank[s.revision]}")
            if key in latest and rank[s.revision] > latest[key]:
                applies += 1
            latest[key] = rank[s.revision]
        revisions = {s.revision for s in history if rank[s.revision] > 0}
        samples = metrics(port)
        passes = total(samples, 'gitsync_git_poll_total{result="new"}') + total(
            samples, 'gitsync_git_poll_total{result="retry"}'
        )

        def notes() -> dict[str, str]:
            try:
                note = git("--git-dir", str(workload.bare), "notes", "--ref=gitsync", "show",
                           newest, cwd=workload.work)  # fmt: skip
            except AssertionError:
                return {}
            return {r.status.context: str(r.status.state) for r in decode(note)}

        want = {f"gitsync/env{n}": "success" for n in range(environments)}
        deadline = time.monotonic() + 60
        while notes() != want:  # statuses are posted after the rollout, off the pass's thread
            assert time.monotonic() < deadline, notes()
            time.sleep(0.2)
        figures.add(
            "load-burst",
            {
                "commits": COMMITS,
                "services": 20,
                "environments": environments,
                "pushed in s": round(pushed, 1),
                "newest everywhere after s": round(settled, 1),
                "passes (polls that saw a new head)": int(passes),
                "revisions applied": len(revisions),
                "service applies": applies,
                "threads before → peak": f"{threads_before} → {peak_threads}",
                "RSS MiB before → peak": f"{rss_before:.0f} → {peak_rss:.0f}",
            },
        )
        figures.summary(
            f"{COMMITS} commits in a burst, 4 environments",
            trials=1,
            failures=0,
            data_lost=0,
            recovery_s=round(settled - pushed, 1),
        )
        # Coalesced: far fewer revisions rolled out than commits, the newest among them.
        assert newest in revisions
        assert len(revisions) < COMMITS
        # Bounded: commits are not queued; the agent grows no thread per commit.
        assert peak_threads <= threads_before + 12, (threads_before, peak_threads)
        assert peak_rss - rss_before < 100, (rss_before, peak_rss)
    finally:
        stop(process)


HEALTHY_APPS = {
    "retrieve": {
        "status": "RUNNING",
        "serveDeploymentStatuses": {"Retriever": {"status": "HEALTHY"}},
    },
    "rerank": {
        "status": "RUNNING",
        "serveDeploymentStatuses": {
            "Reranker": {"status": "HEALTHY"},
            "Features": {"status": "HEALTHY"},
        },
    },
}


def healthy_status(generation: int, cluster: str) -> dict[str, Any]:
    """What KubeRay writes for a RayService whose Serve apps all run (tests/unit/health)."""
    condition = {"observedGeneration": generation, "message": "",
                 "lastTransitionTime": "2026-11-26T10:00:00Z"}  # fmt: skip
    return {
        "observedGeneration": generation,
        "numServeEndpoints": 2,
        "conditions": [
            {**condition, "type": "Ready", "status": "True", "reason": "NonZeroServeEndpoints"},
            {
                **condition,
                "type": "UpgradeInProgress",
                "status": "False",
                "reason": "NoPendingCluster",
            },
        ],
        "activeServiceStatus": {"rayClusterName": cluster, "applicationStatuses": HEALTHY_APPS},
        "pendingServiceStatus": {},
    }


def create_healthy(api: client.ApiClient, workload: Workload, revision: str) -> int:
    """Applies every service as a rollout would (gitsync's stamps, its apply), then writes
    a healthy status on each — KubeRay's part."""
    report = read_tree(workload.work)
    services = RayServicesClient(api)
    custom = client.CustomObjectsApi(api)
    bodies = [
        stamped(s.manifest, environment=name, revision=revision, source=s.source, wave=s.wave)
        for name in ordered_environments(report, None, revision[:12])
        for s in environment_manifests(report, name, revision[:12]).services
    ]

    def one(body: dict[str, Any]) -> None:
        live = services.apply(body)
        meta = live["metadata"]
        status = healthy_status(int(meta["generation"]), f"{meta['name']}-c1")
        custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], {"status": status}
        )

    with ThreadPoolExecutor(max_workers=8) as pool:  # the client's pool holds 10
        list(pool.map(one, bodies))
    return len(bodies)


def polls_done(port: int) -> int:
    return int(total(metrics(port), 'gitsync_git_poll_total{result="unchanged"}'))


def steady_state(
    api: client.ApiClient,
    control_plane: ControlPlane,
    simulator: Simulator,
    namespaces: list[str],
    tmp_path: Path,
    figures: Figures,
    polls: int,
) -> None:
    prefix = f"s{uuid.uuid4().hex[:6]}"
    make_namespaces(api, namespaces, prefix, 10)
    simulator.exclude_namespaces |= set(namespaces)  # the test writes their status
    workload = Workload(tmp_path / "repo", SERVICES, 10, namespace_prefix=prefix)
    revision = git("rev-parse", "HEAD", cwd=workload.work)
    began = time.monotonic()
    created = create_healthy(api, workload, revision)
    create_s = time.monotonic() - began
    port = free_port()
    document = agent_document(workload, tmp_path / "cache", port, "100ms")
    process = agent_process(document, control_plane.kubeconfig, tmp_path, "steady")
    log = tmp_path / "steady.log"
    samples: list[tuple[int, float]] = []
    try:
        deadline = time.monotonic() + HANG
        while polls_done(port) < 1:  # the first pass (a no-op: the services are Git's) is over
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the agent's first pass did not finish"
            time.sleep(0.2)
        first_poll = time.monotonic()
        mark = 0
        while (done := polls_done(port)) < WARM_UP + polls:
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline + HANG, f"{done} polls only"
            if done >= mark:
                samples.append((done, rss_mib(process.pid)))
                mark = done - done % SAMPLE_EVERY + SAMPLE_EVERY
            # Each scrape renders a series per service: scraped faster than the agent polls,
            # the test would measure its own /metrics load.
            time.sleep(0.5)
        samples.append((polls_done(port), rss_mib(process.pid)))
        seconds = time.monotonic() - first_poll
        state = metrics(port)
    finally:
        stop(process)
        simulator.exclude_namespaces -= set(namespaces)
    assert "pass failed" not in log.read_text()
    unhealthy = [k for k, v in state.items() if k.startswith("gitsync_service_health") and
                 'health="Healthy"' not in k and v]  # fmt: skip
    assert not unhealthy, unhealthy[:5]
    measured = [rss for done, rss in samples if done >= WARM_UP]
    growth = measured[-1] - measured[0]
    figures.add(
        f"load-steady-{created}",
        {
            "services": created,
            "environments": 10,
            "created in s": round(create_s, 1),
            "polls": samples[-1][0],
            "seconds for the polls": round(seconds, 1),
            "s per poll": round(seconds / max(1, samples[-1][0]), 2),
            f"RSS MiB every {SAMPLE_EVERY} polls": " ".join(f"{rss:.0f}" for _, rss in samples),
            f"growth after {WARM_UP} polls MiB": round(growth, 1),
        },
    )
    figures.summary(
        f"{created} services, {samples[-1][0]} polls with nothing new",
        trials=1,
        failures=int(growth >= 20),
        data_lost=0,
        recovery_s=None,
    )
    # Generous: a leak of a parsed listing per poll (megabytes) would show many times over.
    assert growth < 20, samples


@pytest.mark.soak  # GITSYNC_LOAD_SERVICES=3000 GITSYNC_LOAD_POLLS=1000 pytest -m soak
@pytest.mark.timeout(3600)  # a hang guard: 3,000 services take seconds per poll on busy cores
def test_an_hour_of_polls_over_1000s_of_services_does_not_grow_the_agent(
    api: client.ApiClient,
    control_plane: ControlPlane,
    simulator: Simulator,
    namespaces: list[str],
    tmp_path: Path,
    figures: Figures,
) -> None:
    steady_state(api, control_plane, simulator, namespaces, tmp_path, figures, POLLS)
