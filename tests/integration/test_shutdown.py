"""`gitsync run` stops within its grace period (``shutdownGracePeriod``) whatever it is doing:
idle, mid-apply with the API server not answering, mid-health-wait, with the API server gone,
with the forge or the Git server accepting connections and never answering, with a webhook
half-received. Each test runs the real agent process against the test bed's API server and
simulator and sends it SIGTERM (or SIGINT, as Ctrl-C does); the Lease is released wherever
the API server still answers, and statuses the forge did not take wait in the cluster for the
next leader, which posts them."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from kubernetes import client

from testbed.controlplane import ControlPlane, free_port
from testbed.gitea import Gitea
from testbed.gitserver import SmartHttpServer
from testbed.simulator import Delays, Simulator
from tests.reliability.apiproxy import ApiFaultProxy, Rule
from tests.reliability.faultproxy import FaultProxy

from .gitops import GitOpsRepo
from .test_agent import agent_config_file, annotations, lease_holder, start_agent, wait_for

GRACE = 4.0  # the configured shutdownGracePeriod (the default, 10 s, in one test)
# Past the grace period: the interpreter's own exit (the agent's work is done by then).
EXIT_SLACK = 1.5
ALL = {"embedder", "ranker", "summarizer"}


class Agent:
    """One `gitsync run` process, its log, and how long it took to stop."""

    def __init__(
        self,
        tmp_path: Path,
        repo: GitOpsRepo,
        kubeconfig: Path,
        name: str = "solo",
        grace: float | None = GRACE,  # None: the default
        **extra: Any,
    ) -> None:
        self.port = free_port()
        self.log = tmp_path / f"{name}.log"
        self.signalled = 0.0  # the wall clock at the last signal (see timeline)
        if grace is not None:
            extra["shutdownGracePeriod"] = f"{grace:g}s"
        config = agent_config_file(repo, tmp_path, name, self.port, repo.namespace, **extra)
        self.process = start_agent(config, kubeconfig, name, self.log)

    def said(self, text: str) -> bool:
        return text in self.log.read_text()

    def children(self) -> set[int]:
        """The pids of this process's children (git, while it runs)."""
        found: set[int] = set()
        for path in Path(f"/proc/{self.process.pid}/task").glob("*/children"):
            try:
                found |= {int(pid) for pid in path.read_text().split()}
            except OSError:
                continue
        return found

    def stop(self, signum: int = signal.SIGTERM, grace: float = GRACE) -> float:
        """Signals the agent; asserts it exits 0 within the grace period; the seconds taken."""
        began = time.monotonic()
        self.signalled = time.time()
        self.process.send_signal(signum)
        try:
            code = self.process.wait(grace + EXIT_SLACK)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(
                f"still running {grace + EXIT_SLACK:.1f} s after {signal.Signals(signum).name}"
                f":\n{self.log.read_text()[-3000:]}"
            ) from exc
        took = time.monotonic() - began
        assert code == 0, self.log.read_text()[-3000:]
        assert self.said("agent stopped in"), self.log.read_text()[-3000:]
        return took

    def stopped_after(self) -> float:
        """Seconds from the last signal to the log's "agent stopped in" line."""
        return self._marks().get("agent stopped in", float("inf"))

    def _marks(self) -> dict[str, float]:
        marks: dict[str, float] = {}
        for line in self.log.read_text().splitlines():
            for mark in ("agent stopping", "agent stopped in"):
                if mark in line:
                    stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
                    marks[mark] = stamp.timestamp() - self.signalled
        return marks

    def timeline(self, took: float) -> str:
        """Where the seconds went: signal → "agent stopping" → "agent stopped in" → exit
        (the log's timestamps, against the wall clock at the signal)."""
        marks = self._marks()
        return (
            f"signal to 'agent stopping' {marks.get('agent stopping', -1):.2f} s, to 'agent "
            f"stopped in' {marks.get('agent stopped in', -1):.2f} s, to exit {took:.2f} s"
        )

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def agents() -> Iterator[list[Agent]]:
    started: list[Agent] = []
    yield started
    for agent in started:
        agent.kill()


