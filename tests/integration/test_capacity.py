"""The capacity check against the real API server: Node objects with allocatable GPUs and
taints, ResourceQuotas enforced by the API server's own quota admission, pods bound to nodes,
and what the plan, `gitsync plan` and a rollout (capacityCheck warn and block) make of them.

The test bed runs no kube-controller-manager, so no quota controller computes a quota's
``status``: each quota's status is set once through the status subresource (``hard`` as in
the spec, nothing used), as the controller would on creation. From then on the API server's
ResourceQuota admission adds every admitted pod's usage to ``status.used`` and refuses a pod
that exceeds it, as in any cluster. No kubelet runs either: pods created with
``spec.nodeName`` stay bound and Pending, which is what the check counts.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes import config as kube_config

from gitsync.capacity import Fit, check, cluster_pods
from gitsync.cli import main
from gitsync.diff.classify import Options
from gitsync.kube.capacity import CLUSTER_LABEL, pending_reasons, read_cluster
from gitsync.kube.rayservices import RayServicesClient
from gitsync.kube.rest import request
from gitsync.kube.state import StateStore
from gitsync.model import Action, Outcome, ServiceKey, StepKind, WaveEvent
from gitsync.plan import plan_markdown
from gitsync.planning import live_plans
from gitsync.previews import PreviewReconciler
from gitsync.progress import Lines
from gitsync.source.git import GitSource
from gitsync.sync import sync_once
from testbed.controlplane import ControlPlane
from testbed.simulator import FailureRule, Simulator

from .gitops import GitOpsRepo, git

GPU = "nvidia.com/gpu"
CAPACITY_RBAC = Path(__file__).resolve().parents[2] / "deploy" / "capacity" / "rbac.yaml"
GPU_TAINT = {"key": GPU, "value": "present", "effect": "NoSchedule"}


def node_body(name: str, allocatable: dict[str, str], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": spec,
        "status": {"allocatable": allocatable, "capacity": allocatable},
    }


@pytest.fixture(scope="module")
def nodes(api: client.ApiClient) -> Iterator[dict[str, str]]:
    """A CPU node and a tainted node with two GPUs, deleted afterwards (Nodes are cluster-wide:
    other modules must not see them)."""
    suffix = uuid.uuid4().hex[:6]
    names = {"cpu": f"cpu-{suffix}", "gpu": f"gpu-{suffix}"}
    bodies = [
        node_body(names["cpu"], {"cpu": "16", "memory": "64Gi", "pods": "110"}),
        node_body(
            names["gpu"],
            {"cpu": "16", "memory": "64Gi", GPU: "2", "pods": "110"},
            taints=[GPU_TAINT],
        ),
    ]
    for body in bodies:
        node = request(api, "POST", "/api/v1/nodes", body=body)
        # The API server's TaintNodesByCondition admission taints a new node
        # node.kubernetes.io/not-ready:NoSchedule (the check would rightly place nothing
        # there); the node lifecycle controller removes it once the kubelet reports Ready.
        # Neither runs here: the test does the controller's part.
        not_ready = {"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}
        assert not_ready in node["spec"]["taints"]
        node["spec"]["taints"] = body["spec"].get("taints", [])
        request(api, "PUT", f"/api/v1/nodes/{node['metadata']['name']}", body=node)
    try:
        yield names
    finally:
        for name in names.values():
            request(api, "DELETE", f"/api/v1/nodes/{name}")


def create_quota(api: client.ApiClient, namespace: str, hard: dict[str, str]) -> None:
    path = f"/api/v1/namespaces/{namespace}/resourcequotas"
    body = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "compute"}}
    quota = request(api, "POST", path, body={**body, "spec": {"hard": hard}})
    # What the quota controller would write on creation (see the module docstring).
    quota["status"] = {"hard": hard, "used": dict.fromkeys(hard, "0")}
    request(api, "PUT", f"{path}/compute/status", body=quota)


def used(api: client.ApiClient, namespace: str) -> dict[str, str]:
    quota = request(api, "GET", f"/api/v1/namespaces/{namespace}/resourcequotas/compute")
    return dict(quota["status"]["used"])


def bind_pod(
    api: client.ApiClient, namespace: str, name: str, node: str, requests: dict[str, str]
) -> None:
    """A pod bound to ``node``, admitted by the API server's quota admission. Admission reads
    quotas from its informer: until that has seen the status set just now, it admits without
    counting, so a pod that was not counted is deleted and created again."""
    # An extended resource is never overcommitted: its limit must equal its request.
    extended = {k: v for k, v in requests.items() if k not in ("cpu", "memory")}
    resources = {"requests": requests, **({"limits": extended} if extended else {})}
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "c", "image": "x", "resources": resources}],
        },
    }
    path = f"/api/v1/namespaces/{namespace}/pods"
    deadline = time.monotonic() + 10
    while True:
        before = used(api, namespace).get("pods")
        request(api, "POST", path, body=body)
        if used(api, namespace).get("pods") != before:
            return
        assert time.monotonic() < deadline, "quota admission never counted the pod"
        request(api, "DELETE", f"{path}/{name}", query={"gracePeriodSeconds": "0"})
        time.sleep(0.2)


@pytest.fixture
def crowded(
    api: client.ApiClient, namespace: str, nodes: dict[str, str]
) -> Iterator[dict[str, str]]:
    """``namespace`` with a quota for one GPU, which a pod bound to the GPU node holds. Its
    pods are deleted afterwards (no namespace controller runs to delete them with it)."""
    create_quota(
        api, namespace, {"requests.cpu": "20", "requests.nvidia.com/gpu": "1", "pods": "20"}
    )
    bind_pod(api, namespace, "holder", nodes["gpu"], {"cpu": "1", GPU: "1"})
    yield nodes
    client.CoreV1Api(api).delete_collection_namespaced_pod(namespace, grace_period_seconds=0)


def test_the_reader_sees_quotas_nodes_and_the_pods_bound_to_them(
    api: client.ApiClient, namespace: str, crowded: dict[str, str]
) -> None:
    # The API server's own quota admission counted the bound pod…
    assert used(api, namespace) == {
        "pods": "1",
        "requests.cpu": "1",
        "requests.nvidia.com/gpu": "1",
    }
    # … and refuses a second GPU pod: the quota is full.
    with pytest.raises(client.ApiException) as refused:
        bind_pod(api, namespace, "another", crowded["gpu"], {"cpu": "1", GPU: "1"})
    assert refused.value.status == 403
    assert "exceeded quota: compute" in json.loads(refused.value.body)["message"]
    # A container without a CPU request is refused by a quota on requests.cpu; the check
    # predicts the same for a cluster whose pods have one.
    with pytest.raises(client.ApiException) as unset:
        bind_pod(api, namespace, "bare", crowded["cpu"], {"memory": "1Gi"})
    assert "must specify requests.cpu" in json.loads(unset.value.body)["message"]
    bare = {"containers": [{"name": "c", "resources": {"requests": {"memory": "1Gi"}}}]}
    manifest = {"spec": {"rayClusterConfig": {"headGroupSpec": {"template": {"spec": bare}}}}}
    verdict = check(cluster_pods(manifest), read_cluster(api, namespace))
    assert verdict.fit is Fit.DOES_NOT_FIT
    assert "quota compute: requests.cpu: the quota makes every container set it" in verdict.summary
    # A finished pod holds nothing on its node.
    done = f"/api/v1/namespaces/{namespace}/pods"
    bind_pod(api, namespace, "done", crowded["cpu"], {"cpu": "3"})
    pod = request(api, "GET", f"{done}/done")
    pod["status"] = {"phase": "Succeeded"}
    request(api, "PUT", f"{done}/done/status", body=pod)

    cluster = read_cluster(api, namespace)
    assert cluster.quotas is not None
    (quota,) = cluster.quotas
    assert quota.hard["requests.nvidia.com/gpu"] == quota.used["requests.nvidia.com/gpu"] == 1
    assert cluster.nodes is not None
    mine = {n.name: n for n in cluster.nodes if n.name in crowded.values()}
    gpu, cpu = mine[crowded["gpu"]], mine[crowded["cpu"]]
    assert gpu.allocatable[GPU] == 2
    assert gpu.used == {"cpu": 1, GPU: 1, "pods": 1}
    assert gpu.taints == (GPU_TAINT,)
    assert cpu.used == {}  # "done" Succeeded
    assert gpu.labels["kubernetes.io/hostname"] == crowded["gpu"]


def client_for(kubeconfig: Path) -> client.ApiClient:
    configuration = client.Configuration()
    kube_config.load_kube_config(str(kubeconfig), client_configuration=configuration)
    return client.ApiClient(configuration)


def test_without_rbac_the_check_is_unknown_and_names_what_it_may_not_read(
    control_plane: ControlPlane, namespace: str, nodes: dict[str, str], tmp_path: Path
) -> None:
    kubeconfig = control_plane.service_account_kubeconfig(namespace, "nobody", tmp_path / "k")
    with client_for(kubeconfig) as nobody:
        cluster = read_cluster(nobody, namespace)
    assert cluster.quotas is None
    assert cluster.nodes is None
    account = f"system:serviceaccount:{namespace}:nobody"
    assert f'"{account}" cannot list resource "resourcequotas"' in cluster.quotas_unknown
    assert f'"{account}" cannot list resource "nodes"' in cluster.nodes_unknown
    assert "deploy/capacity/rbac.yaml" in cluster.nodes_unknown


def test_the_optional_rbac_lets_the_agent_read_all_of_it(
    control_plane: ControlPlane, api: client.ApiClient, nodes: dict[str, str], tmp_path: Path
) -> None:
    for name in ("gitsync-system", "ray-staging", "ray-production", "ray-previews"):
        control_plane.kubectl("create", "namespace", name, check=False)
    kubeconfig = control_plane.service_account_kubeconfig(
        "gitsync-system", "gitsync", tmp_path / "agent.kubeconfig"
    )
    with client_for(kubeconfig) as agent:
        before = read_cluster(agent, "ray-staging")
        assert before.quotas is None
        assert before.nodes is None
        control_plane.kubectl("apply", "--server-side", "-f", str(CAPACITY_RBAC))
        try:
            deadline = time.monotonic() + 10  # the authorizer's informers catch up
            while (after := read_cluster(agent, "ray-staging")).nodes is None:
                assert time.monotonic() < deadline, after
                time.sleep(0.1)
        finally:
            # Later modules check the shipped RBAC without this optional part: gone, and the
            # authorizer knows it.
            control_plane.kubectl("delete", "-f", str(CAPACITY_RBAC), "--wait=false")
            deadline = time.monotonic() + 10
            while read_cluster(agent, "ray-staging").nodes is not None:
                assert time.monotonic() < deadline, "the capacity RBAC still applies"
                time.sleep(0.1)
    assert after.quotas == ()
    assert not after.quotas_unknown
    assert {n.name for n in after.nodes or ()} >= set(nodes.values())


def staging_checkout(repo: GitOpsRepo, check: str) -> None:
    def edit(root: Path) -> None:
        config = yaml.safe_load((root / "gitsync.yaml").read_text())
        config["environments"][0]["capacityCheck"] = check
        (root / "gitsync.yaml").write_text(yaml.safe_dump(config))

    repo.commit(edit, f"capacityCheck: {check}")


def test_the_plan_says_which_new_cluster_fits_and_by_how_much_one_does_not(
    api: client.ApiClient,
    namespace: str,
    crowded: dict[str, str],
    tmp_path: Path,
    control_plane: ControlPlane,
    capsys: pytest.CaptureFixture[str],
) -> None:
    repo = GitOpsRepo(tmp_path / "gitops", namespace)
    [plan] = live_plans(repo.work, ["staging"], RayServicesClient(api), Options())
    verdicts = {key.name: v for key, v in plan.capacity.items()}
    assert {c.key.name: c.action for c in plan.changes} == dict.fromkeys(
        ("embedder", "ranker", "summarizer"), Action.CREATE
    )
    assert verdicts["embedder"].fit is Fit.FITS
    assert verdicts["embedder"].requests == {"cpu": 3, "memory": 12 * 2**30}
    assert verdicts["ranker"].fit is Fit.FITS
    summarizer = verdicts["summarizer"]
    assert summarizer.fit is Fit.DOES_NOT_FIT
    (short,) = summarizer.shortfalls  # the GPU node has one GPU free: only the quota is short
    assert (short.where, short.resource) == ("quota compute", "requests.nvidia.com/gpu")
    assert (short.needed, short.available, short.missing) == (Fraction(1), Fraction(0), Fraction(1))

    kube = ["--kubeconfig", str(control_plane.kubeconfig)]
    main(["plan", str(repo.work), "--env", "staging", *kube])
    table = capsys.readouterr().out
    assert (
        "! capacity: does not fit: quota compute: requests.nvidia.com/gpu needs 1, "
        "0 available, 1 missing" in table
    )
    assert "- capacity: fits (2 pods: cpu 3, memory 12Gi)" in table
    main(["plan", str(repo.work), "--env", "staging", "-o", "json", *kube])
    env = json.loads(capsys.readouterr().out)  # one environment: its plan
    fits = {c["name"]: c["capacity"]["fit"] for w in env["waves"] for c in w["changes"]}
    assert fits == {"embedder": "fits", "ranker": "fits", "summarizer": "does-not-fit"}
    assert env["capacityCheck"] == "warn"
    # Markdown, as the pull request comment shows it.
    markdown = plan_markdown([plan], "0" * 40, repo.revisions[-1], capacity=True)
    assert "⚠ `capacity: does not fit: quota compute: requests.nvidia.com/gpu" in markdown
    assert "--capacity -o markdown` prints the same" in markdown

    # `plan --from/--to` is Git against Git: with --capacity only does it read the cluster.
    def swap(root: Path) -> None:
        path = root / "environments" / "staging" / "summarizer.yaml"
        path.write_text(path.read_text().replace("py311", "py312"))

    repo.commit(swap, "a new summarizer image")
    offline = ["plan", str(repo.work), "--from", repo.revisions[0], "--to", "HEAD"]
    offline += ["--env", "staging", "-o", "json", *kube]

    def offline_verdicts(*extra: str) -> dict[str, Any]:
        main([*offline, *extra])
        env = json.loads(capsys.readouterr().out)
        return {c["name"]: c["capacity"] for w in env["waves"] for c in w["changes"]}

    assert offline_verdicts()["summarizer"] is None
    assert offline_verdicts("--capacity")["summarizer"]["fit"] == "does-not-fit"

    # Off: nothing is read, nothing is said.
    staging_checkout(repo, "off")
    [plan] = live_plans(repo.work, ["staging"], RayServicesClient(api), Options())
    assert plan.capacity == {}
    assert plan.capacity_check == "off"


def test_warn_rolls_out_a_swap_that_does_not_fit_and_block_halts_before_its_wave(
    api: client.ApiClient,
    namespace: str,
    crowded: dict[str, str],
    sim: Simulator,
    tmp_path: Path,
) -> None:
    repo = GitOpsRepo(tmp_path / "gitops", namespace)
    config = repo.agent_config(tmp_path / "cache")
    lines: list[str] = []

    def sync() -> Any:
        return sync_once(
            config, RayServicesClient(api), StateStore(api, namespace), observer=Lines(lines.append)
        )

    # warn: the plan says the summarizer does not fit; the rollout goes on (the simulator
    # starts clusters without pods, so it succeeds).
    assert sync().ok
    summarizer = ServiceKey(namespace, "summarizer")
    assert any(
        f"staging: warning: {summarizer}: does not fit: quota compute" in line for line in lines
    ), lines

    # A cluster swap of each wave-1 service (a new worker image); block.
    def swap(root: Path) -> None:
        for name in ("ranker.yaml", "summarizer.yaml"):
            path = root / "environments" / "staging" / name
            path.write_text(path.read_text().replace("py311", "py312"))

    repo.commit(swap, "new images")
    staging_checkout(repo, "block")
    [plan] = live_plans(repo.work, ["staging"], RayServicesClient(api), Options())
    swaps = {c.key.name for c in plan.changes if c.action is Action.CLUSTER_SWAP}
    assert swaps == {"ranker", "summarizer"}
    assert plan.capacity[ServiceKey(namespace, "ranker")].fit is Fit.FITS
    lines.clear()
    result = sync()
    [outcome] = result.results
    assert outcome.outcome is Outcome.FAILED
    assert "capacityCheck is block and the pods this wave starts do not fit" in outcome.message
    assert "requests.nvidia.com/gpu needs 1, 0 available, 1 missing" in outcome.message
    # Nothing of the wave was applied: the live objects keep the old images.
    for name in ("ranker", "summarizer"):
        live = client.CustomObjectsApi(api).get_namespaced_custom_object(
            "ray.io", "v1", namespace, "rayservices", name
        )
        assert "py312" not in json.dumps(live["spec"]["rayClusterConfig"]), name
    assert StateStore(api, namespace).read("staging").phase.value == "failed"  # type: ignore[union-attr]


def strand(api: client.ApiClient, namespace: str, cluster: str) -> tuple[str, str]:
    """What a cluster that cannot run leaves behind, made as KubeRay and the scheduler would:
    a worker pod the quota refused (the API server's own error, recorded by KubeRay as a
    Warning Event on the RayCluster) and a head pod the scheduler found no node for. Returns
    the quota's refusal and the scheduler's message."""
    worker = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{cluster}-gpu-worker-x", "labels": {CLUSTER_LABEL: cluster}},
        "spec": {
            "containers": [
                {"name": "w", "image": "x", "resources": {"limits": {"cpu": "1", GPU: "1"}}}
            ]
        },
    }
    with pytest.raises(client.ApiException) as refused:
        request(api, "POST", f"/api/v1/namespaces/{namespace}/pods", body=worker)
    error = json.loads(refused.value.body)["message"]
    # raycluster_controller.go: "Failed to create worker Pod for the cluster %s/%s, %v"
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{cluster}.1"},
        "involvedObject": {"kind": "RayCluster", "name": cluster, "namespace": namespace},
        "type": "Warning",
        "reason": "FailedToCreateWorkerPod",
        "message": f"Failed to create worker Pod for the cluster {namespace}/{cluster}, {error}",
    }
    request(api, "POST", f"/api/v1/namespaces/{namespace}/events", body=event)
    # No scheduler runs here: the test writes the condition it would.
    head = {**worker, "metadata": {"name": f"{cluster}-head", "labels": {CLUSTER_LABEL: cluster}}}
    head["spec"] = {
        "containers": [{"name": "h", "image": "x", "resources": {"requests": {"cpu": "1"}}}]
    }
    created = request(api, "POST", f"/api/v1/namespaces/{namespace}/pods", body=head)
    why = "0/2 nodes are available: 2 Insufficient cpu. preemption: 0/2 nodes are available."
    created["status"]["conditions"] = [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": why}
    ]
    request(api, "PUT", f"/api/v1/namespaces/{namespace}/pods/{cluster}-head/status", body=created)
    return error, why


def test_a_stuck_clusters_pods_are_explained_in_the_api_servers_words(
    api: client.ApiClient, namespace: str, crowded: dict[str, str]
) -> None:
    cluster = "summarizer-raycluster-abcde"
    error, why = strand(api, namespace, cluster)
    explained = pending_reasons(api, namespace, cluster)
    assert explained == f"FailedToCreateWorkerPod: {error}; 1 pod unschedulable: {why}"
    assert "exceeded quota: compute" in explained
    assert pending_reasons(api, namespace, "another-cluster") is None


class Watched(Lines):
    """Progress lines, Events and wave events of a rollout, as lists."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.events: list[tuple[ServiceKey, str, str, str]] = []
        self.waves: list[WaveEvent] = []
        super().__init__(self.lines.append, lambda *event: self.events.append(event))

    def wave(self, environment: str, event: WaveEvent) -> None:
        self.waves.append(event)


