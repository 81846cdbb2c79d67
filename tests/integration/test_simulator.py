"""The KubeRay simulator against the real API server: every path of the KubeRay rules
(docs/architecture.md, 'KubeRay rules'), asserted on the status the API server returns (never
on the simulator's memory)."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from kubernetes import client, watch

from gitsync.model import ServiceKey
from testbed.simulator import FailureRule, Simulator

from .kube import (
    GROUP,
    PLURAL,
    VERSION,
    app_statuses,
    apply,
    condition,
    get,
    is_ready,
    load,
    wait_for,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plain-layout"


def slow_deploys(sim: Simulator) -> None:
    """Deploys that outlast KubeRay's requeue, so DEPLOYING is published at all (a deploy
    faster than the requeue is never seen, by the simulator as by the real operator)."""
    sim.delays = replace(sim.delays, app_deploy=2.0)


def ranker() -> dict[str, Any]:
    return load(EXAMPLES / "environments/staging/ranker.yaml")


def deployed(api: client.ApiClient, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    apply(api, namespace, body)
    return wait_for(
        api, namespace, body["metadata"]["name"], is_ready, "Ready with every app RUNNING"
    )


@contextmanager
def recorded_statuses(api: client.ApiClient, namespace: str) -> Iterator[list[dict[str, Any]]]:
    """Every version of the namespace's RayServices the API server sends on a watch, in order."""
    seen: list[dict[str, Any]] = []
    stop = threading.Event()
    custom = client.CustomObjectsApi(api)
    version = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["metadata"][
        "resourceVersion"
    ]

    def run() -> None:
        nonlocal version
        while not stop.is_set():
            # Short server-side timeouts end each watch cleanly, so stopping takes < 1 s.
            for event in watch.Watch().stream(
                custom.list_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                resource_version=version,
                timeout_seconds=1,
            ):
                seen.append(copy.deepcopy(event["object"]))
                version = event["object"]["metadata"]["resourceVersion"]

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(5)


def test_first_creation_becomes_ready_through_a_pending_cluster(
    api: client.ApiClient, namespace: str, sim: Simulator
) -> None:
    slow_deploys(sim)
    with recorded_statuses(api, namespace) as history:
        obj = deployed(api, namespace, ranker())
    statuses = [o.get("status") or {} for o in history]
    initializing = [s for s in statuses if s.get("conditions")]
    first = initializing[0]
    assert [(c["type"], c["status"], c["reason"]) for c in first["conditions"]] == [
        ("Ready", "False", "Initializing"),
        ("UpgradeInProgress", "False", "Initializing"),
    ]
    pending = first["pendingServiceStatus"]["rayClusterName"]
    assert pending.startswith("ranker-")
    assert any(
        (s.get("pendingServiceStatus") or {})
        .get("applicationStatuses", {})
        .get("rank", {})
        .get("status")
        == "DEPLOYING"
        for s in statuses
    )
    status = obj["status"]
    assert status["activeServiceStatus"]["rayClusterName"] == pending
    assert status["pendingServiceStatus"] == {}
    assert app_statuses(obj) == {"rank": "RUNNING", "health": "RUNNING"}
    deployments = status["activeServiceStatus"]["applicationStatuses"]["rank"][
        "serveDeploymentStatuses"
    ]
    assert deployments == {"Ranker": {"status": "HEALTHY"}, "FeatureStore": {"status": "HEALTHY"}}
    assert condition(obj, "UpgradeInProgress") == ("False", "NoPendingCluster")
    assert status["numServeEndpoints"] > 0
    assert status["observedGeneration"] == 1
    # The simulator wrote only status: gitsync is the only manager of the spec.
    others = {
        m.get("subresource", "")
        for m in obj["metadata"]["managedFields"]
        if m["manager"] != "gitsync"
    }
    assert others == {"status"}


