"""Poll cost with nothing new, and webhook → first apply latency, against a real Gitea.

The agent (in this process, with its HTTP server) follows a Gitea repository through a
loopback TCP proxy that counts every byte of git traffic; commit statuses go to Gitea
directly, so they are not counted. Measured:

- **poll with nothing new**: ``Agent.poll()`` when the branch has not moved: wall time, git
  processes started (from git's own trace2 events, ``GIT_TRACE2_EVENT``), whether any of them
  fetched, and bytes through the proxy;
- **webhook → first apply**: a commit pushed to Gitea, Gitea's push webhook to the agent,
  and the first apply request for the changed service. Two figures per run: from the webhook
  arriving at the agent, and from ``git push`` returning (this one includes Gitea's own
  delivery delay).

    .venv/bin/python -m bench.webhook_poll [RUNS]
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from bench.workload import Repo, service
from gitsync.agent import Agent
from gitsync.config import LeaderElection, StatusConfig, Webhooks, load_agent_config
from gitsync.kube.namespaces import ensure_namespace
from gitsync.kube.rayservices import RayServicesClient
from gitsync.metrics import Metrics
from gitsync.report.factory import build_reporter
from gitsync.server import AgentServer, Hooks
from gitsync.source.config import TokenAuth
from testbed.binaries import ensure_binaries
from testbed.controlplane import ControlPlane, free_port
from testbed.gitea import Gitea
from testbed.simulator import Delays, Simulator

SECRET = "bench-webhook-secret"  # noqa: S105 - a throwaway secret for a loopback Gitea
NAMESPACE = "bench-webhook"
SERVICES = 10


class CountingProxy:
    """A loopback TCP proxy to ``port`` that counts the bytes sent back to its clients."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.downstream = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True, name="bench-proxy").start()

    def _accept(self) -> None:
        while True:
            try:
                near, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(near,), daemon=True).start()

    def _relay(self, near: socket.socket) -> None:
        with near, socket.create_connection(("127.0.0.1", self.target)) as far:
            peers = {near: far, far: near}
            open_ends = 2
            while open_ends:
                readable, _, _ = select.select(list(peers), [], [], 30)
                if not readable:
                    return
                for source in readable:
                    try:
                        chunk = source.recv(65536)
                    except OSError:
                        return
                    if not chunk:
                        with contextlib.suppress(OSError):
                            peers[source].shutdown(socket.SHUT_WR)
                        del peers[source]
                        open_ends -= 1
                        continue
                    peers[source].sendall(chunk)
                    if source is far:
                        with self._lock:
                            self.downstream += len(chunk)

    def close(self) -> None:
        self._listener.close()


class TimedServices(RayServicesClient):
    """The real RayServices, stamping each (non-dry-run) apply request."""

    def __init__(self, api: client.ApiClient) -> None:
        super().__init__(api)
        self.applied: list[float] = []

    def apply(
        self, obj: dict[str, Any], *, dry_run: bool = False, force: bool = False
    ) -> dict[str, Any]:
        if not dry_run:
            self.applied.append(time.monotonic())
        return super().apply(obj, dry_run=dry_run, force=force)


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def git_processes(trace: Path) -> tuple[int, list[str]]:
    """git processes started, and their commands, from a trace2 event file."""
    commands = []
    if trace.exists():
        for line in trace.read_text().splitlines():
            event = json.loads(line)
            if event.get("event") == "start":
                argv = event.get("argv") or ["?"]
                words = [a for a in argv[1:] if not a.startswith("-")][:1]
                commands.append(" ".join([Path(argv[0]).name, *words]))
        trace.unlink()
    return len(commands), commands


