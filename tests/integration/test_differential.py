"""The same scenarios against the KubeRay simulator, the real KubeRay operator with a stand-in
Ray dashboard, and the real KubeRay operator driving real Ray.

For each scenario gitsync rolls a change to the ``embedder`` service out through ``sync_once``
and records: its predicted action (the plan), what KubeRay did (the RayCluster kept, created,
replaced or still pending; its worker replicas; where Serve configs were PUT), the outcome,
and the health verdicts gitsync observed, collapsed. Every backend must record the same, and
what KubeRay did must be what gitsync's action says it does (:func:`surprises`): the
simulator decides with its own reading of KubeRay (testbed/kuberay_rules.py), so a wrong
prediction fails here instead of agreeing with itself.

The service runs the test bed's own Serve apps (testbed/serve_apps) on every backend, so the
same manifest deploys on real Ray: the failing and the never-ready apps really fail to import
and really never finish starting there, and the other backends' failure rules match those
import paths. The real-Ray backend (testbed/rayhost.py: a ``ray start --head`` per head pod)
runs beside the others, one scenario at a time like them, and deletes each scenario's clusters
afterwards so no more than the heads of one scenario run at once (and one spare head, started
ahead so that a head's start does not add to every scenario). Like test_real_ray.py, the module
runs in `make test`'s `pytest ray` phase, beside the parallel one: it asserts what KubeRay and
Serve decided, not how fast.

The table is written to docs/kuberay-differential.md from these records; a test keeps the
committed file equal to what the suite produces (``GITSYNC_WRITE_DOCS=1`` rewrites it).
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from gitsync.config import AgentConfig
from gitsync.diff.classify import Options
from gitsync.kube.rayservices import RayServicesClient
from gitsync.kube.state import StateStore
from gitsync.model import ServiceKey
from gitsync.progress import Lines
from gitsync.sync import PassResult, sync_once
from testbed.binaries import Binaries
from testbed.controlplane import ControlPlane
from testbed.operator import FakeEndpoints, FakeKubelet, Operator, ServeProxy, ServeState
from testbed.rayhost import RayHosts
from testbed.simulator import Delays, FailureRule, Simulator

from .gitops import GitOpsRepo
from .kube import get

pytestmark = pytest.mark.ray  # real Ray heads: `make test` runs this module beside the others

DOC = Path(__file__).resolve().parents[2] / "docs" / "kuberay-differential.md"
# The example's app (a remote working_dir, 1 CPU a replica) as one that runs on the test bed's
# Ray heads: testbed/serve_apps/answer.py, a tenth of a CPU a replica, nothing to download.
EXAMPLE_APP = """        import_path: embedder.serve:app
        runtime_env:
          working_dir: "https://example.com/artifacts/embedder-1.4.0.zip"
        deployments:
          - name: Embedder
            num_replicas: 1
            ray_actor_options:
              num_cpus: 1
"""
SERVE_APP = "testbed.serve_apps.answer:app"
TEST_APP = f"""        import_path: {SERVE_APP}
        deployments:
          - name: Answer
            num_replicas: 1
            ray_actor_options:
              num_cpus: 0.1
"""
# Fails to import: Ray reports it DEPLOY_FAILED; the stand-ins' rule matches its import path.
BROKEN = "testbed.serve_apps.broken:app"
# Its replica takes an hour to start: a swap that stays pending (a DEPLOYING rule elsewhere).
SLOW = "testbed.serve_apps.slow:build"
ANSWER_HEAD = f"        import_path: {SERVE_APP}\n        deployments:\n          - name: Answer\n"
SLOW_APP = f"""        import_path: {SLOW}
        args: {{seconds: 3600}}
        deployments:
          - name: Slow
