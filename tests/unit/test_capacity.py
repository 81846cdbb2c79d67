"""The capacity check on values: a new cluster's pods and requests, quotas, node placement,
verdicts and a wave's clusters checked together."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import pytest
import yaml

from gitsync.capacity import (
    Cluster,
    Fit,
    Node,
    Pod,
    Quota,
    added_pods,
    check,
    check_wave,
    cluster_pods,
    format_amount,
    may_land_on,
    pending_explanation,
    pod_resources,
    quota_usage,
    total_requests,
)
from gitsync.manifests.quantity import parse_quantity
from gitsync.manifests.repoconfig import load_repo_config
from gitsync.model import Action, Change, ServiceKey
from gitsync.plan import Plan, Wave, plan_json, plan_markdown, plan_table

GPU = "nvidia.com/gpu"


def q(text: str) -> Fraction:
    value = parse_quantity(text)
    assert value is not None
    return value


def amounts(**raw: str) -> dict[str, Fraction]:
    return {k.replace("_", "/").replace("nvidia/", "nvidia.com/"): q(v) for k, v in raw.items()}


def container(
    requests: dict[str, str] | None = None, limits: dict[str, str] | None = None
) -> dict[str, Any]:
    resources: dict[str, Any] = {}
    if requests is not None:
        resources["requests"] = requests
    if limits is not None:
        resources["limits"] = limits
    return {"name": "c", "image": "ray", "resources": resources}


def service(
    head: dict[str, Any] | None = None,
    workers: list[dict[str, Any]] | None = None,
    **cluster: Any,
) -> dict[str, Any]:
    head_spec = head or {"containers": [container({"cpu": "1", "memory": "2Gi"})]}
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": "svc", "namespace": "ns"},
        "spec": {
            "rayClusterConfig": {
                "headGroupSpec": {"template": {"spec": head_spec}},
                "workerGroupSpecs": workers or [],
                **cluster,
            }
        },
    }


def worker(name: str, spec: dict[str, Any], **counts: Any) -> dict[str, Any]:
    return {"groupName": name, "template": {"spec": spec}, **counts}


GPU_POD = {"containers": [container({"cpu": "4", "memory": "16Gi"}, {GPU: "1"})]}


# --- requests ---------------------------------------------------------------------------


def test_limits_stand_in_for_unset_requests_per_resource() -> None:
    # requests.cpu is set, memory and the GPU only as limits: the API server defaults them.
    spec = {"containers": [container({"cpu": "500m"}, {"cpu": "2", "memory": "1Gi", GPU: "2"})]}
    requests, limits = pod_resources(spec)
    assert requests == {"cpu": q("500m"), "memory": q("1Gi"), GPU: 2}
    assert limits == {"cpu": 2, "memory": q("1Gi"), GPU: 2}


def test_init_containers_count_by_the_effective_request_rule() -> None:
    spec = {
        "initContainers": [
            container({"cpu": "3", "memory": "100Mi"}),  # runs alone: max, not sum
            container({"cpu": "1", "memory": "4Gi"}),
        ],
        "containers": [container({"cpu": "1", "memory": "1Gi"}), container({"cpu": "1500m"})],
        "overhead": {"cpu": "100m"},
    }
    requests, _ = pod_resources(spec)
    assert requests["cpu"] == q("3") + q("100m")  # max(1 + 1.5, 3) + overhead
    assert requests["memory"] == q("4Gi")  # max(1Gi, 4Gi)


def test_a_sidecar_init_container_runs_alongside_and_adds() -> None:
    sidecar = {**container({"cpu": "250m"}), "restartPolicy": "Always"}
    spec = {"initContainers": [sidecar], "containers": [container({"cpu": "1"})]}
    assert pod_resources(spec)[0]["cpu"] == q("1250m")


def test_a_cluster_is_its_head_and_each_group_at_max_of_replicas_and_min() -> None:
    manifest = service(
        workers=[
            worker("gpu", GPU_POD, replicas=1, minReplicas=3, maxReplicas=5),
            worker("cpu", {"containers": [container({"cpu": "2"})]}, replicas=2, numOfHosts=2),
            worker("off", GPU_POD, replicas=4, suspend=True),
        ]
    )
    pods = cluster_pods(manifest)
    assert [p.group for p in pods] == ["head", "gpu", "gpu", "gpu", "cpu", "cpu", "cpu", "cpu"]
    verdict = check(pods, Cluster(quotas=(), nodes=()))
    assert verdict.requests == {"cpu": 1 + 12 + 8, "memory": q("2Gi") + 3 * q("16Gi"), GPU: 3}


def test_the_autoscaler_sidecar_is_counted_on_the_head() -> None:
    pods = cluster_pods(service(enableInTreeAutoscaling=True))
    assert pods[0].requests == {"cpu": q("1500m"), "memory": q("2Gi") + q("512Mi")}
    custom = {"resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}
    pods = cluster_pods(service(enableInTreeAutoscaling=True, autoscalerOptions=custom))
    assert pods[0].requests == {"cpu": 2, "memory": q("3Gi")}


# --- quotas -----------------------------------------------------------------------------


def test_quota_names_map_to_requests_limits_and_pod_counts() -> None:
    pods = cluster_pods(service(workers=[worker("gpu", GPU_POD, replicas=2)]))
    assert quota_usage("requests.cpu", pods) == 9
    assert quota_usage("cpu", pods) == 9
    assert quota_usage("memory", pods) == q("34Gi")
    assert quota_usage("requests.nvidia.com/gpu", pods) == 2
    assert quota_usage("limits.nvidia.com/gpu", pods) == 2
    assert quota_usage("limits.cpu", pods) == 0  # no container sets a cpu limit
    assert quota_usage("pods", pods) == 3
    assert quota_usage("count/pods", pods) == 3
    assert quota_usage("services", pods) is None


def test_a_quota_with_room_fits_and_one_without_names_what_is_missing() -> None:
    pods = cluster_pods(service(workers=[worker("gpu", GPU_POD, replicas=2)]))
    roomy = Quota(
        "compute",
        amounts(requests_cpu="20", **{"requests_nvidia_gpu": "4"}),
        amounts(requests_cpu="10", **{"requests_nvidia_gpu": "2"}),
    )
    assert check(pods, Cluster(quotas=(roomy,), nodes=None, nodes_unknown="x")).fit is Fit.UNKNOWN
    tight = Quota(
        "gpus", {"requests.nvidia.com/gpu": Fraction(4)}, {"requests.nvidia.com/gpu": Fraction(3)}
    )
    verdict = check(pods, Cluster(quotas=(roomy, tight), nodes=None, nodes_unknown="x"))
    assert verdict.fit is Fit.DOES_NOT_FIT
    (short,) = verdict.shortfalls
    assert (short.where, short.resource) == ("quota gpus", "requests.nvidia.com/gpu")
    assert (short.needed, short.available, short.missing) == (Fraction(2), Fraction(1), Fraction(1))
    assert "quota gpus: requests.nvidia.com/gpu needs 2, 1 available, 1 missing" in verdict.summary


def test_a_quota_not_yet_computed_is_unknown_never_a_guess() -> None:
    pods = cluster_pods(service())
    fresh = Quota("new", {"requests.cpu": Fraction(100)}, {})
    verdict = check(pods, Cluster(quotas=(fresh,), nodes=()))
    assert verdict.fit is Fit.UNKNOWN
    assert any("no usage for requests.cpu yet" in u for u in verdict.unknown)


def test_scoped_quotas_count_only_the_pods_they_select() -> None:
    pods = cluster_pods(service())  # requests cpu and memory: not BestEffort
    best_effort = Quota("be", {"pods": Fraction(0)}, {"pods": Fraction(0)}, scopes=("BestEffort",))
    nodes = (Node("n", amounts(cpu="8", memory="32Gi", pods="10"), {}),)
    assert check(pods, Cluster(quotas=(best_effort,), nodes=nodes)).fit is Fit.FITS
    high = Quota(
        "high",
        {"pods": Fraction(0)},
        {"pods": Fraction(0)},
        scope_selector=({"scopeName": "PriorityClass", "operator": "In", "values": ["high"]},),
    )
    assert check(pods, Cluster(quotas=(high,), nodes=nodes)).fit is Fit.FITS
    manifest = service(
        head={**{"priorityClassName": "high"}, "containers": [container({"cpu": "1"})]}
    )
    assert (
        check(cluster_pods(manifest), Cluster(quotas=(high,), nodes=nodes)).fit is Fit.DOES_NOT_FIT
    )
    odd = Quota(
        "odd", {"pods": Fraction(9)}, {"pods": Fraction(0)}, scopes=("CrossNamespacePodAffinity",)
    )
    assert check(pods, Cluster(quotas=(odd,), nodes=nodes)).fit is Fit.UNKNOWN


# --- nodes ------------------------------------------------------------------------------


def gpu_node(name: str, gpus: str = "2", **extra: Any) -> Node:
    extra.setdefault("used", {})
    return Node(name, amounts(cpu="16", memory="64Gi", pods="110", nvidia_gpu=gpus), **extra)


def test_tolerations_selectors_and_required_affinity_pick_the_nodes() -> None:
    taint = {"key": GPU, "value": "present", "effect": "NoSchedule"}
    node = gpu_node("g1", labels={"pool": "gpu", "zone": "a"}, taints=(taint,))
    plain = Pod("w", {}, {})
    assert not may_land_on(plain, node)
    tolerant = Pod("w", {}, {}, tolerations=({"key": GPU, "operator": "Exists"},))
    assert may_land_on(tolerant, node)
    assert may_land_on(Pod("w", {}, {}, tolerations=({"operator": "Exists"},)), node)
    wrong_value = ({"key": GPU, "operator": "Equal", "value": "no"},)
    assert not may_land_on(Pod("w", {}, {}, tolerations=wrong_value), node)
    prefer = {**taint, "effect": "PreferNoSchedule"}
    assert may_land_on(plain, gpu_node("g2", taints=(prefer,)))
    assert not may_land_on(
        Pod("w", {}, {}, node_selector={"pool": "cpu"}), gpu_node("g3", labels={"pool": "gpu"})
    )
    term = {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b", "c"]}]}
    other = {"matchExpressions": [{"key": "pool", "operator": "Exists"}]}
    assert not may_land_on(
        Pod("w", {}, {}, tolerations=tolerant.tolerations, node_terms=(term,)), node
    )
    assert may_land_on(
        Pod("w", {}, {}, tolerations=tolerant.tolerations, node_terms=(term, other)), node
    )
    assert not may_land_on(plain, gpu_node("g4", unschedulable=True))


def test_bound_pods_take_their_requests_from_the_node() -> None:
    pods = cluster_pods(service(workers=[worker("gpu", GPU_POD, replicas=2)]))
    nodes = (
        gpu_node("a", used=amounts(cpu="2", memory="4Gi", pods="3", nvidia_gpu="2")),
        gpu_node("b", used=amounts(nvidia_gpu="1", pods="1")),
    )
    verdict = check(pods, Cluster(quotas=(), nodes=nodes))
    assert verdict.fit is Fit.DOES_NOT_FIT
    (short,) = verdict.shortfalls
    assert (short.where, short.resource) == ("nodes", GPU)
    assert (short.needed, short.available) == (Fraction(1), Fraction(0))
    assert "1 gpu pod fits on no node" in verdict.summary
    free = (gpu_node("a", used=amounts(nvidia_gpu="1", pods="1")), nodes[1])
    assert check(pods, Cluster(quotas=(), nodes=free)).fit is Fit.FITS


def test_a_pod_bigger_than_any_node_is_named_with_the_closest_node() -> None:
    big = {"containers": [container({"cpu": "4", "memory": "16Gi"}, {GPU: "4"})]}
    pods = cluster_pods(service(workers=[worker("big", big, replicas=1)]))
    verdict = check(pods, Cluster(quotas=(), nodes=(gpu_node("a"), gpu_node("b"))))
    (short,) = verdict.shortfalls
    assert short.resource == GPU
    assert (short.needed, short.available, short.missing) == (Fraction(4), Fraction(2), Fraction(2))


def test_no_eligible_node_says_so() -> None:
    taint = {"key": "dedicated", "value": "x", "effect": "NoExecute"}
    pods = cluster_pods(service())
    verdict = check(pods, Cluster(quotas=(), nodes=(gpu_node("a", taints=(taint,)),)))
    assert verdict.fit is Fit.DOES_NOT_FIT
    assert "no node matches the head pod's nodeSelector" in verdict.summary


def test_unreadable_nodes_or_an_empty_node_list_are_unknown() -> None:
    pods = cluster_pods(service())
    forbidden = Cluster(quotas=(), nodes=None, nodes_unknown="403: cannot list nodes")
    verdict = check(pods, forbidden)
    assert verdict.fit is Fit.UNKNOWN
    assert verdict.summary == "unknown: nodes: 403: cannot list nodes"
    assert check(pods, Cluster(quotas=(), nodes=())).fit is Fit.UNKNOWN
    # A quota that does not fit is known even when the nodes are not.
    tight = Quota("cpu", {"cpu": Fraction(0)}, {"cpu": Fraction(0)})
    assert (
        check(pods, Cluster(quotas=(tight,), nodes=None, nodes_unknown="403")).fit
        is Fit.DOES_NOT_FIT
    )


# --- a wave -----------------------------------------------------------------------------


def test_a_waves_clusters_are_checked_together() -> None:
    one = cluster_pods(service(workers=[worker("gpu", GPU_POD, replicas=1)]))
    quota = Quota(
        "gpus", {"requests.nvidia.com/gpu": Fraction(3)}, {"requests.nvidia.com/gpu": Fraction(1)}
    )
    cluster = Cluster(quotas=(quota,), nodes=(gpu_node("a", gpus="2"),))
    a, b, c = (ServiceKey("ns", n) for n in "abc")
    alone = check_wave({a: one}, cluster)
    assert alone[a].fit is Fit.FITS
    together = check_wave({c: one, a: one, b: one}, cluster)
    assert [together[k].fit for k in (a, b, c)] == [Fit.FITS, Fit.FITS, Fit.DOES_NOT_FIT]
    shortfalls = {s.where: s for s in together[c].shortfalls}
    assert shortfalls["quota gpus"].available == 0
    assert shortfalls["nodes"].resource == GPU


@pytest.mark.parametrize(
    ("resource", "value", "shown"),
    [
        ("cpu", "500m", "500m"),
        ("requests.cpu", "2", "2"),
        ("memory", "1536Mi", "1.5Gi"),
        ("limits.memory", "512Mi", "512Mi"),
        ("memory", "100", "100"),
        (GPU, "3", "3"),
    ],
)
def test_amounts_are_shown_as_quantities(resource: str, value: str, shown: str) -> None:
    assert format_amount(resource, q(value)) == shown


# --- in the plan ------------------------------------------------------------------------


def swap_plan(capacity_check: str) -> Plan:
    key, other = ServiceKey("ns", "ranker"), ServiceKey("ns", "embedder")
    changes = (
        Change(key, Action.CLUSTER_SWAP, 0, "new RayCluster"),
        Change(other, Action.CREATE, 0, "created"),
    )
    pods = cluster_pods(service(workers=[worker("gpu", GPU_POD, replicas=2)]))
    tight = Quota(
        "gpus", {"requests.nvidia.com/gpu": Fraction(2)}, {"requests.nvidia.com/gpu": Fraction(1)}
    )
    cluster = Cluster(quotas=(tight,), nodes=None, nodes_unknown="cannot list nodes: 403")
    verdicts = check_wave({key: pods, other: cluster_pods(service())}, cluster)
    return Plan("staging", "ns", None, "a" * 40, (Wave(0, changes),), verdicts, capacity_check)


def test_every_output_of_the_plan_shows_the_verdict() -> None:
    plan = swap_plan("warn")
    table = plan_table(plan)
    assert (
        "      ! capacity: does not fit: quota gpus: requests.nvidia.com/gpu needs 2, "
        "1 available, 1 missing\n" in table
    )
    assert "      ! capacity: unknown: nodes: cannot list nodes: 403\n" in table
    data = plan_json(plan)
    ranker = data["waves"][0]["changes"][0]["capacity"]
    assert ranker["fit"] == "does-not-fit"
    assert ranker["shortfalls"][0] == {
        "where": "quota gpus",
        "resource": "requests.nvidia.com/gpu",
        "needed": "2",
        "available": "1",
        "missing": "1",
    }
    assert data["capacityCheck"] == "warn"
    markdown = plan_markdown([plan], "b" * 40, "a" * 40)
    assert "  - ⚠ `capacity: does not fit: quota gpus: requests.nvidia.com/gpu needs 2" in markdown


def test_only_block_refuses_a_wave_and_names_the_resource() -> None:
    keys = [ServiceKey("ns", "ranker"), ServiceKey("ns", "embedder")]
    assert swap_plan("warn").capacity_refusal(keys) is None
    assert swap_plan("warn").misfits(keys) == (
        "ns/ranker: does not fit: quota gpus: requests.nvidia.com/gpu needs 2, 1 available, "
        "1 missing",
    )
    refusal = swap_plan("block").capacity_refusal(keys)
    assert refusal is not None
    assert "requests.nvidia.com/gpu needs 2, 1 available, 1 missing" in refusal
    assert swap_plan("block").capacity_refusal([keys[1]]) is None  # unknown is not a refusal
    assert "the rollout stops before this wave" in plan_table(swap_plan("block"))


@pytest.mark.parametrize(
    ("value", "ok"), [("warn", True), ("block", True), ("off", True), ("on", False), (True, False)]
)
def test_capacity_check_is_warn_block_or_off(value: object, ok: bool) -> None:
    text = yaml.safe_dump(
        {"environments": [{"name": "s", "path": "s", "namespace": "n", "capacityCheck": value}]}
    )
    config, problems = load_repo_config(text)
    if ok:
        assert config is not None
        assert config.environments[0].capacity_check == value
    else:
        assert [p.message for p in problems] == ["capacityCheck must be one of warn, block, off"]


def test_capacity_check_defaults_to_warn() -> None:
    config, _ = load_repo_config("environments: [{name: s, path: s, namespace: n}]\n")
    assert config is not None
    assert config.environments[0].capacity_check == "warn"


def test_a_quota_on_cpu_or_memory_refuses_pods_whose_containers_leave_them_unset() -> None:
    # The head sets cpu and memory; the worker's sidecar sets nothing.
    bare = {"containers": [container({"cpu": "1", "memory": "1Gi"}), container()]}
    pods = cluster_pods(service(workers=[worker("w", bare, replicas=1)]))
    nodes = (Node("n", amounts(cpu="8", memory="32Gi", pods="10"), {}),)
    quota = Quota("q", {"requests.cpu": Fraction(100)}, {"requests.cpu": Fraction(0)})
    verdict = check(pods, Cluster(quotas=(quota,), nodes=nodes))
    assert verdict.fit is Fit.DOES_NOT_FIT
    assert verdict.summary == (
        "does not fit: quota q: requests.cpu: the quota makes every container set it and the "
        "API server refuses pods that do not: some container of the w pods does not"
    )
    # Extended resources are not required; limits only when the quota limits them.
    gpus = Quota(
        "g", {"requests.nvidia.com/gpu": Fraction(4)}, {"requests.nvidia.com/gpu": Fraction(0)}
    )
    assert check(pods, Cluster(quotas=(gpus,), nodes=nodes)).fit is Fit.FITS
    limited = Quota("l", {"limits.memory": Fraction(2**40)}, {"limits.memory": Fraction(0)})
    assert (
        check(cluster_pods(service()), Cluster(quotas=(limited,), nodes=nodes)).fit
        is Fit.DOES_NOT_FIT
    )


# --- while a new cluster starts -----------------------------------------------------------


def unschedulable(message: str, phase: str = "Pending") -> dict[str, Any]:
    condition = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": message,
    }
    return {"status": {"phase": phase, "conditions": [condition]}}


def test_pending_pods_and_kuberays_failed_creations_explain_a_stuck_cluster() -> None:
    why = "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."
    pods = [unschedulable(why), unschedulable(why), unschedulable(why, "Running"), {"status": {}}]
    quota = (
        'pods "svc-raycluster-x-gpu-worker-abcde" is forbidden: exceeded quota: compute, '
        "requested: requests.nvidia.com/gpu=1, used: requests.nvidia.com/gpu=1, "
        "limited: requests.nvidia.com/gpu=1"
    )
    events: list[dict[str, Any]] = [
        {
            "type": "Warning",
            "reason": "FailedToCreateWorkerPod",
            "message": f"Failed to create worker Pod for the cluster ns/svc-raycluster-x, {quota}",
            "count": 3,
        },
        {"type": "Normal", "reason": "CreatedWorkerPod", "message": "Created worker Pod"},
    ]
    assert pending_explanation(pods, events) == (
        f"FailedToCreateWorkerPod: {quota}; 2 pods unschedulable: {why}"
    )
    assert pending_explanation([{"status": {"phase": "Pending"}}], []) is None


CPU_POD = {"containers": [container({"cpu": "2", "memory": "4Gi"})]}


def test_an_in_place_change_adds_appended_groups_and_replica_growth_only() -> None:
    live = service(workers=[worker("cpu", CPU_POD, replicas=2)])
    # An appended GPU group at 3 replicas (min 1): three pods; the CPU group as it was: none.
    grown = service(
        workers=[worker("cpu", CPU_POD, replicas=2), worker("gpu", GPU_POD, replicas=3)]
    )
    pods = added_pods(live, grown)
    assert [p.group for p in pods] == ["gpu"] * 3
    # modifyRayCluster writes the whole spec: the CPU group's rise from 2 to 4 comes too …
    both = service(
        workers=[worker("cpu", CPU_POD, replicas=4), worker("gpu", GPU_POD, minReplicas=1)]
    )
    assert [p.group for p in added_pods(live, both)] == ["cpu", "cpu", "gpu"]
    # … a fall adds nothing, and neither does a suspended appended group.
    fewer = service(
        workers=[
            worker("cpu", CPU_POD, replicas=1),
            worker("gpu", GPU_POD, replicas=2, suspend=True),
        ]
    )
    assert added_pods(live, fewer) == []
    # Multi-host groups count each host.
    hosts = service(
        workers=[
            worker("cpu", CPU_POD, replicas=2),
            worker("tpu", CPU_POD, replicas=1, numOfHosts=4),
        ]
    )
    assert len(added_pods(live, hosts)) == 4
    assert total_requests(added_pods(live, grown)) == amounts(
        cpu="12", memory="48Gi", nvidia_gpu="3"
    )
