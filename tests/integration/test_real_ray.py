"""gitsync's rollouts against real Ray Serve behind the real KubeRay operator, with live traffic.

The test bed's real-Ray mode (testbed/rayhost.py): every head pod the operator creates gets a
real ``ray start --head`` from the test bed's Ray venv, the operator's dashboard and health calls
reach those heads, and a kube-proxy stand-in sends a load generator's requests to whatever the
``<service>-serve-svc`` Endpoints say. Each scenario records every answer and asserts that none
failed, that answers move from the old cluster to the new one only at promotion, and that
gitsync reported Healthy only after that switch. Its figures go to
``tests/artifacts/zero-downtime/<scenario>.json``.

When Ray cannot start, these tests fail: the head pod never turns Ready and the sync times out
with the head's log in the message.
"""

from __future__ import annotations

import contextlib
import json
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from gitsync.cli import main
from gitsync.kube.rayservices import RayServicesClient
from gitsync.kube.state import StateStore
from gitsync.model import Outcome
from gitsync.progress import Lines
from gitsync.sync import PassResult, sync_once
from testbed.binaries import Binaries
from testbed.controlplane import ControlPlane, free_port
from testbed.gitea import Gitea
from testbed.operator import FakeEndpoints, FakeKubelet, Operator, ServeProxy, ServeState
from testbed.rayhost import RayHosts, ServiceProxy, serve_status
from testbed.simulator import Simulator

from .gitops import GitOpsRepo
from .kube import GROUP, VERSION, get
from .test_agent import agent_config_file, scrape, start_agent

pytestmark = pytest.mark.ray  # real Ray heads: `make test` runs this module beside the others

# Up to two Ray heads (~1 GiB each with Serve). What the module asserts (no failed request,
# traffic moving once at promotion, gitsync's verdict after it) must hold on a busy machine too:
# `make test` runs it in its `pytest ray` phase, beside the parallel phase (one process, one
# real-Ray module after another). Its latency figures mean something only on a quiet machine:
# `make zero-downtime-report` runs it alone.

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "zero-downtime"

SERVICE = """\
apiVersion: ray.io/v1
kind: RayService
metadata:
  name: answer
spec:
  upgradeStrategy:
    type: NewCluster
  rayClusterDeletionDelaySeconds: 3
  serveConfigV2: |
    applications:
      - name: answer
        route_prefix: /answer
        import_path: testbed.serve_apps.answer:app
        deployments:
          - name: Answer
            num_replicas: 1
            user_config:
              answer: one
  rayClusterConfig:
    rayVersion: "2.60.0"
    headGroupSpec:
      rayStartParams:
        dashboard-host: "0.0.0.0"
      template:
        spec:
          containers:
            - name: ray-head
              image: rayproject/ray:2.60.0-py311
              ports:
                - {containerPort: 6379, name: gcs-server}
                - {containerPort: 8265, name: dashboard}
                - {containerPort: 10001, name: client}
                - {containerPort: 8000, name: serve}
    workerGroupSpecs:
      - groupName: cpu
        replicas: 1
        minReplicas: 1
        maxReplicas: 2
        rayStartParams: {}
        template:
          spec:
            containers:
              - name: ray-worker
                image: rayproject/ray:2.60.0-py311
"""


@dataclass
class RealRay:
    namespaces: list[str]
    hosts: RayHosts
    services: ServiceProxy
    state: ServeState
    operator: Operator


@pytest.fixture(scope="module")
def realray(
    api: client.ApiClient,
    control_plane: ControlPlane,
    binaries: Binaries,
    simulator: Simulator,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RealRay]:
    namespaces = [f"rr-{uuid.uuid4().hex[:8]}-{i}" for i in range(6)]  # one per test
    core = client.CoreV1Api(api)
    for name in namespaces:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    simulator.exclude_namespaces |= set(namespaces)  # the operator and real Ray own these
    hosts = RayHosts(binaries.ray_python, tmp_path_factory.mktemp("ray-heads"))
    state = ServeState()
    proxy = ServeProxy(state, hosts).start()
    kubelet = FakeKubelet(api, namespaces, hosts=hosts).start()
    endpoints = FakeEndpoints(api, namespaces).start()
    services = ServiceProxy(api, hosts, namespaces).start()
    operator = Operator(
        binaries.kuberay_operator,
        control_plane.kubeconfig,
        namespaces,
        proxy.port,
        tmp_path_factory.mktemp("kuberay-operator"),
    ).start()
    try:
        yield RealRay(list(namespaces), hosts, services, state, operator)
    finally:
        operator.stop()
        kubelet.stop()
        endpoints.stop()
        services.stop()
        hosts.stop_all()
        proxy.stop()
        assert not hosts.leftovers(), f"Ray processes left behind: {hosts.leftovers()}"
        assert not kubelet.errors, kubelet.errors
        assert not endpoints.errors, endpoints.errors


