"""gitsync.kuberay mirrors KubeRay v1.5.0's cluster decisions; tables per rule."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from gitsync import kuberay
from gitsync.kuberay import ClusterChange


def cluster(**worker_overrides: Any) -> dict[str, Any]:
    worker = {
        "groupName": "cpu",
        "replicas": 1,
        "minReplicas": 1,
        "maxReplicas": 4,
        "numOfHosts": 1,
        "rayStartParams": {},
        "template": {
            "spec": {"containers": [{"name": "ray-worker", "image": "rayproject/ray:2.49.0"}]}
        },
    }
    worker.update(worker_overrides)
    return {
        "rayVersion": "2.49.0",
        "headGroupSpec": {
            "rayStartParams": {"dashboard-host": "0.0.0.0"},
            "template": {
                "spec": {"containers": [{"name": "ray-head", "image": "rayproject/ray:2.49.0"}]}
            },
        },
        "workerGroupSpecs": [worker],
    }


def edit(spec: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    result = copy.deepcopy(spec)
    target: Any = result
    parts = path.split(".")
    for part in parts[:-1]:
        target = target[int(part)] if part.isdigit() else target[part]
    last = parts[-1]
    if value is DELETE:
        del target[last]
    elif last.isdigit():
        target[int(last)] = value
    else:
        target[last] = value
    return result


DELETE = object()
BASE = cluster()


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        # Muted by generateHashWithoutReplicasAndWorkersToDelete: no new cluster, not propagated.
        ("workerGroupSpecs.0.replicas", 5, ClusterChange.UNCHANGED),
        ("workerGroupSpecs.0.minReplicas", 0, ClusterChange.UNCHANGED),
        ("workerGroupSpecs.0.maxReplicas", 2147483647, ClusterChange.UNCHANGED),
        (
            "workerGroupSpecs.0.scaleStrategy",
            {"workersToDelete": ["pod-a"]},
            ClusterChange.UNCHANGED,
        ),
        ("workerGroupSpecs.0.scaleStrategy", {}, ClusterChange.UNCHANGED),
        # Everything else is hashed.
        (
            "workerGroupSpecs.0.template.spec.containers.0.image",
            "rayproject/ray:2.50.0",
            ClusterChange.NEW_CLUSTER,
        ),
        (
            "headGroupSpec.template.spec.containers.0.image",
            "rayproject/ray:2.50.0",
            ClusterChange.NEW_CLUSTER,
        ),
        ("headGroupSpec.rayStartParams.num-cpus", "0", ClusterChange.NEW_CLUSTER),
        ("workerGroupSpecs.0.numOfHosts", 2, ClusterChange.NEW_CLUSTER),
        ("workerGroupSpecs.0.groupName", "cpu2", ClusterChange.NEW_CLUSTER),
        ("rayVersion", "2.50.0", ClusterChange.NEW_CLUSTER),
        ("enableInTreeAutoscaling", True, ClusterChange.NEW_CLUSTER),
        ("suspend", True, ClusterChange.NEW_CLUSTER),  # muted only from v1.7
        ("workerGroupSpecs", DELETE, ClusterChange.NEW_CLUSTER),  # removing groups
    ],
)
def test_single_field_edits(path: str, value: Any, expected: ClusterChange) -> None:
    assert kuberay.classify_cluster_change(BASE, edit(BASE, path, value)) is expected


def test_appending_a_worker_group_updates_in_place() -> None:
    goal = copy.deepcopy(BASE)
    goal["workerGroupSpecs"].append(
        {**copy.deepcopy(BASE["workerGroupSpecs"][0]), "groupName": "gpu"}
    )
    assert kuberay.classify_cluster_change(BASE, goal) is ClusterChange.IN_PLACE


def test_appending_to_a_cluster_without_workers_updates_in_place() -> None:
    bare = edit(BASE, "workerGroupSpecs", DELETE)
    assert kuberay.classify_cluster_change(bare, BASE) is ClusterChange.IN_PLACE


def test_appending_while_editing_an_existing_group_needs_a_new_cluster() -> None:
    goal = edit(
        BASE, "workerGroupSpecs.0.template.spec.containers.0.image", "rayproject/ray:2.50.0"
    )
    goal["workerGroupSpecs"].append(
        {**copy.deepcopy(BASE["workerGroupSpecs"][0]), "groupName": "gpu"}
    )
    assert kuberay.classify_cluster_change(BASE, goal) is ClusterChange.NEW_CLUSTER


def test_inserting_a_group_before_the_existing_ones_needs_a_new_cluster() -> None:
    goal = copy.deepcopy(BASE)
    goal["workerGroupSpecs"].insert(
        0, {**copy.deepcopy(BASE["workerGroupSpecs"][0]), "groupName": "gpu"}
    )
    assert kuberay.classify_cluster_change(BASE, goal) is ClusterChange.NEW_CLUSTER


def test_hash_ignores_key_order_and_is_stable() -> None:
    reordered = dict(reversed(list(BASE.items())))
    assert kuberay.cluster_spec_hash(reordered) == kuberay.cluster_spec_hash(BASE)
    assert kuberay.cluster_spec_hash(BASE) == kuberay.cluster_spec_hash(copy.deepcopy(BASE))


def test_muting_does_not_modify_its_input() -> None:
    spec = cluster(scaleStrategy={"workersToDelete": ["a"]})
    before = copy.deepcopy(spec)
    kuberay.muted_cluster_spec(spec)
    assert spec == before


@pytest.mark.parametrize(
    ("spec", "env", "expected"),
    [
        ({}, True, True),
        ({}, False, False),  # ENABLE_ZERO_DOWNTIME=false on the operator
        ({"upgradeStrategy": {"type": "NewCluster"}}, False, True),  # explicit type wins
        ({"upgradeStrategy": {"type": "None"}}, True, False),
        (
            {"upgradeStrategy": {"type": "NewClusterWithIncrementalUpgrade"}},
            True,
            False,
        ),  # gate off
        ({"upgradeStrategy": {}}, True, True),
    ],
)
def test_zero_downtime(spec: dict[str, Any], env: bool, expected: bool) -> None:
    assert kuberay.zero_downtime_enabled(spec, operator_env_zero_downtime=env) is expected


def test_application_names_default_and_order() -> None:
    text = "applications:\n  - name: b\n    import_path: x:y\n  - import_path: z:w\n"
    assert kuberay.serve_application_names(text) == ["b", "default"]
    assert kuberay.serve_application_names("") == []


@pytest.mark.parametrize(
    "text", ["- a\n- b\n", "applications: 3\n", "applications: [1]\n", "a: [\n"]
)
def test_application_names_reject_malformed(text: str) -> None:
    with pytest.raises(ValueError, match="serveConfigV2"):
        kuberay.serve_application_names(text)


def with_head_limits(**limits: Any) -> dict[str, Any]:
    spec = copy.deepcopy(BASE)
    spec["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"] = {"limits": limits}
    return spec


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        # KubeRay hashes the typed spec: resource.Quantity marshals in canonical form, so a
        # quantity spelled differently is no change (the differential suite found gitsync
        # predicting a cluster swap for 4Gi → 4096Mi that the operator never made).
        ({"memory": "4Gi"}, {"memory": "4096Mi"}, ClusterChange.UNCHANGED),
        ({"cpu": "2"}, {"cpu": 2}, ClusterChange.UNCHANGED),
        ({"cpu": "1"}, {"cpu": "1000m"}, ClusterChange.UNCHANGED),
        ({"cpu": "500m"}, {"cpu": 0.5}, ClusterChange.UNCHANGED),
        ({"memory": "1.5Gi"}, {"memory": "1536Mi"}, ClusterChange.UNCHANGED),
        # Different formats marshal differently: a new cluster.
        ({"memory": "1Gi"}, {"memory": "1073741824"}, ClusterChange.NEW_CLUSTER),
        ({"cpu": "1k"}, {"cpu": "1e3"}, ClusterChange.NEW_CLUSTER),
        ({"memory": "4Gi"}, {"memory": "8Gi"}, ClusterChange.NEW_CLUSTER),
    ],
)
def test_resource_quantities_are_compared_as_kuberay_marshals_them(
    before: dict[str, Any], after: dict[str, Any], expected: ClusterChange
) -> None:
    assert (
        kuberay.classify_cluster_change(with_head_limits(**before), with_head_limits(**after))
        is expected
    )


@pytest.mark.parametrize(
    ("value", "canonical"),
    [("4Gi", "4294967296000000000n/i"), ("2", "2000000000n/d"), ("1e3", "1000000000000n/e")],
)
def test_canonical_quantity(value: str, canonical: str) -> None:
    assert kuberay.canonical_quantity(value) == canonical
    assert kuberay.canonical_quantity("lots") is None