"""
IMAGE = "image: rayproject/ray:2.49.0-py311"


@dataclass(frozen=True)
class Scenario:
    name: str
    change: Callable[[GitOpsRepo], None] | None  # None: the initial creation itself
    failing: bool = False  # the change's import path fails to deploy
    prepare: Callable[[GitOpsRepo], None] | None = None  # in the repository before creation
    zero_downtime: bool = True  # the operator's ENABLE_ZERO_DOWNTIME
    prune: bool = False  # the environment prunes services removed from Git
    # A second change, committed once the first one's new cluster is pending: the first
    # change's app never finishes deploying, so the swap is under way when this lands.
    then: Callable[[GitOpsRepo], None] | None = None


def _edit(old: str, new: str) -> Callable[[GitOpsRepo], None]:
    return lambda repo: repo.edit("embedder.yaml", old, new)


def _both(*edits: Callable[[GitOpsRepo], None]) -> Callable[[GitOpsRepo], None]:
    def apply(repo: GitOpsRepo) -> None:
        for edit in edits:
            edit(repo)

    return apply


_serve = _edit("num_replicas: 1", "num_replicas: 2")
_reformat = _edit("route_prefix: /embed", 'route_prefix: "/embed"')  # the same config
_image = _edit(IMAGE, "image: rayproject/ray:2.50.0-py311")
_replicas = _edit("replicas: 1\n        minReplicas: 1", "replicas: 3\n        minReplicas: 2")
_strategy_none = _both(_edit("type: NewCluster", "type: None"), _image)
_no_strategy = _edit("  upgradeStrategy:\n    type: NewCluster\n", "")
_broken = _edit(SERVE_APP, BROKEN)
_label = _edit("  name: embedder\n", "  name: embedder\n  labels:\n    team: search\n")
_respell = _edit('limits: {cpu: "2", memory: 4Gi}', 'limits: {cpu: "2", memory: 4096Mi}')
_slow_swap = _both(_image, _edit(ANSWER_HEAD, SLOW_APP))
_fixed_swap = _both(
    _edit("image: rayproject/ray:2.50.0-py311", "image: rayproject/ray:2.51.0-py311"),
    _edit(SLOW_APP, ANSWER_HEAD),
)
APPENDED_GROUP = """      - groupName: extra
        replicas: 1
        minReplicas: 1
        maxReplicas: 2
        rayStartParams: {}
        template:
          spec:
            containers:
              - name: ray-worker
                image: rayproject/ray:2.49.0-py311
"""


def _append_group(repo: GitOpsRepo) -> None:
    path = repo.path("embedder.yaml")
    path.write_text(path.read_text().rstrip("\n") + "\n" + APPENDED_GROUP)


def _remove(repo: GitOpsRepo) -> None:
    repo.path("embedder.yaml").unlink()
    repo.path("README.md").write_text("Nothing runs in staging now.\n")  # keeps the folder


SCENARIOS = [
    Scenario("create", None),
    Scenario("serve-only update", _serve),
    Scenario("serveConfigV2 reformatted", _reformat),
    Scenario("image change", _image),
    Scenario("worker group appended", _append_group),
    Scenario("replicas only", _replicas),
    Scenario("upgradeStrategy None + image", _strategy_none),
    Scenario(
        "ENABLE_ZERO_DOWNTIME=false + image", _image, prepare=_no_strategy, zero_downtime=False
    ),
    Scenario("label only", _label),
    Scenario("memory respelled (4Gi as 4096Mi)", _respell),
    Scenario("removed from Git (prune)", _remove, prune=True),
    Scenario("image change, then another during the swap", _slow_swap, then=_fixed_swap),
    Scenario("injected DEPLOY_FAILED", _broken, failing=True),
]


@dataclass(frozen=True)
class Record:
    action: str
    outcome: str
    cluster: str
    replicas: str
    puts: str
    health: str

    def cells(self) -> list[str]:
        return [self.action, self.outcome, self.cluster, self.replicas, self.puts, self.health]


# What KubeRay does for each action gitsync predicts: the RayCluster afterwards and where
# the change's Serve configs go (None: not part of the prediction).
EFFECTS: dict[str, tuple[str, set[str] | None]] = {
    "create": ("created", {"new"}),
    "serve-update": ("kept", {"active"}),
    # KubeRay compares serveConfigV2 as a string: a reformatted config is PUT again (Ray
    # Serve then finds every application unchanged).
    "serve-reformat": ("kept", {"active"}),
    "cluster-swap": ("replaced", None),
    "cluster-in-place": ("kept", {"none"}),
    "cluster-ignored": ("kept", {"none"}),
    "scale-ineffective": ("kept", {"none"}),
    "metadata": ("kept", {"none"}),
    "prune": ("deleted with the RayService", None),
}


def surprises(record: Record) -> list[str]:
    """Where what KubeRay did differs from what gitsync's (last) action says it does."""
    action = record.action.split(", ")[-1]
    if action not in EFFECTS:
        return [f"no expectation for action {action!r}"]
    cluster, puts = EFFECTS[action]
    found = []
    if record.cluster != cluster:
        found.append(f"{action}: the RayCluster was {record.cluster}, not {cluster}")
    if puts is not None and set(record.puts.split(", ")) != puts:
        found.append(f"{action}: Serve configs went to {record.puts}, not {', '.join(puts)}")
    if action == "scale-ineffective" and "→" in record.replicas:
        found.append(f"{action}: the RayCluster's replicas changed ({record.replicas})")
    if action == "cluster-in-place" and "→" not in record.replicas:
        found.append(f"{action}: the RayCluster's worker groups did not change")
    return found