@dataclass
class Answer:
    at: float
    seconds: float
    status: int
    answer: str = ""
    cluster: str = ""
    error: str = ""
    wall: float = field(default_factory=time.time)  # when it came back, for Gitea's clock


@dataclass
class Load:
    """Requests through the kube-proxy stand-in, one after another, every answer recorded."""

    url: str
    pause: float = 0.05
    answers: list[Answer] = field(default_factory=list)
    stop_event: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> Load:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        assert self.thread is not None
        self.thread.join(60)

    def _run(self) -> None:
        while not self.stop_event.is_set():
            start = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=30) as response:  # noqa: S310
                    body: dict[str, Any] = json.load(response)
                    self.answers.append(
                        Answer(
                            start,
                            time.monotonic() - start,
                            response.status,
                            str(body.get("answer")),
                            str(body.get("cluster")),
                        )
                    )
            except urllib.error.HTTPError as exc:
                self.answers.append(
                    Answer(start, time.monotonic() - start, exc.code, error=exc.read().decode())
                )
            except OSError as exc:
                self.answers.append(Answer(start, time.monotonic() - start, 0, error=str(exc)))
            self.stop_event.wait(self.pause)

    @property
    def failed(self) -> list[Answer]:
        return [a for a in self.answers if a.status != 200]


class Watch:
    """The RayService's active cluster, read every 0.2 s: when the operator promoted."""

    def __init__(self, api: client.ApiClient, namespace: str, name: str) -> None:
        self.api, self.namespace, self.name = api, namespace, name
        self.changes: list[tuple[float, str]] = []
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop_event.wait(0.2):
            active = active_cluster(self.api, self.namespace, self.name)
            if active and (not self.changes or self.changes[-1][1] != active):
                self.changes.append((time.monotonic(), active))

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(10)


def active_cluster(api: client.ApiClient, namespace: str, name: str) -> str:
    try:
        service = get(api, namespace, name)
    except client.ApiException:
        return ""
    return str(service.get("status", {}).get("activeServiceStatus", {}).get("rayClusterName", ""))


def only_answer(repo: GitOpsRepo) -> None:
    for path in repo.path("x").parent.glob("*.yaml"):
        path.unlink()
    repo.path("answer.yaml").write_text(SERVICE)


def clean(api: client.ApiClient, realray: RealRay, namespace: str) -> None:
    """Deletes the namespace's RayServices and RayClusters (as the garbage collector would
    cascade) and waits for their heads to stop."""
    custom = client.CustomObjectsApi(api)
    for plural in ("rayservices", "rayclusters"):
        for item in custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)[
            "items"
        ]:
            custom.delete_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, item["metadata"]["name"]
            )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(
        key[0] == namespace for key in list(realray.hosts.heads)
    ):
        time.sleep(0.5)
    assert not [key for key in realray.hosts.heads if key[0] == namespace]


@pytest.fixture
def repo(api: client.ApiClient, realray: RealRay, tmp_path: Path) -> Iterator[GitOpsRepo]:
    """The test's namespace with one RayService, ``answer``; cleaned up afterwards."""
    repo = GitOpsRepo(tmp_path / "gitops", realray.namespaces.pop())
    repo.commit(lambda root: only_answer(repo), "one service on real Ray")
    yield repo
    clean(api, realray, repo.namespace)


def sync(
    api: client.ApiClient,
    realray: RealRay,
    repo: GitOpsRepo,
    tmp_path: Path,
    lines: list[tuple[float, str]],
    **rollout: object,
) -> PassResult:
    """One ``sync --once`` pass, stopped early when a Ray head could not start or died (the
    test then fails at once with the head's log, not after the health timeout)."""
    config = repo.agent_config(
        tmp_path / "cache", health_timeout=300.0, poll_interval=0.3, healthy_seconds=3.0, **rollout
    )
    stop, done = threading.Event(), threading.Event()

    def watch() -> None:
        while not done.wait(0.5):
            if realray.hosts.errors:
                stop.set()
                return

    threading.Thread(target=watch, daemon=True).start()
    try:
        result = sync_once(
            config,
            RayServicesClient(api),
            StateStore(api, repo.namespace),
            observer=Lines(lambda line: lines.append((time.monotonic(), line))),
            stop=stop,
        )
    finally:
        done.set()
    assert not realray.hosts.errors, explain(realray, lines)
    return result