def rolled_out(api: client.ApiClient, repo: GitOpsRepo) -> bool:
    found = annotations(api, repo.namespace)
    return set(found) == ALL and all(
        a.get("gitsync.ray.io/revision") == repo.revisions[-1] for a in found.values()
    )


def phase(api: client.ApiClient, namespace: str) -> str:
    configmap = client.CoreV1Api(api).read_namespaced_config_map(
        "gitsync-rollout-staging", namespace
    )
    return str((configmap.data or {}).get("phase", ""))


def scale(repo: GitOpsRepo, replicas: int) -> str:
    return repo.commit(
        lambda root: repo.edit("ranker.yaml", "num_replicas: 1", f"num_replicas: {replicas}"),
        "scale the ranker",
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_idle_it_stops_at_once_and_releases_the_lease(
    api: client.ApiClient,
    control_plane: ControlPlane,
    sim: Simulator,
    namespace: str,
    tmp_path: Path,
    agents: list[Agent],
    signum: int,
) -> None:
    repo = GitOpsRepo(tmp_path / "gitops", namespace)
    agent = Agent(tmp_path, repo, control_plane.kubeconfig)
    agents.append(agent)
    wait_for(lambda: rolled_out(api, repo), timeout=90, what="the rollout")
    wait_for(lambda: phase(api, namespace) == "succeeded", timeout=30, what="succeeded")
    assert lease_holder(api, namespace) == "solo"
    took = agent.stop(signum)
    # Idle, the agent waits on nothing: its own shutdown is over within a second or two (the
    # Lease's release is one API request) and the process is gone soon after. The bounds
    # leave room for a CI machine running three other suites and real Ray heads beside it
    # (the exit once took 2.2 s there); a wait on any timeout or on the grace period (4 s)
    # still fails them.
    assert agent.stopped_after() < 2.0, f"idle: {agent.timeline(took)}"
    assert took < 3.0, f"idle: {agent.timeline(took)}"
    assert lease_holder(api, namespace) == ""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_with_the_api_server_unreachable_it_stops_within_the_default_grace_period(
    api: client.ApiClient,
    control_plane: ControlPlane,
    sim: Simulator,
    namespace: str,
    tmp_path: Path,
    agents: list[Agent],
    signum: int,
) -> None:
    """The reported hang: a pass failing on a refused connection retries through the
    scheduler's job store, which a waiting scheduler shutdown held (a deadlock)."""
    repo = GitOpsRepo(tmp_path / "gitops", namespace)
    proxy = FaultProxy(urlsplit(control_plane.api_url).port or 443)
    try:
        agent = Agent(
            tmp_path,
            repo,
            through(control_plane, proxy, tmp_path),
            grace=None,
            # Leading regardless of the Lease, as one replica without election: it retries
            # the pass for as long as the API server is away.
            leaderElection={"enabled": False},
        )
        agents.append(agent)
        wait_for(lambda: rolled_out(api, repo), timeout=90, what="the first rollout")
        wait_for(lambda: phase(api, namespace) == "succeeded", timeout=30, what="succeeded")
        proxy.set("down")  # nothing listens there now: every connection is refused
        scale(repo, 2)
        wait_for(lambda: agent.said("retrying the pass in"), timeout=60, what="a failed pass")
        retries = agent.log.read_text().count("retrying the pass in")
        wait_for(
            lambda: agent.log.read_text().count("retrying the pass in") > retries,
            timeout=30,
            what="the pass to be retried",
        )
        time.sleep(0.3)  # inside the retried pass, between its attempts to reach the API
        agent.stop(signum, grace=10.0)
    finally:
        proxy.close()


def through(plane: ControlPlane, proxy: FaultProxy, tmp_path: Path) -> Path:
    """The test bed's kubeconfig with the API server reached through ``proxy``."""
    document = yaml.safe_load(plane.kubeconfig.read_text())
    document["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
    path = tmp_path / "kubeconfig-proxied"
    path.write_text(yaml.safe_dump(document))
    path.chmod(0o600)
    return path


def test_mid_apply_with_the_api_server_holding_the_request(
    api: client.ApiClient,
    control_plane: ControlPlane,
    sim: Simulator,
    namespace: str,
    tmp_path: Path,
    agents: list[Agent],
) -> None:
    """The apply of the ranker is never answered (the client's read timeout is 20 s, longer
    than the grace period): the pass is abandoned; its rollout stays in progress."""
    repo = GitOpsRepo(tmp_path / "gitops", namespace)
    proxy = ApiFaultProxy(control_plane, tmp_path)
    try:
        agent = Agent(tmp_path, repo, proxy.kubeconfig)
        agents.append(agent)
        wait_for(lambda: rolled_out(api, repo), timeout=90, what="the first rollout")
        wait_for(lambda: phase(api, namespace) == "succeeded", timeout=30, what="succeeded")
        held = proxy.add(Rule(r"PATCH .*/rayservices/ranker\?(?!.*dryRun)", "timeout", times=None))
        scale(repo, 2)
        wait_for(lambda: held.hits, timeout=60, what="the held apply")
        agent.stop()
        assert agent.said("abandoned")
        assert lease_holder(api, namespace) == ""
        assert phase(api, namespace) == "in-progress"
    finally:
        proxy.close()


def test_mid_health_wait_the_rollout_stays_in_progress_for_the_next_leader(
    api: client.ApiClient,
    control_plane: ControlPlane,
    sim: Simulator,
    namespace: str,
    tmp_path: Path,
    agents: list[Agent],
) -> None:
    repo = GitOpsRepo(tmp_path / "gitops", namespace)
    agent = Agent(tmp_path, repo, control_plane.kubeconfig)
    agents.append(agent)
    wait_for(lambda: rolled_out(api, repo), timeout=90, what="the first rollout")
    wait_for(lambda: phase(api, namespace) == "succeeded", timeout=30, what="succeeded")
    sim.retime(Delays(cluster_start=0.3, app_deploy=120.0, tick=0.05, requeue=1.0))
    sha = scale(repo, 2)
    wait_for(
        lambda: annotations(api, namespace)["ranker"].get("gitsync.ray.io/revision") == sha,
        timeout=60,
        what="the apply",
    )
    time.sleep(0.5)  # waiting for the ranker's Serve update to be Healthy
    agent.stop()
    assert lease_holder(api, namespace) == ""
    state = client.CoreV1Api(api).read_namespaced_config_map("gitsync-rollout-staging", namespace)
    assert state.data["phase"] == "in-progress"
    assert state.data["revision"] == sha


def test_with_the_git_server_hung_it_stops_and_kills_its_git(
    api: client.ApiClient,
    control_plane: ControlPlane,
    sim: Simulator,
    namespace: str,
    tmp_path: Path,
    agents: list[Agent],
) -> None:
    """The Git server accepts the connection and never answers: ``git ls-remote`` would wait
    for the repository timeout (60 s). The process exits in time and its git is killed."""
    repo = GitOpsRepo(tmp_path / "gitops", namespace)
    with SmartHttpServer(tmp_path / "gitops", tmp_path / "http-log") as server:
        proxy = FaultProxy(server.port)
        try:
            url = f"http://127.0.0.1:{proxy.port}/repo.git"
            agent = Agent(
                tmp_path,
                repo,
                control_plane.kubeconfig,
                repository={"url": url, "branch": "main", "timeout": "60s"},
            )
            agents.append(agent)
            wait_for(lambda: rolled_out(api, repo), timeout=90, what="the first rollout")
            proxy.set("hang")
            first_seen: dict[int, float] = {}

            def git_hung() -> bool:
                # A git child alive for a second is the one the hung server holds (a quick
                # local git command of the same pass would be gone by then).
                now = time.monotonic()
                alive = set(agent.children())
                for pid in alive:
                    first_seen.setdefault(pid, now)
                return any(now - first_seen[pid] >= 1.0 for pid in alive)

            wait_for(git_hung, timeout=30, what="a git process hung on the server")
            git_children = set(first_seen)
            agent.stop()
            assert agent.said("abandoned")
            assert lease_holder(api, namespace) == ""
            for pid in git_children:
                assert not Path(f"/proc/{pid}").exists() or "Z" in _state(pid), pid
        finally:
            proxy.close()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def test_with_the_forge_hung_the_statuses_wait_in_the_cluster_for_the_next_leader(
    api: client.ApiClient,
    control_plane: ControlPlane,
    sim: Simulator,
    namespace: str,
    gitea: Gitea,
    tmp_path: Path,
    agents: list[Agent],
) -> None:
    """Gitea behind a proxy that accepts and never answers: the statuses of the rollout
    cannot be posted. On SIGTERM they are stored in the cluster (ConfigMap
    gitsync-unposted-statuses); the next agent, with the forge back, posts them."""
    url = gitea.create_repo(f"shutdown-{namespace}")
    repo = GitOpsRepo(tmp_path / "gitops", namespace, origin=url, push_args=gitea.git_auth_config())
    owner_repo = url.removeprefix(gitea.url + "/").removesuffix(".git")
    token = tmp_path / "gitea-token"
    token.write_text(gitea.token)
    proxy = FaultProxy(urlsplit(gitea.url).port or 80)
    try:
        proxy.set("hang")
        status = {
            "provider": "gitea",
            "url": f"http://127.0.0.1:{proxy.port}",
            "repository": owner_repo,
            "tokenFile": str(token),
        }
        agent = Agent(tmp_path, repo, control_plane.kubeconfig, status=status)
        agents.append(agent)
        wait_for(lambda: rolled_out(api, repo), timeout=90, what="the rollout")
        wait_for(lambda: phase(api, namespace) == "succeeded", timeout=30, what="succeeded")
        agent.stop()
        assert lease_holder(api, namespace) == ""
        stored = client.CoreV1Api(api).read_namespaced_config_map(
            "gitsync-unposted-statuses", namespace
        )
        assert repo.revisions[-1] in stored.data["statuses"]
        assert '"state": "success"' in stored.data["statuses"]

        following = Agent(
            tmp_path,
            repo,
            control_plane.kubeconfig,
            name="next",
            status={**status, "url": gitea.url},
        )
        agents.append(following)

        def success() -> bool:
            combined = gitea.api("GET", f"/repos/{owner_repo}/commits/{repo.revisions[-1]}/status")
            return any(
                s["context"] == "gitsync/staging" and s["status"] == "success"
                for s in combined.get("statuses") or ()
            )

        wait_for(success, timeout=60, what="the stored success status on the commit")
        assert following.said("an earlier agent could not")
        with pytest.raises(client.ApiException) as gone:
            client.CoreV1Api(api).read_namespaced_config_map("gitsync-unposted-statuses", namespace)
        assert gone.value.status == 404
        following.stop()
    finally:
        proxy.close()


def test_with_a_webhook_half_received_it_stops_in_time(
    api: client.ApiClient,
    control_plane: ControlPlane,
    sim: Simulator,
    namespace: str,
    tmp_path: Path,
    agents: list[Agent],
) -> None:
    """A sender that sent the headers and part of the body, and stalls: its connection holds
    a server thread (for up to 30 s) and must not hold the shutdown."""
    secret = tmp_path / "webhook-secret"
    secret.write_text("whsec-0123456789abcdef")
    repo = GitOpsRepo(tmp_path / "gitops", namespace)
    agent = Agent(tmp_path, repo, control_plane.kubeconfig, webhooks={"secretFile": str(secret)})
    agents.append(agent)
    wait_for(lambda: rolled_out(api, repo), timeout=90, what="the rollout")
    stalled = []
    for _ in range(3):
        sender = socket.create_connection(("127.0.0.1", agent.port), timeout=5)
        sender.sendall(
            b"POST /webhooks HTTP/1.1\r\nHost: gitsync\r\nContent-Type: application/json\r\n"
            b'X-GitHub-Event: push\r\nContent-Length: 4096\r\n\r\n{"ref": "refs/heads/ma'
        )
        stalled.append(sender)
    try:
        time.sleep(0.5)
        agent.stop()
        assert lease_holder(api, namespace) == ""
    finally:
        for sender in stalled:
            sender.close()