@dataclass
class Backend:
    name: str
    namespaces: dict[str, str]  # scenario name → namespace
    rule: Callable[[FailureRule], None]  # injects a failure (real Ray needs none: it fails)
    submissions: Callable[[ServiceKey], list[str]]  # the cluster of every Serve PUT
    replicas: Callable[[ServiceKey, str], list[int] | None]  # a RayCluster's workers
    # Real Ray: a head takes 10 to 25 s to start (more on a busy machine), a head that cannot
    # start is an error at once, and each scenario's clusters go afterwards, heads with them.
    health_timeout: float = 60.0
    errors: list[str] = field(default_factory=list)
    finish: Callable[[str], None] = lambda namespace: None


def _worker_replicas(spec: dict[str, Any] | None) -> list[int] | None:
    if spec is None:
        return None
    return [int(g.get("replicas") or 0) for g in spec.get("workerGroupSpecs") or []]


SIM_DELAYS = Delays(cluster_start=0.3, app_deploy=0.4, tick=0.05, requeue=1.0)
BACKENDS = {"simulator": "sim", "operator": "op", "real Ray": "ray"}  # name → namespace prefix


@pytest.fixture(scope="module")
def backends(
    api: client.ApiClient,
    control_plane: ControlPlane,
    binaries: Binaries,
    simulator: Simulator,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Backend]]:
    core = client.CoreV1Api(api)
    custom = client.CustomObjectsApi(api)
    spaces = {
        kind: {s.name: f"df-{short}-{uuid.uuid4().hex[:6]}-{i}" for i, s in enumerate(SCENARIOS)}
        for kind, short in BACKENDS.items()
    }
    for names in spaces.values():
        for name in names.values():
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    # Operators started with ENABLE_ZERO_DOWNTIME=false: a second of each, for its namespace.
    off = {s.name for s in SCENARIOS if not s.zero_downtime}

    def split(kind: str) -> tuple[list[str], list[str]]:
        names = spaces[kind]
        return [names[s] for s in names if s not in off], [names[s] for s in names if s in off]

    sim_off = set(split("simulator")[1])
    operated = [ns for kind in ("operator", "real Ray") for ns in spaces[kind].values()]
    simulator.exclude_namespaces |= set(operated) | sim_off
    logs = tmp_path_factory.mktemp("differential-operator")
    # The operator with a stand-in dashboard.
    state = ServeState(deploy_seconds=0.5)
    proxy = ServeProxy(state).start()
    loops = [
        FakeKubelet(api, list(spaces["operator"].values())).start(),
        FakeEndpoints(api, list(spaces["operator"].values())).start(),
    ]
    # The operator with real Ray: a head per head pod. Scenarios run one at a time and delete
    # their clusters afterwards, so two heads run at once in a swap; three only while an edit
    # during a swap waits for KubeRay to delete the cluster it abandoned (60 s by default).
    # One spare head is kept started within those three: a new head pod takes it at once, so
    # a head's start (10 to 25 s) overlaps the scenario before instead of adding to each.
    hosts = RayHosts(
        binaries.ray_python,
        tmp_path_factory.mktemp("differential-ray"),
        max_heads=3,
        spares=1,
        attempts=4,  # thirteen scenarios' heads, on a machine other tests keep busy
    )
    hosts.refill()
    ray_state = ServeState()
    ray_proxy = ServeProxy(ray_state, hosts).start()
    loops += [
        FakeKubelet(api, list(spaces["real Ray"].values()), hosts=hosts).start(),
        FakeEndpoints(api, list(spaces["real Ray"].values())).start(),
    ]
    operators = []
    for kind, port in (("operator", proxy.port), ("real Ray", ray_proxy.port)):
        on, zero_downtime_off = split(kind)
        folder = logs / kind.replace(" ", "-")
        operators.append(
            Operator(binaries.kuberay_operator, control_plane.kubeconfig, on, port, folder)
        )
        operators.append(
            Operator(
                binaries.kuberay_operator,
                control_plane.kubeconfig,
                zero_downtime_off,
                port,
                folder / "zero-downtime-off",
                env={"ENABLE_ZERO_DOWNTIME": "false"},
            )
        )

    def submitted(state: ServeState) -> Callable[[ServiceKey], list[str]]:
        return lambda key: [
            s.cluster
            for s in state.submissions
            if s.namespace == key.namespace and s.cluster.startswith(f"{key.name}-")
        ]

    def operator_replicas(key: ServiceKey, cluster: str) -> list[int] | None:
        try:
            obj = custom.get_namespaced_custom_object(
                "ray.io", "v1", key.namespace, "rayclusters", cluster
            )
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return _worker_replicas(obj.get("spec"))

    def delete_clusters(namespace: str) -> None:
        """Deletes the scenario's RayService and RayClusters (the garbage collector's cascade,
        which this control plane lacks) and waits for their heads to stop."""
        for plural in ("rayservices", "rayclusters"):
            listed = custom.list_namespaced_custom_object("ray.io", "v1", namespace, plural)
            for item in listed["items"]:
                custom.delete_namespaced_custom_object(
                    "ray.io", "v1", namespace, plural, item["metadata"]["name"]
                )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(ns == namespace for ns, _ in list(hosts.heads)):
            time.sleep(0.3)
        assert not [key for key in hosts.heads if key[0] == namespace], hosts.heads

    with control_plane.api_client() as off_api:
        second = Simulator(off_api, SIM_DELAYS, zero_downtime_env=False, seed=11)
        second.only_namespaces = sim_off

        def sim_for(key: ServiceKey) -> Simulator:
            return second if key.namespace in sim_off else simulator

        def sim_rule(rule: FailureRule) -> None:
            (second if rule.namespace in sim_off else simulator).add_rule(rule)

        try:
            second.start()
            for operator in operators:
                operator.start()
            yield {
                "simulator": Backend(
                    "simulator",
                    spaces["simulator"],
                    sim_rule,
                    lambda key: sim_for(key).submissions(key),
                    lambda key, cluster: _worker_replicas(sim_for(key).cluster_spec(key, cluster)),
                ),
                "operator": Backend(
                    "operator",
                    spaces["operator"],
                    state.rules.append,
                    submitted(state),
                    operator_replicas,
                ),
                "real Ray": Backend(
                    "real Ray",
                    spaces["real Ray"],
                    lambda rule: None,
                    submitted(ray_state),
                    operator_replicas,
                    health_timeout=300.0,
                    errors=hosts.errors,
                    finish=delete_clusters,
                ),
            }
        finally:
            for operator in operators:
                operator.stop()
            second.stop()
            for loop in loops:
                loop.stop()
            hosts.stop_all()
            proxy.stop()
            ray_proxy.stop()
    assert not hosts.leftovers(), f"Ray processes left behind: {hosts.leftovers()}"


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