def append_worker_group(repo: GitOpsRepo) -> None:
    path = repo.path("answer.yaml")
    path.write_text(
        path.read_text()
        + """\
      - groupName: extra
        replicas: 1
        minReplicas: 1
        maxReplicas: 1
        rayStartParams: {}
        template:
          spec:
            containers:
              - name: ray-worker
                image: rayproject/ray:2.60.0-py311
"""
    )


def wait_for_endpoints(api: client.ApiClient, realray: RealRay, namespace: str) -> None:
    """Healthy in gitsync's eyes means KubeRay's serve Service has the head as an endpoint."""
    key = (namespace, "answer-serve-svc")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not realray.services.addresses.get(key):
        time.sleep(0.2)
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace).items
    assert realray.services.addresses.get(key), (
        [(p.metadata.name, p.metadata.labels, p.status.pod_ip) for p in pods],
        realray.state.requests[-10:],
        realray.hosts.ips,
    )


def healthy_at(lines: list[tuple[float, str]], since: float) -> float:
    return next(t for t, line in lines if t >= since and " Healthy:" in line)


def figures(load: Load, since: float, until: float) -> dict[str, Any]:
    window = [a for a in load.answers if since <= a.at <= until]
    latencies = sorted(a.seconds * 1000 for a in window if a.status == 200)
    return {
        "requests": len(window),
        "failed": len([a for a in window if a.status != 200]),
        "p50_ms": round(statistics.median(latencies), 1) if latencies else None,
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1], 1) if latencies else None,
    }


def save(scenario: str, data: dict[str, Any]) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"{scenario}.json").write_text(json.dumps(data, indent=2) + "\n")


def explain(realray: RealRay, lines: list[tuple[float, str]]) -> str:
    heads = "\n".join(
        f"--- {h.pod} ready={h.ready_at is not None}\n{h.log()}"
        for h in realray.hosts.heads.values()
    )
    return (
        "\n".join(line for _, line in lines)
        + f"\nhost errors: {realray.hosts.errors}\n{heads}\n"
        + realray.operator.log()[-3000:]
    )


