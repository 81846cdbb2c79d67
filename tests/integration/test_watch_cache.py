"""The watch-backed cache against the real API server: a warm no-op pass makes no request,
another writer's edit reaches the cache and its subscribers in well under a second (a status
write and gitsync's own apply do not), dry runs are remembered until the object changes, and
an expired or silent watch lists again without losing a change."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from gitsync.agent import Agent
from gitsync.checkout import read_tree
from gitsync.config import LeaderElection
from gitsync.kube.cache import RAYSERVICES, SELECTOR, CachedRayServices
from gitsync.kube.informer import Event, Informer, Kept, WatchSettings
from gitsync.kube.state import StateStore
from gitsync.model import ServiceKey
from gitsync.planning import environment_manifests, live_sides
from gitsync.sync import sync_once
from testbed.controlplane import ControlPlane
from testbed.simulator import FailureRule, Simulator

from .gitops import GitOpsRepo
from .kube import GROUP, PLURAL, VERSION, RequestLog


@pytest.fixture
def own_api(control_plane: ControlPlane) -> Iterator[client.ApiClient]:
    """An API client of this test's own, so its requests can be counted alone."""
    with control_plane.api_client() as api:
        yield api


def eventually(predicate: Any, timeout: float = 10.0, what: str = "condition") -> float:
    """Seconds until ``predicate()`` holds; fails after ``timeout``."""
    began = time.monotonic()
    while not predicate():
        assert time.monotonic() - began < timeout, f"never: {what}"
        time.sleep(0.01)
    return time.monotonic() - began


def patch(
    api: client.ApiClient, namespace: str, name: str, body: dict[str, Any], manager: str
) -> None:
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name, body, field_manager=manager
    )


def test_a_warm_no_op_pass_makes_no_request(
    own_api: client.ApiClient, sim: Simulator, namespace: str, tmp_path: Path
) -> None:
    """The second pass of an unchanged revision reads everything from the watches: not one
    request (the state ConfigMap is read once per pass, through its own cache)."""
    repo = GitOpsRepo(tmp_path / "gitops", namespace)
    config = repo.agent_config(tmp_path / "cache")
    services = CachedRayServices(own_api, WatchSettings())
    state = StateStore(own_api, namespace, services.informers)
    log = RequestLog(own_api)
    try:
        assert sync_once(config, services, state).ok
        assert services.informers.informer(RAYSERVICES, namespace).wait_synced(10)
        assert sync_once(config, services, state).ok  # warms what the first pass went around
        log.clear()
        assert sync_once(config, services, state).ok
        assert log.requests() == [], log.requests()
    finally:
        services.close()


def test_another_writers_edit_is_seen_and_told_within_a_second(
    api: client.ApiClient, own_api: client.ApiClient, sim: Simulator, namespace: str, tmp_path: Path
) -> None:
    repo = GitOpsRepo(tmp_path / "gitops", namespace)
    config = repo.agent_config(tmp_path / "cache")
    services = CachedRayServices(own_api, WatchSettings())
    told: list[tuple[ServiceKey, float]] = []
    services.subscribe(lambda key, old, new: told.append((key, time.monotonic())))
    try:
        assert sync_once(config, services, StateStore(own_api, namespace)).ok
        assert sync_once(config, services, StateStore(own_api, namespace)).ok
        time.sleep(1.0)  # the simulator's status writes settle
        assert told == [], "gitsync's applies and status writes are no other writer's"
        edited = time.monotonic()
        patch(
            api,
            namespace,
            "ranker",
            {"spec": {"rayClusterDeletionDelaySeconds": 77}},
            "kubectl-edit",
        )
        eventually(lambda: told, 2.0, "the edit told to the subscriber")
        assert told[0][0] == ServiceKey(namespace, "ranker")
        assert told[0][1] - edited < 1.0
        live = services.get(ServiceKey(namespace, "ranker"))
        assert live is not None
        assert live["spec"]["rayClusterDeletionDelaySeconds"] == 77
    finally:
        services.close()