def test_a_swap_whose_pods_do_not_run_says_why_while_it_waits(
    api: client.ApiClient, namespace: str, crowded: dict[str, str], sim: Simulator, tmp_path: Path
) -> None:
    repo = GitOpsRepo(tmp_path / "gitops", namespace)
    config = repo.agent_config(tmp_path / "cache", health_timeout=15.0)
    assert sync_once(config, RayServicesClient(api), StateStore(api, namespace)).ok
    summarizer = ServiceKey(namespace, "summarizer")

    def swap(root: Path) -> None:
        path = root / "environments" / "staging" / "summarizer.yaml"
        path.write_text(path.read_text().replace("py311", "py312"))

    repo.commit(swap, "a new summarizer image")
    # The new cluster's app never finishes deploying, so the swap never finishes.
    sim.add_rule(FailureRule(status="DEPLOYING", namespace=namespace, service="summarizer"))
    watched = Watched()
    done: list[Any] = []
    rollout = threading.Thread(
        target=lambda: done.append(
            sync_once(config, RayServicesClient(api), StateStore(api, namespace), observer=watched)
        )
    )
    rollout.start()
    custom = client.CustomObjectsApi(api)
    deadline = time.monotonic() + 10
    while not (
        cluster := custom.get_namespaced_custom_object(
            "ray.io", "v1", namespace, "rayservices", "summarizer"
        )
        .get("status", {})
        .get("pendingServiceStatus", {})
        .get("rayClusterName")
    ):
        assert time.monotonic() < deadline, "no pending cluster"
        time.sleep(0.1)
    error, why = strand(api, namespace, cluster)
    rollout.join(60)
    [result] = done[0].results
    reason = f"FailedToCreateWorkerPod: {error}; 1 pod unschedulable: {why}"
    # The wave's commit status and the status page say why, not only "waiting"…
    details = [w.detail for w in watched.waves if w.kind is StepKind.WAITING and w.detail]
    assert details == [f"summarizer: {reason}"]
    # … so do the progress line and one Warning Event on the service …
    assert any(f"waiting for {cluster}; {reason}" in line for line in watched.lines), watched.lines
    pending = [e for e in watched.events if e[2] == "ClusterPodsPending"]
    assert pending == [(summarizer, "Warning", "ClusterPodsPending", reason)]
    # … and the health timeout's failure.
    assert result.outcome is Outcome.FAILED
    assert result.message.startswith(f"{summarizer} not Healthy after 15s (wave 1)")
    assert reason in result.message