def test_serve_updates_cluster_swap_and_in_place_drop_no_request(
    api: client.ApiClient, realray: RealRay, repo: GitOpsRepo, tmp_path: Path
) -> None:
    lines: list[tuple[float, str]] = []
    created = time.monotonic()
    result = sync(api, realray, repo, tmp_path, lines)
    assert result.ok, explain(realray, lines)
    create_seconds = healthy_at(lines, created) - created
    first = active_cluster(api, repo.namespace, "answer")
    assert first, explain(realray, lines)
    wait_for_endpoints(api, realray, repo.namespace)
    load = Load(realray.services.url(repo.namespace, "answer") + "/answer").start()
    watch = Watch(api, repo.namespace, "answer")
    try:
        time.sleep(2)
        # A serve update: user_config reaches the running replicas, no new cluster.
        update_commit = time.monotonic()
        repo.commit(lambda root: repo.edit("answer.yaml", "answer: one", "answer: two"), "two")
        result = sync(api, realray, repo, tmp_path, lines)
        assert result.ok, explain(realray, lines)
        update_healthy = healthy_at(lines, update_commit)
        time.sleep(2)
        # A cluster swap: a head rayStartParams change makes KubeRay build a new cluster.
        swap_commit = time.monotonic()
        repo.commit(
            lambda root: repo.edit(
                "answer.yaml",
                'dashboard-host: "0.0.0.0"',
                'dashboard-host: "0.0.0.0"\n        num-gpus: "0"',
            ),
            "swap",
        )
        result = sync(api, realray, repo, tmp_path, lines)
        assert result.ok, explain(realray, lines)
        swap_healthy = healthy_at(lines, swap_commit)
        second = active_cluster(api, repo.namespace, "answer")
        assert second != first
        # The old cluster goes after rayClusterDeletionDelaySeconds; its head with it.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(
            h.cluster == first for h in realray.hosts.heads.values()
        ):
            time.sleep(0.5)
        # Replicas: a serve update to the new cluster, Serve adds a replica.
        replicas_commit = time.monotonic()
        repo.commit(
            lambda root: repo.edit("answer.yaml", "num_replicas: 1", "num_replicas: 2"), "two"
        )
        assert sync(api, realray, repo, tmp_path, lines).ok, explain(realray, lines)
        replicas_healthy = healthy_at(lines, replicas_commit)
        head = realray.hosts.by_cluster(repo.namespace, second)
        assert head is not None
        deployment = serve_status(head)["applications"]["answer"]["deployments"]["Answer"]
        assert len(deployment["replicas"]) == 2, deployment
        # An appended worker group: KubeRay updates the cluster in place, no swap.
        in_place_commit = time.monotonic()
        repo.commit(lambda root: append_worker_group(repo), "another worker group")
        assert sync(api, realray, repo, tmp_path, lines).ok, explain(realray, lines)
        in_place_healthy = healthy_at(lines, in_place_commit)
        assert active_cluster(api, repo.namespace, "answer") == second
        time.sleep(1)
    finally:
        load.stop()
        watch.stop()
    end = time.monotonic()
    pods = client.CoreV1Api(api).list_namespaced_pod(repo.namespace).items
    assert any(
        (p.metadata.labels or {}).get("ray.io/group") == "extra"
        and (p.metadata.labels or {}).get("ray.io/cluster") == second
        for p in pods
    ), [p.metadata.labels for p in pods]

    promoted = next((t for t, name in watch.changes if name == second), end)
    timeline = {
        "update_commit": update_commit,
        "update_healthy": update_healthy,
        "swap_commit": swap_commit,
        "promoted": promoted,
        "swap_healthy": swap_healthy,
    }
    assert not load.failed, "\n".join(
        [f"{a.at - swap_commit:.2f} {a.status} {a.error}" for a in load.failed[:30]]
        + [f"{k} {v - swap_commit:.2f}" for k, v in timeline.items()]
        + [f"{a.at - swap_commit:.2f} {a.answer} {a.cluster}" for a in load.answers[::20]]
    )
    answers = load.answers
    assert len(answers) > 50
    # Serve update: "one" then "two" on the first cluster, never back.
    on_first = [a for a in answers if a.cluster == first]
    words = [a.answer for a in on_first]
    assert words[0] == "one"
    assert "two" in words
    assert "one" not in words[words.index("two") :]
    first_two = next(a.at for a in on_first if a.answer == "two")
    assert first_two <= update_healthy + 0.5
    # Swap: the first cluster answers until the switch, the second after it, never back.
    clusters = [a.cluster for a in answers]
    assert clusters[-1] == second
    switch = clusters.index(second)
    assert set(clusters[:switch]) == {first}
    assert set(clusters[switch:]) == {second}
    switched_at = answers[switch].at
    # Traffic moves when the operator promotes (Endpoints and kube-proxy lag a little).
    assert promoted - 1.0 <= switched_at <= promoted + 3.0, (promoted, switched_at)
    assert swap_healthy >= switched_at  # gitsync said Healthy only after the switch
    old = [h for h in realray.hosts.stopped if h.cluster == first]
    assert old, "the old cluster's head was never stopped"
    assert not old[0].alive()

    save(
        "serve-update",
        {
            "scenario": "serve update (user_config)",
            **figures(load, update_commit, swap_commit),
            "commit_to_new_answer_s": round(first_two - update_commit, 2),
            "commit_to_healthy_s": round(update_healthy - update_commit, 2),
        },
    )
    save(
        "num-replicas",
        {
            "scenario": "serve update (num_replicas 1 to 2)",
            **figures(load, replicas_commit, in_place_commit),
            "commit_to_healthy_s": round(replicas_healthy - replicas_commit, 2),
        },
    )
    save(
        "cluster-in-place",
        {
            "scenario": "cluster update in place (appended worker group)",
            **figures(load, in_place_commit, end),
            "commit_to_healthy_s": round(in_place_healthy - in_place_commit, 2),
        },
    )
    save(
        "cluster-swap",
        {
            "scenario": "cluster swap (rayStartParams)",
            **figures(load, swap_commit, replicas_commit),
            "commit_to_promotion_s": round(promoted - swap_commit, 2),
            "commit_to_first_new_answer_s": round(switched_at - swap_commit, 2),
            "commit_to_healthy_s": round(swap_healthy - swap_commit, 2),
            "create_to_healthy_s": round(create_seconds, 2),
        },
    )