def test_serve_config_edit_updates_in_place_with_the_stale_status_race(
    api: client.ApiClient, namespace: str, sim: Simulator
) -> None:
    slow_deploys(sim)
    body = ranker()
    before = deployed(api, namespace, body)
    active = before["status"]["activeServiceStatus"]["rayClusterName"]
    body["spec"]["serveConfigV2"] = body["spec"]["serveConfigV2"].replace(
        "num_replicas: 1", "num_replicas: 2"
    )
    with recorded_statuses(api, namespace) as history:
        applied = apply(api, namespace, body)
        after = wait_for(
            api,
            namespace,
            "ranker",
            lambda o: (
                is_ready(o)
                and o["metadata"]["generation"] == 2
                and any(app_statuses(h).get("rank") == "DEPLOYING" for h in history)
            ),
            "updated in place",
        )
    generation_two = [o for o in history if (o.get("status") or {}).get("observedGeneration") == 2]
    # KubeRay reads app statuses before the PUT: the first status with the new generation
    # still shows the old RUNNING apps.
    assert app_statuses(generation_two[0]) == {"rank": "RUNNING", "health": "RUNNING"}
    assert any(app_statuses(o).get("rank") == "DEPLOYING" for o in generation_two)
    # Unchanged apps keep running; Ready stays True throughout; no second cluster.
    assert all(app_statuses(o).get("health") == "RUNNING" for o in generation_two)
    assert all(condition(o, "Ready")[0] == "True" for o in generation_two)
    assert all(not (o["status"].get("pendingServiceStatus") or {}) for o in generation_two)
    assert applied["metadata"]["generation"] == 2
    assert after["status"]["activeServiceStatus"]["rayClusterName"] == active


def test_image_change_swaps_through_a_pending_cluster(
    api: client.ApiClient, namespace: str, sim: Simulator
) -> None:
    body = ranker()
    old = deployed(api, namespace, body)["status"]["activeServiceStatus"]["rayClusterName"]
    for group in [
        body["spec"]["rayClusterConfig"]["headGroupSpec"],
        *body["spec"]["rayClusterConfig"]["workerGroupSpecs"],
    ]:
        group["template"]["spec"]["containers"][0]["image"] = "rayproject/ray:2.50.0-py311"
    with recorded_statuses(api, namespace) as history:
        apply(api, namespace, body)
        swapping = wait_for(
            api,
            namespace,
            "ranker",
            lambda o: condition(o, "UpgradeInProgress")[0] == "True",
            "upgrading",
        )
        new = swapping["status"]["pendingServiceStatus"]["rayClusterName"]
        assert new != old
        assert swapping["status"]["activeServiceStatus"]["rayClusterName"] == old
        assert condition(swapping, "Ready") == (
            "True",
            "NonZeroServeEndpoints",
        )  # Ready lies during a swap
        assert condition(swapping, "UpgradeInProgress") == (
            "True",
            "BothActivePendingClustersExist",
        )
        done = wait_for(
            api,
            namespace,
            "ranker",
            lambda o: is_ready(o) and o["status"]["activeServiceStatus"]["rayClusterName"] == new,
            "promoted",
        )
    assert done["status"]["pendingServiceStatus"] == {}
    assert all(
        condition(o, "Ready")[0] == "True"
        for o in history
        if o.get("status", {}).get("observedGeneration") == 2
    )