def test_dry_runs_are_remembered_until_the_object_changes(
    api: client.ApiClient, own_api: client.ApiClient, sim: Simulator, namespace: str, tmp_path: Path
) -> None:
    repo = GitOpsRepo(tmp_path / "gitops", namespace)
    config = repo.agent_config(tmp_path / "cache")
    services = CachedRayServices(own_api, WatchSettings())
    try:
        assert sync_once(config, services, StateStore(own_api, namespace)).ok
        patch(api, namespace, "ranker", {"spec": {"rayClusterDeletionDelaySeconds": 61}}, "policy")
        key = ServiceKey(namespace, "ranker")
        eventually(
            lambda: (
                (services.get(key) or {}).get("spec", {}).get("rayClusterDeletionDelaySeconds")
                == 61
            )
        )
        loaded = environment_manifests(read_tree(repo.work), "staging", "t")
        revision = repo.revisions[-1]
        live_sides(loaded, services, revision)
        asked = services.dry_runs.asked
        assert asked >= 1  # the ranker: another manager owns a spec field
        live_sides(loaded, services, revision)
        assert services.dry_runs.asked == asked, "the same body against the same object"
        patch(api, namespace, "ranker", {"spec": {"rayClusterDeletionDelaySeconds": 62}}, "policy")
        eventually(
            lambda: (
                (services.get(key) or {}).get("spec", {}).get("rayClusterDeletionDelaySeconds")
                == 62
            )
        )
        live_sides(loaded, services, revision)
        assert services.dry_runs.asked == asked + 1
    finally:
        services.close()


def test_an_expired_watch_lists_again_and_misses_nothing(
    api: client.ApiClient, own_api: client.ApiClient, sim: Simulator, namespace: str, tmp_path: Path
) -> None:
    """A watch from a resourceVersion etcd no longer has (410 Gone) ends as expired; the
    relist, read in pages (two objects a page here), tells an edit made while no watch ran as
    a change."""
    repo = GitOpsRepo(tmp_path / "gitops", namespace)
    assert sync_once(
        repo.agent_config(tmp_path / "cache"),
        CachedRayServices(own_api),
        StateStore(own_api, namespace),
    ).ok
    events: list[Event] = []
    informer = Informer(
        own_api, RAYSERVICES.path(namespace), SELECTOR, WatchSettings(silent=5, timeout=5, page=2),
        kind="RayService", api_version="ray.io/v1", on_event=events.append,
    )  # fmt: skip
    informer.relist()
    assert set(informer.objects) == {"embedder", "ranker", "summarizer"}  # in two pages
    assert events == []  # the first list is no change
    informer.version = "1"
    assert informer.watch_until_broken() == "expired"
    patch(
        api, namespace, "ranker", {"spec": {"rayClusterDeletionDelaySeconds": 70}}, "kubectl-edit"
    )
    informer.relist()
    assert [(kind, (new or {}).get("metadata", {}).get("name")) for kind, _, new in events] == [
        ("MODIFIED", "ranker")
    ]
    assert (informer.get("ranker") or {})["spec"]["rayClusterDeletionDelaySeconds"] == 70


def test_a_silent_watch_lists_again(
    own_api: client.ApiClient, sim: Simulator, namespace: str, tmp_path: Path
) -> None:
    """No event and no bookmark for ``silent`` seconds (bookmarks come about once a minute,
    so 1.5 s of quiet is a stall here) and the informer lists again, its readers going to
    the API server meanwhile."""
    repo = GitOpsRepo(tmp_path / "gitops", namespace)
    config = repo.agent_config(tmp_path / "cache")
    services = CachedRayServices(own_api, WatchSettings(silent=1.5, timeout=60))
    try:
        assert sync_once(config, services, StateStore(own_api, namespace)).ok
        informer = services.informers.informer(RAYSERVICES, namespace)
        assert informer.wait_synced(10)
        eventually(lambda: "silent" in informer.reasons, 10, "a silent watch relisted")
        lists = informer.lists
        eventually(lambda: informer.lists > lists, 10, "listed again")
        assert len(informer.objects) == 3
        # A failed request elsewhere (the agent's pass) distrusts the open watch: it is cut
        # and the namespace listed again before the cache serves reads.
        eventually(lambda: informer.synced, 10, "watching again")
        lists, ended = informer.lists, len(informer.reasons)
        services.informers.distrust()
        assert not informer.synced
        eventually(lambda: informer.synced and informer.lists > lists, 30, "relisted")
        # (a later silence may end the next watch too: the cut one is the first after)
        assert informer.reasons[ended].startswith("broken"), informer.reasons
    finally:
        services.close()