def test_deploy_failed_rolls_back_without_dropping_requests(
    api: client.ApiClient, realray: RealRay, repo: GitOpsRepo, tmp_path: Path
) -> None:
    lines: list[tuple[float, str]] = []
    assert sync(api, realray, repo, tmp_path, lines).ok, explain(realray, lines)
    cluster = active_cluster(api, repo.namespace, "answer")
    good_serve = get(api, repo.namespace, "answer")["spec"]["serveConfigV2"]
    load = Load(realray.services.url(repo.namespace, "answer") + "/answer").start()
    try:
        time.sleep(1)
        broken_commit = time.monotonic()
        repo.commit(
            lambda root: repo.edit(
                "answer.yaml",
                "import_path: testbed.serve_apps.answer:app",
                "import_path: testbed.serve_apps.broken:app",
            ),
            "break it",
        )
        [staging] = sync(api, realray, repo, tmp_path, lines, rollback="auto").results
        rolled_back = time.monotonic()
        time.sleep(3)
    finally:
        load.stop()
    end = time.monotonic()
    assert staging.outcome is Outcome.ROLLED_BACK, explain(realray, lines)
    said = "\n".join(line for _, line in lines)
    assert "app answer is DEPLOY_FAILED: Deploying app 'answer' failed" in said, said
    # Ray's traceback is cut to its last line, the exception: what a reader needs.
    assert "ImportError: testbed.serve_apps.broken fails to import on purpose" in said, said
    assert "which is Healthy again" in staging.message, staging.message
    live = get(api, repo.namespace, "answer")
    assert live["spec"]["serveConfigV2"] == good_serve
    assert active_cluster(api, repo.namespace, "answer") == cluster  # a serve update: no swap
    assert not load.failed, load.failed[:5]
    assert {a.cluster for a in load.answers} == {cluster}
    save(
        "deploy-failed-rollback",
        {
            "scenario": "DEPLOY_FAILED, rollback: auto",
            **figures(load, broken_commit, end),
            "commit_to_rolled_back_s": round(rolled_back - broken_commit, 2),
        },
    )


