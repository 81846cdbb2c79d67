"""The KubeRay simulator's pure state machine, driven with a fake clock (no API server).

The same scenarios run against the real API server in tests/integration/test_simulator.py;
these pin the transitions step by step, including the GET-before-PUT race.
"""

from __future__ import annotations

import copy
from typing import Any

from testbed.simulator import Delays, FailureRule, RayServiceKey, SimulatedRayService

SERVE = "applications:\n  - name: app\n    import_path: m:app\n    deployments:\n      - name: D\n"
SERVE_V2 = SERVE + "        num_replicas: 2\n"


def rayservice(
    generation: int = 1, serve: str = SERVE, image: str = "ray:1", **spec: Any
) -> dict[str, Any]:
    return {
        "metadata": {"name": "svc", "namespace": "ns", "generation": generation, "annotations": {}},
        "spec": {
            "serveConfigV2": serve,
            "rayClusterConfig": {
                "headGroupSpec": {
                    "template": {"spec": {"containers": [{"name": "h", "image": image}]}}
                },
                "workerGroupSpecs": [
                    {"groupName": "w", "replicas": 1, "minReplicas": 0, "maxReplicas": 3}
                ],
            },
            **spec,
        },
    }


class Driver:
    def __init__(self, rules: list[FailureRule] | None = None) -> None:
        self.sim = SimulatedRayService(
            RayServiceKey("ns", "svc"),
            Delays(cluster_start=1.0, app_deploy=1.0, requeue=0.0),
            lambda: rules or [],
        )
        self.now = 0.0
        self.status: dict[str, Any] = {}

    def step(self, obj: dict[str, Any], advance: float = 0.0) -> dict[str, Any]:
        self.now += advance
        obj = {**copy.deepcopy(obj), "status": self.status}
        self.status = self.sim.reconcile(obj, self.now, 1_700_000_000 + self.now)
        return self.status

    def settle(self, obj: dict[str, Any]) -> dict[str, Any]:
        for _ in range(4):
            self.step(obj, 1.0)
        return self.status


def cond(status: dict[str, Any], kind: str) -> tuple[str, str]:
    found = next(c for c in status["conditions"] if c["type"] == kind)
    return found["status"], found["reason"]


def apps(status: dict[str, Any], side: str = "activeServiceStatus") -> dict[str, str]:
    return {k: v["status"] for k, v in status[side].get("applicationStatuses", {}).items()}


def test_first_creation_goes_through_a_pending_cluster() -> None:
    d = Driver()
    s = d.step(rayservice())
    assert cond(s, "Ready") == ("False", "Initializing")
    assert cond(s, "UpgradeInProgress") == ("False", "Initializing")
    assert s["activeServiceStatus"] == {}
    pending = s["pendingServiceStatus"]["rayClusterName"]
    assert pending.startswith("svc-")
    assert len(pending) == len("svc-") + 5
    s = d.step(rayservice(), 1.0)  # head ready: config submitted; statuses read before the PUT
    assert apps(s, "pendingServiceStatus") == {}
    s = d.step(rayservice(), 0.1)
    assert apps(s, "pendingServiceStatus") == {"app": "DEPLOYING"}
    s = d.step(rayservice(), 1.0)  # RUNNING: promoted in the same reconcile
    assert s["activeServiceStatus"]["rayClusterName"] == pending
    assert s["pendingServiceStatus"] == {}
    assert apps(s) == {"app": "RUNNING"}
    assert cond(s, "Ready") == ("True", "NonZeroServeEndpoints")
    assert cond(s, "UpgradeInProgress") == ("False", "NoPendingCluster")
    assert s["numServeEndpoints"] == 2
    assert s["serviceStatus"] == "Running"