def measure(
    plane: ControlPlane, api: client.ApiClient, gitea: Gitea, root: Path, runs: int
) -> dict[str, Any]:
    ensure_namespace(api, f"{NAMESPACE}-0")
    ensure_namespace(api, "gitsync-system")
    name = f"bench-{uuid.uuid4().hex[:8]}"
    gitea.create_repo(name)
    proxy = CountingProxy(gitea.port)
    url = f"http://127.0.0.1:{proxy.port}/{gitea.admin}/{name}.git"
    repo = Repo(
        root / "repo", SERVICES, namespaces=1, origin=gitea.clone_url(name),
        push_args=gitea.git_auth_config(), namespace_prefix=NAMESPACE,
    )  # fmt: skip
    token = root / "gitea-token"
    token.write_text(gitea.token)
    os.environ["BENCH_WEBHOOK_SECRET"] = SECRET
    text = yaml.safe_dump(
        {
            "repository": {"url": url},  # a public repository: no credentials
            "cacheDir": str(root / "cache"),
            "rollout": {"healthyReads": 1, "healthySeconds": "1ms", "pollInterval": "200ms",
                        "stateNamespace": "gitsync-system"},
        }
    )  # fmt: skip
    loaded, problems = load_agent_config(text)
    assert loaded is not None, problems
    config = replace(
        loaded,
        poll_seconds=3600.0,  # only webhooks (and the start) trigger passes
        status=StatusConfig("gitea", url=gitea.url, token=TokenAuth(token_file=token)),
        leader_election=LeaderElection(enabled=False),
        webhooks=Webhooks(TokenAuth(token_env="BENCH_WEBHOOK_SECRET")),  # noqa: S106 - a name
    )
    metrics = Metrics()
    reporter = build_reporter(config, metrics)
    agent = Agent(config, api, "bench-agent", metrics=metrics, reporter=reporter)
    services = TimedServices(api)
    agent.services = services
    hooks = Hooks(SECRET.encode, url, "main", agent.trigger, lambda: None,
                  lambda: True, agent.ready.is_set)  # fmt: skip
    server = AgentServer("127.0.0.1", free_port(), hooks, metrics).start()
    gitea.add_webhook(f"{gitea.admin}/{name}", f"http://127.0.0.1:{server.port}/webhooks", SECRET)
    agent.start()
    try:
        wait_for(lambda: agent.passes >= 1 and not agent._lock.locked(), 600, "the first pass")
        assert agent.last_ok, "the first pass failed"
        polls = poll_cost(agent, proxy, root, runs * 4)
        latencies = webhook_latency(agent, server, services, repo, runs)
    finally:
        agent.shutdown(timeout=10)
        server.stop()
        reporter.close(timeout=10)
        proxy.close()
    return {"poll": polls, "webhook": latencies}


def poll_cost(agent: Agent, proxy: CountingProxy, root: Path, runs: int) -> dict[str, Any]:
    trace = root / "trace2.json"
    os.environ["GIT_TRACE2_EVENT"] = str(trace)
    walls, processes, volumes = [], [], []
    commands: list[str] = []
    try:
        for _ in range(runs):
            before_bytes, passes = proxy.downstream, agent.passes
            began = time.monotonic()
            agent.poll()
            walls.append(time.monotonic() - began)
            assert agent.passes == passes, "a poll with nothing new ran a pass"
            count, commands = git_processes(trace)
            processes.append(count)
            volumes.append(proxy.downstream - before_bytes)
    finally:
        del os.environ["GIT_TRACE2_EVENT"]
    return {
        "wall": statistics.median(walls), "min": min(walls), "max": max(walls),
        "git_processes": statistics.median(processes), "commands": commands,
        "fetches": sum("fetch" in c for c in commands),
        "bytes": statistics.median(volumes), "runs": runs,
    }  # fmt: skip


def webhook_latency(
    agent: Agent, server: AgentServer, services: TimedServices, repo: Repo, runs: int
) -> dict[str, Any]:
    from_webhook, from_push = [], []
    for run in range(runs):
        wait_for(lambda: not agent._lock.locked(), 600, "the previous pass")
        applied, received = len(services.applied), len(server.received)
        only = run % SERVICES
        path = repo.work / "environments" / "env0" / f"svc{only}.yaml"
        obj = service(f"svc{only}", f"{NAMESPACE}-0", only, replicas=3 + run)
        path.write_text(yaml.safe_dump(obj, sort_keys=False))
        repo.commit(f"scale svc{only}")
        pushed = time.monotonic()
        wait_for(lambda n=received: len(server.received) > n, 60, "Gitea's webhook")
        wait_for(lambda n=applied: len(services.applied) > n, 60, "the apply")
        first = services.applied[applied]
        from_webhook.append(first - server.received[received])
        from_push.append(first - pushed)
    return {
        "from_webhook": statistics.median(from_webhook),
        "from_webhook_max": max(from_webhook),
        "from_push": statistics.median(from_push),
        "from_push_max": max(from_push),
        "runs": runs,
    }


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    binaries = ensure_binaries(quiet=True)
    with tempfile.TemporaryDirectory(prefix="gitsync-bench-") as tmp:
        root = Path(tmp)
        with (
            ControlPlane(binaries=binaries, workdir=root / "plane", verbose=False) as plane,
            plane.api_client() as api,
            plane.api_client() as sim_api,
            Simulator(sim_api, Delays(0.0, 0.0, 0.05, requeue=0.0)),
            Gitea(binaries, root / "gitea") as gitea,
        ):
            result = measure(plane, api, gitea, root, runs)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