def test_crashed_replica_is_degraded_for_the_running_agent_and_gitsync_status(
    api: client.ApiClient,
    realray: RealRay,
    repo: GitOpsRepo,
    control_plane: ControlPlane,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`gitsync run` rolls out an app whose replica then crashes: the running agent sees the
    health change (an Event on the RayService, its health metric) and so does `gitsync status`."""
    repo.commit(
        lambda root: repo.edit(
            "answer.yaml",
            "import_path: testbed.serve_apps.answer:app\n"
            "        deployments:\n"
            "          - name: Answer\n"
            "            num_replicas: 1\n"
            "            user_config:\n"
            "              answer: one\n",
            "import_path: testbed.serve_apps.crashy:app\n",
        ),
        "the crashy app",
    )
    port = free_port()
    config = agent_config_file(
        repo,
        tmp_path,
        "real-ray",
        port,
        repo.namespace,
        rollout={
            "healthyReads": 2,
            "healthySeconds": "3s",
            "pollInterval": "300ms",
            "healthTimeout": "300s",
            "stateNamespace": repo.namespace,
        },
    )
    log = tmp_path / "agent.log"
    agent = start_agent(config, control_plane.kubeconfig, "real-ray", log)

    def health(of: str) -> bool:
        try:
            text = scrape(port)
        except OSError:
            return False
        return any(
            line.startswith("gitsync_service_health{")
            and 'name="answer"' in line
            and f'health="{of}"' in line
            and line.endswith(" 1.0")
            for line in text.splitlines()
        )

    def status() -> tuple[int, str]:
        code = main(
            ["status", "--kubeconfig", str(control_plane.kubeconfig),
             "--state-namespace", repo.namespace, "-n", repo.namespace]
        )  # fmt: skip
        return code, capsys.readouterr().out

    def degraded_in_status() -> float | None:
        code, out = status()
        found = any(line.split()[:2] == ["answer", "Degraded"] for line in out.splitlines())
        return time.monotonic() if found and code == 1 else None

    def described() -> str:
        return control_plane.kubectl(
            "describe", "rayservice", "answer", "-n", repo.namespace
        ).stdout

    try:
        wait_for("the agent's rollout, Healthy", lambda: 0.0 if health("Healthy") else None)
        assert not realray.hosts.errors, explain(realray, [])
        wait_for_endpoints(api, realray, repo.namespace)
        assert status()[0] == 0
        url = realray.services.url(repo.namespace, "answer") + "/answer/crash"
        with contextlib.suppress(OSError):  # the replica dies before it answers
            urllib.request.urlopen(url, timeout=30).close()  # noqa: S310
        crashed = time.monotonic()
        in_status = wait_for("Degraded in `gitsync status`", degraded_in_status, timeout=120)
        in_agent = wait_for(
            "Degraded in the agent's metric", lambda: time.monotonic() if health("Degraded") else None,
            timeout=60,
        )  # fmt: skip
        wait_for(
            "the agent's Event",
            lambda: 0.0 if "health changed from Healthy to Degraded" in described() else None,
            timeout=60,
        )
        assert any(line.split()[:2] == ["Warning", "Degraded"] for line in described().splitlines())
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            code = agent.wait(30)
        except subprocess.TimeoutExpired:
            agent.kill()
            raise
    assert code == 0, log.read_text()[-3000:]
    save(
        "crashed-replica",
        {
            "scenario": "a replica crashes and cannot restart, `gitsync run` watching",
            "crash_to_degraded_in_status_s": round(in_status - crashed, 2),
            "crash_to_degraded_in_agent_s": round(in_agent - crashed, 2),
        },
    )


def test_commit_status_turns_success_only_after_the_switch(
    api: client.ApiClient,
    realray: RealRay,
    gitea: Gitea,
    control_plane: ControlPlane,
    tmp_path: Path,
) -> None:
    """`gitsync sync --once` from a Gitea repository: an image change swaps clusters under
    load, and the commit's gitsync/staging status says success only once traffic moved."""
    namespace = realray.namespaces.pop()
    repo = GitOpsRepo(
        tmp_path / "gitops",
        namespace,
        origin=gitea.create_repo(f"ray-{uuid.uuid4().hex[:8]}"),
        push_args=gitea.git_auth_config(),
    )
    try:
        repo.commit(lambda root: only_answer(repo), "one service on real Ray")
        token = tmp_path / "token"
        token.write_text(gitea.token)
        config = tmp_path / "agent.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "repository": {
                        "url": repo.url,
                        "branch": "main",
                        "auth": {"tokenFile": str(token)},
                    },
                    "cacheDir": str(tmp_path / "cache"),
                    "status": {"provider": "gitea", "tokenFile": str(token)},
                    "rollout": {
                        "healthyReads": 2,
                        "healthySeconds": "3s",
                        "pollInterval": "300ms",
                        "healthTimeout": "300s",
                        "stateNamespace": namespace,
                    },
                }
            )
        )
        argv = ["sync", "--once", "--config", str(config)]
        argv += ["--kubeconfig", str(control_plane.kubeconfig)]
        assert main(argv) == 0, explain(realray, [])
        first = active_cluster(api, namespace, "answer")
        wait_for_endpoints(api, realray, namespace)
        load = Load(realray.services.url(namespace, "answer") + "/answer").start()
        try:
            time.sleep(2)
            committed, committed_at = time.time(), time.monotonic()
            sha = repo.commit(
                lambda root: repo.edit("answer.yaml", "ray:2.60.0-py311", "ray:2.60.0-py312"),
                "new image",
            )
            assert main(argv) == 0, explain(realray, [])
            done = time.time()
            time.sleep(1)
        finally:
            load.stop()
        second = active_cluster(api, namespace, "answer")
        assert second != first
        assert not load.failed, load.failed[:5]
        switched = next(a.wall for a in load.answers if a.cluster == second)
        assert all(a.cluster == second for a in load.answers if a.wall > switched)
        path = repo.url.removeprefix(gitea.url).removesuffix(".git")
        seen = sorted(
            gitea.api("GET", f"/repos{path}/statuses/{sha}?limit=50"), key=lambda s: s["id"]
        )
        assert seen[0]["status"] == "pending", seen
        assert seen[-1]["status"] == "success", seen
        assert [s["status"] for s in seen].count("success") == 1
        success = datetime.fromisoformat(seen[-1]["created_at"]).timestamp()
        # Gitea keeps whole seconds: success no earlier than the second traffic moved in.
        assert success >= int(switched), (success, switched)
        save(
            "commit-status",
            {
                "scenario": "cluster swap (image), commit status on Gitea",
                **figures(load, committed_at, time.monotonic()),
                "commit_to_first_new_answer_s": round(switched - committed, 2),
                "commit_to_status_success_s": round(success - committed, 1),
                "commit_to_sync_exit_s": round(done - committed, 2),
            },
        )
    finally:
        clean(api, realray, namespace)