def test_serve_change_is_in_place_with_the_stale_status_race() -> None:
    d = Driver()
    s = d.settle(rayservice())
    active = s["activeServiceStatus"]["rayClusterName"]
    s = d.step(rayservice(generation=2, serve=SERVE_V2))
    # The reconcile that PUTs the new config reports the old RUNNING with the new generation.
    assert s["observedGeneration"] == 2
    assert apps(s) == {"app": "RUNNING"}
    s = d.step(rayservice(generation=2, serve=SERVE_V2), 0.1)
    assert apps(s) == {"app": "DEPLOYING"}
    assert s["activeServiceStatus"]["applicationStatuses"]["app"]["serveDeploymentStatuses"] == {
        "D": {"status": "UPDATING"}
    }
    assert cond(s, "Ready") == ("True", "NonZeroServeEndpoints")
    s = d.step(rayservice(generation=2, serve=SERVE_V2), 1.0)
    assert apps(s) == {"app": "RUNNING"}
    assert s["activeServiceStatus"]["rayClusterName"] == active
    assert s["pendingServiceStatus"] == {}


def test_image_change_swaps_clusters_and_old_keeps_old_serve_config() -> None:
    d = Driver()
    s = d.settle(rayservice())
    old = s["activeServiceStatus"]["rayClusterName"]
    s = d.step(rayservice(generation=2, image="ray:2", serve=SERVE_V2))
    new = s["pendingServiceStatus"]["rayClusterName"]
    assert new != old
    assert cond(s, "UpgradeInProgress") == ("True", "BothActivePendingClustersExist")
    assert cond(s, "Ready") == ("True", "NonZeroServeEndpoints")
    assert d.sim.active is not None
    assert d.sim.active.serve_config == SERVE
    s = d.settle(rayservice(generation=2, image="ray:2", serve=SERVE_V2))
    assert s["activeServiceStatus"]["rayClusterName"] == new
    assert s["pendingServiceStatus"] == {}
    assert cond(s, "UpgradeInProgress") == ("False", "NoPendingCluster")
    assert d.sim.active.serve_config == SERVE_V2


def test_replicas_only_change_touches_nothing_but_the_generation() -> None:
    d = Driver()
    before = d.settle(rayservice())
    changed = rayservice(generation=2)
    changed["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].update(
        replicas=3, minReplicas=1, maxReplicas=9
    )
    after = d.settle(changed)
    strip = lambda s: {k: v for k, v in s.items() if k not in ("observedGeneration", "conditions")}  # noqa: E731
    assert strip(after) == strip(before)
    assert after["numServeEndpoints"] == before["numServeEndpoints"]  # not propagated
    assert after["observedGeneration"] == 2


def test_upgrade_strategy_none_ignores_cluster_changes_but_applies_serve() -> None:
    d = Driver()
    s = d.settle(rayservice(upgradeStrategy={"type": "None"}))
    old = s["activeServiceStatus"]["rayClusterName"]
    s = d.settle(
        rayservice(generation=2, image="ray:2", serve=SERVE_V2, upgradeStrategy={"type": "None"})
    )
    assert s["activeServiceStatus"]["rayClusterName"] == old
    assert s["pendingServiceStatus"] == {}
    assert d.sim.active is not None
    assert d.sim.active.serve_config == SERVE_V2


def test_injected_failure_keeps_the_pending_cluster_and_old_serving() -> None:
    rule = FailureRule(
        status="DEPLOY_FAILED",
        message="ModuleNotFoundError: no module named 'm2'",
        import_path="m2:app",
    )
    d = Driver([rule])
    s = d.settle(rayservice())
    broken = SERVE.replace("m:app", "m2:app")
    s = d.settle(rayservice(generation=2, image="ray:2", serve=broken))
    assert apps(s, "pendingServiceStatus") == {"app": "DEPLOY_FAILED"}
    assert s["pendingServiceStatus"]["applicationStatuses"]["app"]["message"].startswith(
        "ModuleNotFoundError"
    )
    # During a swap Reconcile calls reconcileServe for the pending cluster only: the active
    # one keeps serving, but calculateStatus reports none of its applications.
    assert apps(s) == {}
    assert s["activeServiceStatus"]["rayClusterName"]
    assert d.sim.active is not None
    assert d.sim.active.apps["app"].status == "RUNNING"
    assert cond(s, "Ready") == ("True", "NonZeroServeEndpoints")
    assert cond(s, "UpgradeInProgress") == ("True", "BothActivePendingClustersExist")