def test_the_health_wait_reads_a_status_write_within_half_a_second(
    api: client.ApiClient, own_api: client.ApiClient, sim: Simulator, namespace: str, tmp_path: Path
) -> None:
    """What ``Rollout._wait`` does between its reads: it follows the cache's changes from
    the version its list returned, so KubeRay's status write is read as soon as the watch
    brings it, not at the next ``pollInterval``."""
    repo = GitOpsRepo(tmp_path / "gitops", namespace)
    services = CachedRayServices(own_api, WatchSettings())
    try:
        assert sync_once(
            repo.agent_config(tmp_path / "cache"), services, StateStore(own_api, namespace)
        ).ok
        assert services.informers.informer(RAYSERVICES, namespace).wait_synced(10)
        time.sleep(1.0)  # the simulator's status writes settle
        latencies = []
        for attempt in range(3):
            _, version = services.list_managed_versioned(namespace, "staging")
            assert version.startswith("cache/")
            written = time.monotonic()
            client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, "summarizer",
                {"status": {"observedGeneration": 100 + attempt}}, field_manager="kuberay-operator",
            )  # fmt: skip
            for _, obj in services.watch_managed(namespace, "staging", version, 5.0):
                if (obj.get("status") or {}).get("observedGeneration") == 100 + attempt:
                    latencies.append(time.monotonic() - written)
                    break
        assert len(latencies) == 3
        assert max(latencies) < 0.5, latencies
    finally:
        services.close()


def test_the_health_refresh_decodes_only_the_services_that_changed(
    api: client.ApiClient,
    sim: Simulator,
    namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A poll that finds nothing new refreshes the health gauge from the cache: it decodes
    and assesses again only the RayServices whose object changed since their last
    assessment (none, then the one the operator marked failed), and the gauge follows."""
    repo = GitOpsRepo(tmp_path / "gitops", namespace)
    config = replace(
        repo.agent_config(tmp_path / "cache"),
        leader_election=LeaderElection(enabled=False),
        environments=(),
    )
    agent = Agent(config, api, "health-test")
    services = {"embedder", "ranker", "summarizer"}

    def health(name: str) -> str:
        found = [
            sample.labels["health"]
            for family in agent.metrics.registry.collect()
            for sample in family.samples
            if sample.name == "gitsync_service_health" and sample.labels["name"] == name
            and sample.value == 1
        ]  # fmt: skip
        return found[0] if len(found) == 1 else f"{found}"

    try:
        agent.poll()  # the first pass rolls everything out
        assert agent.last_ok
        eventually(lambda: agent.cache is not None and agent.cache.informers.synced(
            RAYSERVICES, namespace) is not None, 10, "the cache in")  # fmt: skip
        agent.poll()  # nothing new: every service assessed once more, from the cache
        assert {health(name) for name in services} == {"Healthy"}
        decoded: list[str] = []
        thaw = Kept.thaw
        monkeypatch.setattr(Kept, "thaw", lambda kept: decoded.append(kept.name) or thaw(kept))
        agent.poll()
        assert [name for name in decoded if name in services] == []
        assert {health(name) for name in services} == {"Healthy"}

        sim.add_rule(FailureRule(namespace=namespace, service="ranker", message="bad edit"))
        live = client.CustomObjectsApi(api).get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, "ranker"
        )
        serve = live["spec"]["serveConfigV2"].replace("num_replicas: 1", "num_replicas: 3")
        patch(api, namespace, "ranker", {"spec": {"serveConfigV2": serve}}, "kubectl-edit")

        def failed() -> bool:
            obj = agent.services.get(ServiceKey(namespace, "ranker")) or {}
            apps = (obj.get("status") or {}).get("activeServiceStatus", {})
            statuses = (apps.get("applicationStatuses") or {}).values()
            return any(a.get("status") == "DEPLOY_FAILED" for a in statuses)

        eventually(failed, 30, "the cache to see the edited ranker fail")
        decoded.clear()
        agent.poll()
        assert [name for name in decoded if name in services] == ["ranker"]
        assert health("ranker") == "Degraded"
        assert health("embedder") == health("summarizer") == "Healthy"
    finally:
        agent.shutdown(timeout=2)