def pending_head(realray: RealRay, namespace: str, active: str) -> bool:
    return any(
        h.namespace == namespace and h.cluster != active and h.ready_at is not None
        for h in list(realray.hosts.heads.values())
    )


def test_a_commit_during_a_swap_supersedes_it_without_dropping_requests(
    api: client.ApiClient, realray: RealRay, repo: GitOpsRepo, tmp_path: Path
) -> None:
    lines: list[tuple[float, str]] = []
    assert sync(api, realray, repo, tmp_path, lines).ok, explain(realray, lines)
    first = active_cluster(api, repo.namespace, "answer")
    wait_for_endpoints(api, realray, repo.namespace)
    load = Load(realray.services.url(repo.namespace, "answer") + "/answer").start()
    outcome: list[PassResult] = []
    try:
        time.sleep(1)
        swap_commit = time.monotonic()
        swap = repo.commit(
            lambda root: repo.edit(
                "answer.yaml",
                'dashboard-host: "0.0.0.0"',
                'dashboard-host: "0.0.0.0"\n        num-gpus: "0"',
            ),
            "swap",
        )
        worker = threading.Thread(
            target=lambda: outcome.append(sync(api, realray, repo, tmp_path, lines))
        )
        worker.start()
        # Mid-swap: the pending cluster's head is up and the old cluster still serves.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not pending_head(realray, repo.namespace, first):
            time.sleep(0.2)
        assert pending_head(realray, repo.namespace, first), explain(realray, lines)
        edit_commit = time.monotonic()
        edit = repo.commit(
            lambda root: repo.edit("answer.yaml", "answer: one", "answer: three"), "three"
        )
        worker.join(300)
        time.sleep(2)
    finally:
        load.stop()
    end = time.monotonic()
    [result] = outcome
    assert result.ok, explain(realray, lines)
    assert result.revision == edit
    said = "\n".join(line for _, line in lines)
    assert f"{swap[:12]} superseded" in said, said
    second = active_cluster(api, repo.namespace, "answer")
    assert second != first
    assert not load.failed, load.failed[:5]
    clusters = [a.cluster for a in load.answers]
    switch = clusters.index(second)
    assert set(clusters[:switch]) == {first}
    assert set(clusters[switch:]) == {second}
    assert load.answers[-1].answer == "three"
    assert "three" not in {a.answer for a in load.answers if a.cluster == first}
    save(
        "commit-mid-swap",
        {
            "scenario": "a second commit (user_config) during a cluster swap",
            **figures(load, swap_commit, end),
            "swap_commit_to_second_commit_s": round(edit_commit - swap_commit, 2),
            "second_commit_to_healthy_s": round(healthy_at(lines, edit_commit) - edit_commit, 2),
            "second_commit_to_first_new_answer_s": round(load.answers[switch].at - edit_commit, 2),
        },
    )


