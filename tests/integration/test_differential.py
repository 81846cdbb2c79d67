"""The same scenarios against the KubeRay simulator and the real KubeRay operator.

For each scenario gitsync rolls a change out through ``sync_once`` and records: its predicted
action (the plan), what KubeRay did (cluster switched or not, where Serve configs were PUT),
the outcome, and the health verdicts gitsync observed, collapsed. Both backends must agree.
The table is written to docs/kuberay-differential.md from these records; a test keeps the
committed file equal to what the suite produces (``GITSYNC_WRITE_DOCS=1`` rewrites it).
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client

from gitsync.kube.rayservices import RayServices
from gitsync.kube.state import StateStore
from gitsync.model import ServiceKey
from gitsync.sync import sync_once
from testbed.binaries import Binaries
from testbed.controlplane import ControlPlane
from testbed.operator import FakeEndpoints, FakeKubelet, Operator, ServeProxy, ServeState
from testbed.simulator import FailureRule, Simulator

from .gitops import GitOpsRepo
from .kube import get

DOC = Path(__file__).resolve().parents[2] / "docs" / "kuberay-differential.md"
BROKEN = "embedder.v2:app"


@dataclass(frozen=True)
class Scenario:
    name: str
    change: Callable[[GitOpsRepo], None] | None  # None: the initial creation itself
    failing: bool = False


def _serve(repo: GitOpsRepo) -> None:
    repo.edit("embedder.yaml", "num_replicas: 1", "num_replicas: 2")


def _image(repo: GitOpsRepo) -> None:
    repo.edit(
        "embedder.yaml", "image: rayproject/ray:2.49.0-py311", "image: rayproject/ray:2.50.0-py311"
    )


def _replicas(repo: GitOpsRepo) -> None:
    repo.edit(
        "embedder.yaml",
        "replicas: 1\n        minReplicas: 1",
        "replicas: 3\n        minReplicas: 2",
    )


def _strategy_none(repo: GitOpsRepo) -> None:
    repo.edit("embedder.yaml", "type: NewCluster", "type: None")
    _image(repo)


def _broken(repo: GitOpsRepo) -> None:
    repo.edit("embedder.yaml", "embedder.serve:app", BROKEN)


SCENARIOS = [
    Scenario("create", None),
    Scenario("serve-only update", _serve),
    Scenario("image change", _image),
    Scenario("replicas only", _replicas),
    Scenario("upgradeStrategy None + image", _strategy_none),
    Scenario("injected DEPLOY_FAILED", _broken, failing=True),
]


@dataclass(frozen=True)
class Record:
    action: str
    outcome: str
    new_cluster: bool
    puts: str
    health: str

    def row(self) -> str:
        return f"{self.action} | {self.outcome} | {'yes' if self.new_cluster else 'no'} | {self.puts} | {self.health}"


class Backend:
    name: str
    rules: Callable[[FailureRule], None]
    submissions: Callable[[ServiceKey], list[str]]
    namespaces: list[str]


@pytest.fixture(scope="module")
def backends(
    api: client.ApiClient,
    control_plane: ControlPlane,
    binaries: Binaries,
    simulator: Simulator,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Backend]]:
    core = client.CoreV1Api(api)
    spaces = {
        kind: [f"df-{kind[:3]}-{uuid.uuid4().hex[:6]}-{i}" for i in range(len(SCENARIOS))]
        for kind in ("simulator", "operator")
    }
    for name in (*spaces["simulator"], *spaces["operator"]):
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    simulator.exclude_namespaces |= set(spaces["operator"])
    state = ServeState(deploy_seconds=0.5)
    proxy = ServeProxy(state).start()
    kubelet = FakeKubelet(api, spaces["operator"]).start()
    endpoints = FakeEndpoints(api, spaces["operator"]).start()
    operator = Operator(
        binaries.kuberay_operator,
        control_plane.kubeconfig,
        spaces["operator"],
        proxy.port,
        tmp_path_factory.mktemp("differential-operator"),
    ).start()
    sim, real = Backend(), Backend()
    sim.name, sim.namespaces, sim.rules, sim.submissions = (
        "simulator",
        spaces["simulator"],
        simulator.add_rule,
        simulator.submissions,
    )
    real.name, real.namespaces, real.rules = "operator", spaces["operator"], state.rules.append
    real.submissions = lambda key: [
        s.cluster
        for s in state.submissions
        if s.namespace == key.namespace and s.cluster.startswith(f"{key.name}-")
    ]
    try:
        yield {"simulator": sim, "operator": real}
    finally:
        operator.stop()
        kubelet.stop()
        endpoints.stop()
        proxy.stop()


def health_sequence(lines: list[str], key: ServiceKey) -> str:
    verdicts: list[str] = []
    for line in lines:
        match = re.search(
            rf"{re.escape(str(key))} (Healthy|Progressing|Degraded|Missing|Unknown|Suspended):",
            line,
        )
        if match and (not verdicts or verdicts[-1] != match[1]):
            verdicts.append(match[1])
    return " → ".join(verdicts)


def action_of(lines: list[str], key: ServiceKey) -> str:
    for line in lines:
        match = re.search(rf"applied {re.escape(str(key))} \(([a-z-]+)\)", line)
        if match:
            return match[1]
    return "unchanged (not applied)"


def run_scenario(
    api: client.ApiClient, backend: Backend, scenario: Scenario, index: int, tmp_path: Path
) -> Record:
    namespace = backend.namespaces[index]
    repo = GitOpsRepo(tmp_path / backend.name, namespace)
    settings = {"health_timeout": 60.0, "poll_interval": 0.3, "healthy_seconds": 5.0}
    config = repo.agent_config(tmp_path / f"cache-{backend.name}", **settings)
    key = ServiceKey(namespace, "embedder")
    lines: list[str] = []
    result = sync_once(config, RayServices(api), StateStore(api, namespace), progress=lines.append)
    assert result.ok, "\n".join(lines)
    before_cluster = get(api, namespace, "embedder")["status"]["activeServiceStatus"][
        "rayClusterName"
    ]
    before_puts = len(backend.submissions(key))
    if scenario.change is not None:
        if scenario.failing:
            backend.rules(
                FailureRule(namespace=namespace, import_path=BROKEN, message="ModuleNotFoundError")
            )
        repo.commit(lambda root: scenario.change(repo), scenario.name)  # type: ignore[misc]
        lines.clear()
        result = sync_once(
            config, RayServices(api), StateStore(api, namespace), progress=lines.append
        )
        before_puts_after = before_puts
    else:
        before_cluster, before_puts_after = "", 0
    [outcome] = result.results
    after = get(api, namespace, "embedder")["status"]
    active = after["activeServiceStatus"].get("rayClusterName", "")
    pending = (after.get("pendingServiceStatus") or {}).get("rayClusterName", "")
    puts = backend.submissions(key)[before_puts_after:]
    where = [
        "active"
        if c == active and c == before_cluster
        else "pending"
        if c == pending
        else "new"
        if c != before_cluster
        else "active"
        for c in puts
    ]
    return Record(
        action=action_of(lines, key),
        outcome=str(outcome.outcome),
        new_cluster=active != before_cluster or bool(pending),
        puts=", ".join(where) or "none",
        health=health_sequence(lines, key) or "(not gated)",
    )


RECORDS: dict[str, dict[str, Record]] = {}


@pytest.mark.parametrize("index", range(len(SCENARIOS)), ids=[s.name for s in SCENARIOS])
def test_simulator_and_operator_agree(
    api: client.ApiClient, backends: dict[str, Backend], index: int, tmp_path: Path
) -> None:
    scenario = SCENARIOS[index]
    records = {
        name: run_scenario(api, backend, scenario, index, tmp_path)
        for name, backend in backends.items()
    }
    RECORDS[scenario.name] = records
    assert records["simulator"] == records["operator"], records


def render(records: dict[str, dict[str, Record]]) -> str:
    lines = [
        "# KubeRay simulator vs. the real operator (v1.5.0)",
        "",
        "Generated by `tests/integration/test_differential.py`; do not edit (rewrite with",
        "`GITSYNC_WRITE_DOCS=1 .venv/bin/pytest tests/integration/test_differential.py`). Each row is",
        "one change to the `embedder` service rolled out by `gitsync sync --once`, run against both",
        "backends; the suite fails when they differ. *PUTs* are the Serve config submissions KubeRay",
        "made for the change (to the active or to the new cluster); *health* is the sequence of",
        "verdicts gitsync observed while gating it.",
        "",
        "| scenario | gitsync's action | outcome | new cluster | PUTs | health gitsync observed |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for scenario in SCENARIOS:
        if scenario.name in records:
            lines.append(f"| {scenario.name} | {records[scenario.name]['operator'].row()} |")
    return "\n".join(lines) + "\n"


def test_the_committed_table_is_what_the_suite_produces() -> None:
    if len(RECORDS) != len(SCENARIOS):
        pytest.fail("run the whole differential module: the table needs every scenario")
    text = render(RECORDS)
    if os.environ.get("GITSYNC_WRITE_DOCS") == "1":
        DOC.parent.mkdir(exist_ok=True)
        DOC.write_text(text)
    assert DOC.read_text() == text, "regenerate with GITSYNC_WRITE_DOCS=1"