def test_initializing_timeout_is_terminal() -> None:
    d = Driver([FailureRule()])
    obj = rayservice()
    obj["metadata"]["annotations"]["ray.io/initializing-timeout"] = "2s"
    s = d.settle(obj)
    assert cond(s, "Ready") == ("False", "InitializingTimeout")
    assert s["pendingServiceStatus"] == {}
    assert s["activeServiceStatus"] == {}
    assert d.settle(rayservice(generation=2, serve=SERVE_V2)) == s


def test_removed_application_is_deleted() -> None:
    d = Driver()
    two = SERVE + "  - name: other\n    import_path: o:app\n"
    d.settle(rayservice(serve=two))
    s = d.step(rayservice(generation=2), 0.0)
    s = d.step(rayservice(generation=2), 0.1)
    assert apps(s) == {"app": "RUNNING", "other": "DELETING"}
    s = d.settle(rayservice(generation=2))
    assert apps(s) == {"app": "RUNNING"}


def test_editing_during_a_swap_replaces_the_pending_cluster_and_revert_does_not_cancel() -> None:
    d = Driver()
    s = d.settle(rayservice())
    active = s["activeServiceStatus"]["rayClusterName"]
    first = d.step(rayservice(generation=2, image="ray:2"))["pendingServiceStatus"][
        "rayClusterName"
    ]
    second = d.step(rayservice(generation=3, image="ray:3"))["pendingServiceStatus"][
        "rayClusterName"
    ]
    assert len({active, first, second}) == 3
    # Back to the active spec: still a new pending cluster, then a swap to it.
    third = d.step(rayservice(generation=4))["pendingServiceStatus"]["rayClusterName"]
    assert third not in (active, second)
    s = d.settle(rayservice(generation=4))
    assert s["activeServiceStatus"]["rayClusterName"] == third


def test_appended_worker_group_updates_the_active_cluster_in_place() -> None:
    d = Driver()
    s = d.settle(rayservice())
    active = s["activeServiceStatus"]["rayClusterName"]
    grown = rayservice(generation=2)
    grown["spec"]["rayClusterConfig"]["workerGroupSpecs"].append(
        {"groupName": "gpu", "replicas": 1, "minReplicas": 0, "maxReplicas": 2}
    )
    s = d.settle(grown)
    assert s["activeServiceStatus"]["rayClusterName"] == active
    assert s["pendingServiceStatus"] == {}
    assert d.sim.active is not None
    assert len(d.sim.active.spec["workerGroupSpecs"]) == 2


def test_stale_statuses_last_until_kuberays_requeue() -> None:
    """The real operator reconciles again 2 s after a PUT; until then it republishes the
    statuses it read before the PUT (found against the real v1.5.0 operator)."""
    d = Driver()
    d.sim.delays = Delays(cluster_start=1.0, app_deploy=0.5, requeue=2.0)
    d.settle(rayservice())
    seen = [apps(d.step(rayservice(generation=2, serve=SERVE_V2), 0.4)) for _ in range(4)]
    assert seen[:4] == [{"app": "RUNNING"}] * 4  # 0.4 … 1.6 s: still the old statuses
    later = d.step(rayservice(generation=2, serve=SERVE_V2), 0.5)
    assert apps(later) == {"app": "RUNNING"}  # fresh now: the redeploy finished meanwhile
    assert d.sim.active is not None
    assert d.sim.active.serve_config == SERVE_V2


def test_an_edit_during_a_swap_reaches_the_pending_cluster_before_replacing_it() -> None:
    # Reconcile PUTs the new config to the pending cluster (reconcileServe) before
    # calculateStatus names the cluster that replaces it (shouldPrepareNewCluster).
    d = Driver([FailureRule(status="DEPLOYING", message="", import_path="slow:app")])
    d.settle(rayservice())
    slow = SERVE.replace("m:app", "slow:app")
    s = d.settle(rayservice(generation=2, image="ray:2", serve=slow))
    first = s["pendingServiceStatus"]["rayClusterName"]
    assert apps(s, "pendingServiceStatus") == {"app": "DEPLOYING"}
    s = d.settle(rayservice(generation=3, image="ray:3"))
    second = s["activeServiceStatus"]["rayClusterName"]
    assert second != first
    assert s["pendingServiceStatus"] == {}
    assert d.sim.submitted_to[1:] == [first, first, second]