def test_replicas_only_change_leaves_the_clusters_and_apps_alone(
    api: client.ApiClient, namespace: str, sim: Simulator
) -> None:
    body = ranker()
    before = deployed(api, namespace, body)
    for group in body["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        group.update(replicas=3, minReplicas=2, maxReplicas=20)
    with recorded_statuses(api, namespace) as history:
        apply(api, namespace, body)
        wait_for(
            api, namespace, "ranker", lambda o: o["status"]["observedGeneration"] == 2, "observed"
        )
        # Longer than a cluster start plus a deploy: time for anything the simulator would do.
        time.sleep(2 * (sim.delays.cluster_start + sim.delays.app_deploy))
        after = get(api, namespace, "ranker")

    def essentials(status: dict[str, Any]) -> dict[str, Any]:
        return {
            k: v
            for k, v in status.items()
            if k not in ("observedGeneration", "conditions", "lastUpdateTime")
        }

    assert essentials(after["status"]) == essentials(before["status"])
    assert [(c["type"], c["status"], c["reason"]) for c in after["status"]["conditions"]] == [
        (c["type"], c["status"], c["reason"]) for c in before["status"]["conditions"]
    ]
    # KubeRay stamps the new generation on its conditions (meta.SetStatusCondition), so the
    # one write that follows carries observedGeneration 2 and nothing else new.
    writes = [o for o in history if o.get("status", {}).get("observedGeneration") == 2]
    assert all(essentials(o["status"]) == essentials(before["status"]) for o in writes)


def test_upgrade_strategy_none_ignores_the_cluster_change(
    api: client.ApiClient, namespace: str, sim: Simulator
) -> None:
    slow_deploys(sim)
    body = ranker()
    body["spec"]["upgradeStrategy"]["type"] = "None"
    old = deployed(api, namespace, body)["status"]["activeServiceStatus"]["rayClusterName"]
    body["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0][
        "image"
    ] = "rayproject/ray:2.50.0"
    body["spec"]["serveConfigV2"] = body["spec"]["serveConfigV2"].replace("/health", "/healthz")
    with recorded_statuses(api, namespace) as history:
        apply(api, namespace, body)
        done = wait_for(
            api,
            namespace,
            "ranker",
            lambda o: (
                is_ready(o)
                and o["metadata"]["generation"] == 2
                and any(app_statuses(h).get("health") == "DEPLOYING" for h in history)
            ),
            "serve applied",
        )
    assert done["status"]["activeServiceStatus"]["rayClusterName"] == old
    assert all(not o["status"].get("pendingServiceStatus") for o in history)


def test_operator_without_zero_downtime_ignores_cluster_changes(
    api: client.ApiClient, namespace: str, sim: Simulator
) -> None:
    body = ranker()
    del body["spec"]["upgradeStrategy"]
    sim.zero_downtime_env = False  # the operator's ENABLE_ZERO_DOWNTIME=false
    old = deployed(api, namespace, body)["status"]["activeServiceStatus"]["rayClusterName"]
    body["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = "1"
    apply(api, namespace, body)
    done = wait_for(
        api, namespace, "ranker", lambda o: o["status"]["observedGeneration"] == 2, "observed"
    )
    assert done["status"]["activeServiceStatus"]["rayClusterName"] == old
    assert condition(done, "UpgradeInProgress") == ("False", "NoPendingCluster")


def test_injected_deploy_failure_shows_on_the_status(
    api: client.ApiClient, namespace: str, sim: Simulator
) -> None:
    sim.add_rule(
        FailureRule(
            status="DEPLOY_FAILED",
            message="ModuleNotFoundError: No module named 'ranker.v3'",
            namespace=namespace,
            import_path="ranker.v3:app",
        )
    )
    body = ranker()
    deployed(api, namespace, body)
    body["spec"]["serveConfigV2"] = body["spec"]["serveConfigV2"].replace(
        "ranker.serve:app", "ranker.v3:app"
    )
    apply(api, namespace, body)
    failed = wait_for(
        api,
        namespace,
        "ranker",
        lambda o: app_statuses(o).get("rank") == "DEPLOY_FAILED",
        "DEPLOY_FAILED",
    )
    rank = failed["status"]["activeServiceStatus"]["applicationStatuses"]["rank"]
    assert rank["message"] == "ModuleNotFoundError: No module named 'ranker.v3'"
    assert rank["serveDeploymentStatuses"]["Ranker"]["status"] == "UNHEALTHY"
    assert app_statuses(failed)["health"] == "RUNNING"
    # Ready stays True while an app is DEPLOY_FAILED: endpoints still exist.
    assert condition(failed, "Ready") == ("True", "NonZeroServeEndpoints")


def test_app_crash_after_running_is_unhealthy(
    api: client.ApiClient, namespace: str, sim: Simulator
) -> None:
    deployed(api, namespace, ranker())
    sim.break_app(ServiceKey(namespace, "ranker"), "health", "UNHEALTHY", "replica actor died")
    broken = wait_for(
        api,
        namespace,
        "ranker",
        lambda o: app_statuses(o).get("health") == "UNHEALTHY",
        "UNHEALTHY",
    )
    assert (
        broken["status"]["activeServiceStatus"]["applicationStatuses"]["health"]["message"]
        == "replica actor died"
    )


def test_initializing_timeout_is_reported(
    api: client.ApiClient, namespace: str, sim: Simulator
) -> None:
    sim.add_rule(FailureRule(namespace=namespace, message="cannot import"))
    body = ranker()
    body["metadata"]["annotations"]["ray.io/initializing-timeout"] = "1s"
    apply(api, namespace, body)
    failed = wait_for(
        api,
        namespace,
        "ranker",
        lambda o: condition(o, "Ready")[1] == "InitializingTimeout",
        "timed out",
    )
    assert failed["status"]["activeServiceStatus"] == {}
    assert failed["status"]["pendingServiceStatus"] == {}


def test_status_writes_never_touch_spec(
    api: client.ApiClient, namespace: str, sim: Simulator
) -> None:
    obj = deployed(api, namespace, ranker())
    assert get(api, namespace, "ranker")["spec"] == obj["spec"]
    spec_owners = {
        m["manager"]
        for m in obj["metadata"]["managedFields"]
        if "f:spec" in (m.get("fieldsV1") or {})
    }
    assert spec_owners == {"gitsync"}