def test_a_later_wave_is_checked_again_and_an_in_place_growth_is_checked_too(
    api: client.ApiClient, namespace: str, nodes: dict[str, str], sim: Simulator, tmp_path: Path
) -> None:
    create_quota(
        api, namespace, {"requests.cpu": "40", "requests.nvidia.com/gpu": "2", "pods": "20"}
    )
    bind_pod(api, namespace, "holder", nodes["gpu"], {"cpu": "1", GPU: "1"})
    repo = GitOpsRepo(tmp_path / "gitops", namespace)
    config = repo.agent_config(tmp_path / "cache")
    assert sync_once(config, RayServicesClient(api), StateStore(api, namespace)).ok
    staging_checkout(repo, "block")

    def swap(root: Path) -> None:
        for name in ("embedder.yaml", "summarizer.yaml"):
            path = root / "environments" / "staging" / name
            path.write_text(path.read_text().replace("py311", "py312"))

    repo.commit(swap, "new images for the embedder (wave 0) and the summarizer (wave 1)")
    [plan] = live_plans(repo.work, ["staging"], RayServicesClient(api), Options())
    summarizer, embedder = ServiceKey(namespace, "summarizer"), ServiceKey(namespace, "embedder")
    assert plan.capacity[summarizer].fit is Fit.FITS  # one GPU of the quota's two is free

    class Intruder(Watched):
        """Takes the quota's last GPU while wave 0 applies, as another team's pod would."""

        def wave(self, environment: str, event: WaveEvent) -> None:
            super().wave(environment, event)
            if event.kind is StepKind.APPLYING and event.index == 1:
                bind_pod(api, namespace, "intruder", nodes["gpu"], {"cpu": "1", GPU: "1"})

    watched = Intruder()
    result = sync_once(config, RayServicesClient(api), StateStore(api, namespace), observer=watched)
    [outcome] = result.results
    assert outcome.outcome is Outcome.FAILED
    assert outcome.message.startswith(
        "capacityCheck is block and the pods this wave starts do not fit: "
        f"{summarizer}: does not fit: quota compute: requests.nvidia.com/gpu needs 1, "
        "0 available, 1 missing"
    ), outcome.message
    assert outcome.applied == (embedder,)  # wave 0 went out; wave 1 was not applied

    # A cluster-in-place change (an appended GPU worker group) is checked as well: its pods.
    def grow(root: Path) -> None:
        path = root / "environments" / "staging" / "embedder.yaml"
        doc = yaml.safe_load(path.read_text())
        cluster = doc["spec"]["rayClusterConfig"]
        gpu = {**cluster["workerGroupSpecs"][0], "groupName": "gpu", "replicas": 2}
        gpu["template"] = yaml.safe_load(
            (root / "environments" / "staging" / "summarizer.yaml").read_text()
        )["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]
        cluster["workerGroupSpecs"].append(gpu)
        path.write_text(yaml.safe_dump(doc))

    repo.commit(grow, "two GPU workers for the embedder")
    [plan] = live_plans(repo.work, ["staging"], RayServicesClient(api), Options())
    assert {c.key: c.action for c in plan.changes}[embedder] is Action.CLUSTER_IN_PLACE
    grown = plan.capacity[embedder]
    assert (grown.fit, grown.pods, grown.requests.get(GPU)) == (Fit.DOES_NOT_FIT, 2, Fraction(2))
    [outcome] = sync_once(config, RayServicesClient(api), StateStore(api, namespace)).results
    assert outcome.outcome is Outcome.FAILED
    assert f"{embedder}: does not fit: quota compute: requests.nvidia.com/gpu needs 2" in (
        outcome.message
    )
    assert outcome.applied == ()
    client.CoreV1Api(api).delete_collection_namespaced_pod(namespace, grace_period_seconds=0)


def test_a_preview_that_does_not_fit_its_namespaces_quota_is_refused_with_the_reason(
    api: client.ApiClient, sim: Simulator, namespace: str, nodes: dict[str, str], tmp_path: Path
) -> None:
    previews_ns = f"pv-{uuid.uuid4().hex[:8]}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": previews_ns}})
    create_quota(api, previews_ns, {"requests.cpu": "64", "requests.nvidia.com/gpu": "0"})
    repo = GitOpsRepo(
        tmp_path / "gitops", namespace, previews={"namespace": previews_ns, "branches": "preview/*"}
    )
    config = repo.agent_config(tmp_path / "cache")  # git notes: no forge
    assert sync_once(config, RayServicesClient(api), StateStore(api, namespace)).ok
    work = repo.work
    git("checkout", "-q", "-B", "preview/7", "main", cwd=work)
    path = work / "environments" / "staging" / "summarizer.yaml"
    path.write_text(path.read_text().replace("num_replicas: 1", "num_replicas: 2", 1))
    git("commit", "-q", "-am", "two summarizer replicas", cwd=work)
    git("push", "-q", "origin", "preview/7", cwd=work)
    git("checkout", "-q", "main", cwd=work)
    reconciler = PreviewReconciler(
        config, RayServicesClient(api), StateStore(api, namespace), GitSource(config.repository)
    )
    try:
        [result] = reconciler.reconcile()
    finally:
        client.CoreV1Api(api).delete_namespace(previews_ns)
    assert (result.number, result.outcome) == (7, "failed")
    assert "quota compute: requests.nvidia.com/gpu needs 1, 0 available, 1 missing" in (
        result.message
    )
    # Refused before anything was applied.
    listed = client.CustomObjectsApi(api).list_namespaced_custom_object(
        "ray.io", "v1", previews_ns, "rayservices"
    )
    assert listed["items"] == []