def actions_of(lines: list[str], key: ServiceKey) -> str:
    """Every action gitsync applied the service with, in order (more than one when a newer
    commit superseded a rollout)."""
    pattern = re.compile(rf"(applied|pruned) {re.escape(str(key))}(?: \(([a-z-]+)\))?")
    found = [
        "prune" if match[1] == "pruned" else match[2] or "unknown"
        for line in lines
        if (match := pattern.search(line))
    ]
    return ", ".join(found) or "unchanged (not applied)"


def _replicas_cell(before: list[int] | None, after: list[int] | None) -> str:
    def show(replicas: list[int] | None) -> str:
        return "—" if replicas is None else ", ".join(map(str, replicas)) or "no workers"

    return show(after) if before == after or before is None else f"{show(before)} → {show(after)}"


def _status(api: client.ApiClient, namespace: str) -> dict[str, Any] | None:
    """The RayService's status; None once it is deleted."""
    try:
        return get(api, namespace, "embedder").get("status") or {}
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _wait_for_pending(
    api: client.ApiClient, namespace: str, submitted: Callable[[], list[str]], timeout: float = 60.0
) -> str:
    """The pending cluster's name, once KubeRay has submitted the Serve config to it.

    Waiting for the submission, not only for the cluster, makes the second commit land at the
    same point of the swap on every backend: otherwise whether the abandoned cluster ever got
    a PUT depends on how fast its head came up.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pending = ((_status(api, namespace) or {}).get("pendingServiceStatus") or {}).get(
            "rayClusterName"
        )
        if pending and pending in submitted():
            return str(pending)
        time.sleep(0.1)
    raise AssertionError(
        f"{namespace}/embedder: no pending cluster with a Serve config within {timeout:.0f} s"
    )


def run_scenario(
    api: client.ApiClient, backend: Backend, scenario: Scenario, tmp_path: Path
) -> Record:
    try:
        return _run(api, backend, scenario, tmp_path / backend.name.replace(" ", "-"))
    finally:
        backend.finish(backend.namespaces[scenario.name])


def _run(api: client.ApiClient, backend: Backend, scenario: Scenario, tmp_path: Path) -> Record:
    namespace = backend.namespaces[scenario.name]
    repo = GitOpsRepo(tmp_path / "gitops", namespace, prune=scenario.prune)

    def embedder_only(root: Path) -> None:
        for other in ("ranker.yaml", "summarizer.yaml"):
            repo.path(other).unlink()
        repo.edit("embedder.yaml", EXAMPLE_APP, TEST_APP)
        if scenario.prepare is not None:
            scenario.prepare(repo)

    repo.commit(embedder_only, "the embedder alone")
    settings = {
        "health_timeout": backend.health_timeout,
        "poll_interval": 0.3,
        "healthy_seconds": 5.0,
    }
    config: AgentConfig = repo.agent_config(tmp_path / "cache", **settings)
    if not scenario.zero_downtime:
        config = replace(config, classify=Options(operator_zero_downtime=False))
    key = ServiceKey(namespace, "embedder")
    lines: list[str] = []
    earlier = len(backend.errors)  # another scenario's failed head is not this one's

    def sync() -> PassResult:
        """One pass, stopped at once when a Ray head could not start (then the assertion
        shows why, not a health timeout minutes later)."""
        stop, done = threading.Event(), threading.Event()

        def watch() -> None:
            while not done.wait(0.5):
                if backend.errors[earlier:]:
                    stop.set()
                    return

        threading.Thread(target=watch, daemon=True).start()
        try:
            return sync_once(
                config,
                RayServicesClient(api),
                StateStore(api, namespace),
                observer=Lines(lines.append),
                supersede_every=0.2,
                stop=stop,
            )
        finally:
            done.set()
            assert not backend.errors[earlier:], "\n".join([*lines, *backend.errors[earlier:]])

    result = sync()
    assert result.ok, "\n".join(lines)
    before_cluster, before_puts, before_replicas = "", 0, None
    if scenario.change is not None:
        before_cluster = get(api, namespace, "embedder")["status"]["activeServiceStatus"][
            "rayClusterName"
        ]
        before_puts = len(backend.submissions(key))
        before_replicas = backend.replicas(key, before_cluster)
        if scenario.failing:
            backend.rule(
                FailureRule(namespace=namespace, import_path=BROKEN, message="ModuleNotFoundError")
            )
        if scenario.then is not None:
            backend.rule(
                FailureRule(status="DEPLOYING", message="", namespace=namespace, import_path=SLOW)
            )
        repo.commit(lambda root: scenario.change(repo), scenario.name)  # type: ignore[misc]
        lines.clear()
        if scenario.then is None:
            result = sync()
        else:
            outcome: list[PassResult] = []
            worker = threading.Thread(target=lambda: outcome.append(sync()))
            worker.start()
            _wait_for_pending(
                api, namespace, lambda: backend.submissions(key), backend.health_timeout
            )
            repo.commit(lambda root: scenario.then(repo), f"{scenario.name}: the second")  # type: ignore[misc]
            worker.join(backend.health_timeout * 2)
            [result] = outcome
    [outcome_of] = result.results
    after = _status(api, namespace)
    active = ((after or {}).get("activeServiceStatus") or {}).get("rayClusterName", "")
    pending = ((after or {}).get("pendingServiceStatus") or {}).get("rayClusterName", "")
    if after is None:
        cluster = "deleted with the RayService"
    elif pending:
        cluster = "pending"
    elif active == before_cluster:
        cluster = "kept"
    else:
        cluster = "replaced" if before_cluster else "created"
    puts: list[str] = []
    for put in (
        "active"
        if c == before_cluster
        else "pending"
        if c == pending
        else "new"
        if c == active
        else "abandoned"
        for c in backend.submissions(key)[before_puts:]
    ):
        # KubeRay submits again on later reconciles while an application is not yet RUNNING;
        # how often is timing, so a run of PUTs to one cluster counts once.
        if not puts or puts[-1] != put:
            puts.append(put)
    return Record(
        action=actions_of(lines, key),
        outcome=str(outcome_of.outcome),
        cluster=cluster,
        replicas=_replicas_cell(before_replicas, backend.replicas(key, active) if active else None),
        puts=", ".join(puts) or "none",
        health=health_sequence(lines, key) or "(not gated)",
    )


RECORDS: dict[str, dict[str, Record]] = {}


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_the_backends_agree(
    api: client.ApiClient, backends: dict[str, Backend], scenario: Scenario, tmp_path: Path
) -> None:
    with ThreadPoolExecutor(len(backends)) as pool:  # independent namespaces: side by side
        futures = {
            name: pool.submit(run_scenario, api, backend, scenario, tmp_path)
            for name, backend in backends.items()
        }
        records = {name: future.result() for name, future in futures.items()}
    RECORDS[scenario.name] = records
    assert all(record == records["operator"] for record in records.values()), records
    for name, record in records.items():
        assert surprises(record) == [], (name, record)


def render(records: dict[str, dict[str, Record]]) -> str:
    lines = [
        "# KubeRay simulator vs. the real operator (v1.5.0), with and without real Ray",
        "",
        "Generated by `tests/integration/test_differential.py`; do not edit (rewrite with",
        "`GITSYNC_WRITE_DOCS=1 .venv/bin/pytest -p no:xdist tests/integration/test_differential.py`).",
        "Each row is one change to the `embedder` service rolled out by `gitsync sync --once`, run",
        "against every backend:",
        "",
        "- *simulator*: the test bed's KubeRay simulator, which decides with its own reading of",
        "  KubeRay's source (testbed/kuberay_rules.py), not with gitsync's; Serve is in its memory.",
        "- *operator*: the real KubeRay operator v1.5.0, its Ray dashboard and serve proxy a",
        "  stand-in that reports applications RUNNING after half a second (or what a failure rule",
        "  says).",
        "- *real Ray*: the real operator driving real Ray 2.60.0 heads (`ray start --head`, one per",
        "  head pod; worker pods get no Ray process) that deploy the Serve apps for real.",
        "",
        "The service runs the test bed's own Serve apps (testbed/serve_apps) everywhere. The",
        "injected DEPLOY_FAILED is an app that fails to import and the swap that stays pending is an",
        "app whose replica takes an hour to start: on real Ray they really do; the other backends",
        "match their import paths with a failure rule.",
        "",
        "The suite fails when backends differ, or when what KubeRay did is",
        "not what gitsync's action says it does. *RayCluster* is the service's active cluster",
        "afterwards (kept, created, replaced); *worker replicas* are read from it, per worker group;",
        "*PUTs* are the Serve config submissions KubeRay made for the change (to the active cluster,",
        "the new one, or one abandoned mid-swap; PUTs in a row to one cluster count once, since how",
        "often KubeRay repeats one is timing); *health* is the sequence of verdicts gitsync observed",
        "while gating it; *backends* are those that recorded the row.",
        "",
        "| scenario | gitsync's action | outcome | RayCluster | worker replicas | PUTs "
        "| health gitsync observed | backends |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for scenario in SCENARIOS:
        if scenario.name not in records:
            continue
        by_backend = records[scenario.name]
        record = by_backend["operator"]
        agreeing = [name for name, other in by_backend.items() if other == record]
        cells = [scenario.name, *record.cells(), ", ".join(agreeing)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def test_the_committed_table_is_what_the_suite_produces() -> None:
    if len(RECORDS) != len(SCENARIOS):
        pytest.fail("run the whole differential module: the table needs every scenario")
    text = render(RECORDS)
    if os.environ.get("GITSYNC_WRITE_DOCS") == "1":
        DOC.parent.mkdir(exist_ok=True)
        DOC.write_text(text)
    assert DOC.read_text() == text, "regenerate with GITSYNC_WRITE_DOCS=1"
