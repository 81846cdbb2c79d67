"""The test bed's own reading of KubeRay v1.5.0 (testbed/kuberay_rules.py), case by case.

Each case is one branch of the operator's Go source named in the test; none of them asks
gitsync: these rules are what gitsync's predictions are measured against.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from testbed import kuberay_rules as rules
from testbed.kuberay_rules import ClusterAnnotations


def cluster(**changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "rayVersion": "2.49.0",
        "headGroupSpec": {
            "rayStartParams": {"num-cpus": "0"},
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "ray-head",
                            "image": "ray:1",
                            "resources": {"limits": {"cpu": "2", "memory": "4Gi"}},
                        }
                    ]
                }
            },
        },
        "workerGroupSpecs": [worker("cpu")],
    }
    spec.update(changes)
    return spec


def worker(name: str, image: str = "ray:1", replicas: int = 1) -> dict[str, Any]:
    return {
        "groupName": name,
        "replicas": replicas,
        "minReplicas": 1,
        "maxReplicas": 8,
        "rayStartParams": {},
        "template": {"spec": {"containers": [{"name": "ray-worker", "image": image}]}},
    }


def annotations(spec: dict[str, Any]) -> ClusterAnnotations:
    return ClusterAnnotations.of(spec)


# -- generateHashWithoutReplicasAndWorkersToDelete --------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("replicas", 5),
        ("minReplicas", 0),
        ("maxReplicas", 100),
        ("scaleStrategy", {"workersToDelete": ["pod-a"]}),
        ("scaleStrategy", {}),
    ],
)
def test_muted_worker_fields_do_not_change_the_hash(field: str, value: object) -> None:
    edited = cluster()
    edited["workerGroupSpecs"][0][field] = value
    assert rules.spec_hash(edited) == rules.spec_hash(cluster())


@pytest.mark.parametrize(
    "edit",
    [
        lambda s: s["headGroupSpec"]["template"]["spec"]["containers"][0].update(image="ray:2"),
        lambda s: s["headGroupSpec"]["rayStartParams"].update({"num-cpus": "1"}),
        lambda s: s["workerGroupSpecs"][0]["rayStartParams"].update({"num-gpus": "1"}),
        lambda s: s["workerGroupSpecs"][0].update(groupName="gpu"),
        lambda s: s["workerGroupSpecs"][0].update(idleTimeoutSeconds=60),
        lambda s: s.update(rayVersion="2.50.0"),
        lambda s: s.update(enableInTreeAutoscaling=True),
        # A *bool: false is written, so it differs from absent.
        lambda s: s.update(enableInTreeAutoscaling=False),
        # rayStartParams is not omitempty: an absent map is null, an empty one {}.
        lambda s: s["workerGroupSpecs"][0].pop("rayStartParams"),
    ],
)
def test_every_other_field_is_hashed(edit: Any) -> None:
    edited = cluster()
    edit(edited)
    assert rules.spec_hash(edited) != rules.spec_hash(cluster())


@pytest.mark.parametrize(
    "edit",
    [
        lambda s: s.update(headServiceAnnotations={}),
        lambda s: s.update(rayVersion=""),
        lambda s: s["headGroupSpec"].update(labels={}, resources={}, serviceType=""),
        lambda s: s["workerGroupSpecs"][0].update(labels={}, resources={}, numOfHosts=0),
    ],
)
def test_empty_omitempty_values_equal_absent_ones(edit: Any) -> None:
    base = cluster()
    del base["rayVersion"]
    edited = copy.deepcopy(base)
    edit(edited)
    assert rules.spec_hash(edited) == rules.spec_hash(base)


def test_an_empty_worker_group_list_equals_none() -> None:
    assert rules.spec_hash(cluster(workerGroupSpecs=[])) == rules.spec_hash(
        {k: v for k, v in cluster().items() if k != "workerGroupSpecs"}
    )


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        ("4Gi", "4096Mi", True),
        ("1", 1, True),
        ("1", "1000m", True),
        ("1000", "1k", True),
        ("0.5", "500m", True),
        ("1.5Gi", "1536Mi", True),
        ("1Gi", "1073741824", False),  # binary and decimal formats marshal differently
        ("1e3", "1k", False),  # an exponent keeps its format
        ("2", "3", False),
    ],
)
def test_resource_quantities_compare_in_canonical_form(a: object, b: object, equal: bool) -> None:
    first, second = cluster(), cluster()
    first["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = a
    second["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = b
    assert (rules.spec_hash(first) == rules.spec_hash(second)) is equal


def test_the_hash_does_not_edit_its_input() -> None:
    spec = cluster()
    before = copy.deepcopy(spec)
    rules.spec_hash(spec)
    assert spec == before


# -- shouldUpdateCluster / isClusterSpecHashEqual -----------------------------------------------


def test_appended_worker_groups_update_the_cluster_in_place() -> None:
    running = annotations(cluster())
    goal = cluster(workerGroupSpecs=[worker("cpu"), worker("gpu")])
    assert rules.should_update_cluster(goal, running, is_active=True, upgrade_in_progress=False)
    assert not rules.should_prepare_new_cluster(goal, None, {}, running, None)


def test_appended_groups_with_muted_edits_to_existing_ones_are_still_in_place() -> None:
    running = annotations(cluster())
    goal = cluster(workerGroupSpecs=[worker("cpu", replicas=4), worker("gpu")])
    assert rules.should_update_cluster(goal, running, is_active=True, upgrade_in_progress=False)


@pytest.mark.parametrize(
    "groups",
    [
        [worker("gpu"), worker("cpu")],  # prepended, not appended
        [worker("cpu", image="ray:2"), worker("gpu")],  # an existing group changed too
        [],  # removed
    ],
)
def test_other_worker_group_changes_need_a_new_cluster(groups: list[dict[str, Any]]) -> None:
    running = annotations(cluster(workerGroupSpecs=[worker("cpu")]))
    goal = cluster(workerGroupSpecs=groups)
    assert not rules.should_update_cluster(goal, running, is_active=True, upgrade_in_progress=False)
    assert rules.should_prepare_new_cluster(goal, None, {}, running, None)


def test_the_active_cluster_is_not_updated_during_an_upgrade() -> None:
    running = annotations(cluster())
    goal = cluster(workerGroupSpecs=[worker("cpu"), worker("gpu")])
    assert not rules.should_update_cluster(goal, running, is_active=True, upgrade_in_progress=True)
    assert rules.should_update_cluster(goal, running, is_active=False, upgrade_in_progress=True)


def test_an_unchanged_or_muted_goal_updates_nothing() -> None:
    running = annotations(cluster())
    muted = cluster(workerGroupSpecs=[worker("cpu", replicas=7)])
    for goal in (cluster(), muted):
        assert not rules.should_update_cluster(
            goal, running, is_active=True, upgrade_in_progress=False
        )
        assert not rules.should_prepare_new_cluster(goal, None, {}, running, None)


def test_no_cluster_is_never_updated() -> None:
    assert not rules.should_update_cluster(
        cluster(), None, is_active=False, upgrade_in_progress=False
    )


# -- shouldPrepareNewCluster / isZeroDowntimeUpgradeEnabled -------------------------------------


def test_a_new_rayservice_prepares_its_first_cluster() -> None:
    assert rules.should_prepare_new_cluster(cluster(), None, {}, None, None)
    assert rules.should_prepare_new_cluster(cluster(), {"type": "None"}, {}, None, None)


def test_the_goal_is_compared_with_the_pending_cluster_first() -> None:
    active = annotations(cluster())
    pending = annotations(cluster(rayVersion="2.50.0"))
    assert not rules.should_prepare_new_cluster(
        cluster(rayVersion="2.50.0"), None, {}, active, pending
    )
    # Back to the active spec during a swap: it differs from the pending one, a new cluster.
    assert rules.should_prepare_new_cluster(cluster(), None, {}, active, pending)
    assert not rules.should_prepare_new_cluster(
        cluster(rayVersion="2.51.0"), None, {}, active, pending, pending_serving=True
    )


@pytest.mark.parametrize(
    ("strategy", "env", "enabled"),
    [
        (None, {}, True),
        ({}, {}, True),
        ({"type": "NewCluster"}, {}, True),
        ({"type": "None"}, {}, False),
        # The incremental type needs the RayServiceIncrementalUpgrade feature gate (off).
        ({"type": "NewClusterWithIncrementalUpgrade"}, {}, False),
        (None, {"ENABLE_ZERO_DOWNTIME": "false"}, False),
        (None, {"ENABLE_ZERO_DOWNTIME": "FALSE"}, False),
        (None, {"ENABLE_ZERO_DOWNTIME": "0"}, True),  # only the word false disables it
        (None, {"ENABLE_ZERO_DOWNTIME": "true"}, True),
        ({"type": "NewCluster"}, {"ENABLE_ZERO_DOWNTIME": "false"}, True),  # the type wins
        ({"type": "None"}, {"ENABLE_ZERO_DOWNTIME": "true"}, False),
    ],
)
def test_zero_downtime(strategy: dict[str, str] | None, env: dict[str, str], enabled: bool) -> None:
    assert rules.is_zero_downtime_upgrade_enabled(strategy, env) is enabled
    running = annotations(cluster())
    goal = cluster(rayVersion="2.50.0")
    assert rules.should_prepare_new_cluster(goal, strategy, env, running, None) is enabled


# -- checkIfNeedSubmitServeApplications ---------------------------------------------------------

CONFIG = "applications:\n  - name: app\n    import_path: m:app\n"


@pytest.mark.parametrize(
    ("cached", "goal", "apps", "submit"),
    [
        ("", CONFIG, 0, True),  # nothing cached for this cluster
        (CONFIG, CONFIG, 0, True),  # the head lost its applications
        (CONFIG, CONFIG, 1, False),
        (CONFIG, CONFIG.replace("m:app", "m2:app"), 1, True),
        # Compared as strings: the same config written differently is PUT again.
        (CONFIG, "applications:\n- name: app\n  import_path: m:app\n", 1, True),
        (CONFIG, CONFIG + "\n", 1, True),
    ],
)
def test_serve_config_submission(cached: str, goal: str, apps: int, submit: bool) -> None:
    assert rules.need_submit_serve_applications(cached, goal, apps) is submit


def test_an_unnamed_application_is_reported_as_default() -> None:
    assert rules.app_name(None) == rules.app_name("") == "default"
    assert rules.app_name("embed") == "embed"


# -- ValidateRayServiceMetadata -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "annotations", "valid"),
    [
        ("a" * 47, {}, True),
        ("a" * 48, {}, False),  # MaxRayServiceNameLength = 53 - 6
        ("Embedder", {}, False),  # not a DNS-1035 label
        ("1embedder", {}, False),
        ("embedder-", {}, False),
        ("embedder", {"ray.io/initializing-timeout": "30s"}, True),
        ("embedder", {"ray.io/initializing-timeout": "1h30m"}, True),
        ("embedder", {"ray.io/initializing-timeout": "120"}, True),
        ("embedder", {"ray.io/initializing-timeout": ""}, True),
        ("embedder", {"ray.io/initializing-timeout": "0s"}, False),
        ("embedder", {"ray.io/initializing-timeout": "-5"}, False),
        ("embedder", {"ray.io/initializing-timeout": "soon"}, False),
    ],
)
def test_rayservice_metadata(name: str, annotations: dict[str, str], valid: bool) -> None:
    error = rules.validate_rayservice_metadata({"name": name, "annotations": annotations})
    assert (error is None) is valid, error


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("30s", 30.0), ("5m", 300.0), ("1h30m", 5400.0), ("1.5s", 1.5), ("90", 90.0), ("x", None)],
)
def test_initializing_timeout(value: str, seconds: float | None) -> None:
    assert rules.parse_initializing_timeout(value) == seconds