def wait_for(what: str, found: Callable[[], float | None], timeout: float = 300.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = found()
        if value is not None:
            return value
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {timeout:.0f} s")


def test_kubectl_apply_the_peer_returns_before_the_swap_finished(
    api: client.ApiClient,
    realray: RealRay,
    repo: GitOpsRepo,
    control_plane: ControlPlane,
    tmp_path: Path,
) -> None:
    """The peer: the same changes made with ``kubectl apply``, which returns once the API
    server stored the object. Its figures sit beside gitsync's in docs/zero-downtime.md."""
    lines: list[tuple[float, str]] = []
    assert sync(api, realray, repo, tmp_path, lines).ok, explain(realray, lines)
    first = active_cluster(api, repo.namespace, "answer")
    wait_for_endpoints(api, realray, repo.namespace)
    load = Load(realray.services.url(repo.namespace, "answer") + "/answer").start()
    watch = Watch(api, repo.namespace, "answer")

    def apply() -> tuple[float, float]:
        started = time.monotonic()
        control_plane.kubectl("apply", "-n", repo.namespace, "-f", str(repo.path("answer.yaml")))
        return started, time.monotonic()

    try:
        time.sleep(2)
        repo.edit("answer.yaml", "answer: one", "answer: two")  # the working tree only
        update_applied, update_returned = apply()
        new_answer = wait_for(
            "answer from the new user_config",
            lambda: next(
                (a.at for a in list(load.answers) if a.at >= update_applied and a.answer == "two"),
                None,
            ),
        )
        time.sleep(2)
        repo.edit("answer.yaml", "ray:2.60.0-py311", "ray:2.60.0-py312")  # a cluster swap
        swap_applied, swap_returned = apply()
        promoted = wait_for(
            "promotion",
            lambda: next((t for t, name in list(watch.changes) if name != first), None),
        )
        second = active_cluster(api, repo.namespace, "answer")
        switched = wait_for(
            "answer from the new cluster",
            lambda: next((a.at for a in list(load.answers) if a.cluster == second), None),
        )
        time.sleep(1)
    finally:
        load.stop()
        watch.stop()
    end = time.monotonic()
    # kubectl's verdict is that the API server stored the object. For a serve update the new
    # answer comes about as soon (a figure, not asserted: both are well under a second apart);
    # for a swap the operator promotes the new cluster tens of seconds after kubectl returned.
    assert swap_returned < promoted, (swap_returned, promoted)
    clusters = [a.cluster for a in load.answers if a.status == 200]
    switch = clusters.index(second)
    assert set(clusters[:switch]) == {first}
    assert set(clusters[switch:]) == {second}
    save(
        "kubectl-serve-update",
        {
            "scenario": "the peer: serve update (user_config) with `kubectl apply`, from the apply",
            **figures(load, update_applied, swap_applied),
            "commit_to_new_answer_s": round(new_answer - update_applied, 2),
            "apply_to_kubectl_exit_s": round(update_returned - update_applied, 2),
        },
    )
    save(
        "kubectl-swap",
        {
            "scenario": "the peer: cluster swap (image) with `kubectl apply`, from the apply",
            **figures(load, swap_applied, end),
            "commit_to_promotion_s": round(promoted - swap_applied, 2),
            "commit_to_first_new_answer_s": round(switched - swap_applied, 2),
            "apply_to_kubectl_exit_s": round(swap_returned - swap_applied, 2),
        },
    )


FLAKY_RAY = """\
#!{python}
# A `ray` whose first start fails (as `ray start` does when its raylet misses the GCS's 30 s
# on a busy machine); later starts answer the dashboard's Serve GET, and /api/version with a
# session in their own temp dir, until killed.
import http.server, pathlib, sys
marker = pathlib.Path({marker!r})
if not marker.exists():
    marker.touch()
    sys.exit("The current node timed out during startup.")
arg = lambda name: next(a for a in sys.argv if a.startswith(name + "=")).split("=", 1)[1]
port = int(arg("--dashboard-port"))
session = pathlib.Path(arg("--temp-dir")) / "session_fake"  # where a head's session lives
session.mkdir(parents=True, exist_ok=True)
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        body = '{{"session_name": "session_fake"}}' if self.path == "/api/version" else "{{}}"
        self.wfile.write(body.encode())
http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


def test_a_head_whose_first_start_fails_is_started_again_and_keeps_running(
    tmp_path: Path,
) -> None:
    """The second start runs from the thread that saw the first exit; the head is started
    with a parent-death signal tied to that thread, so the thread stays while the head runs."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    ray = bindir / "ray"
    ray.write_text(FLAKY_RAY.format(python=sys.executable, marker=str(tmp_path / "started")))
    ray.chmod(0o755)
    hosts = RayHosts(bindir / "python", tmp_path / "heads", ready_timeout=60)
    try:
        hosts.start("ns", "answer-head", "answer-abcde", "192.0.2.9")
        wait_for("the head Ready", lambda: 0.0 if hosts.ready("ns", "answer-head") else None, 60)
        head = hosts.heads[("ns", "answer-head")]
        assert head.attempt == 2, hosts.retried
        assert len(hosts.retried) == 1
        time.sleep(2)  # the thread that started it again is not gone, and neither is the head
        assert head.alive(), head.log()
        assert head.answers()
        assert not hosts.errors
    finally:
        hosts.stop_all()
    assert not hosts.leftovers()
