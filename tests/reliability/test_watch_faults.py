"""The watch-backed cache under faults, against the real API server behind a proxy: a watch
dropped while another writer edits is relisted and the edit told once; while no watch runs,
reads go to the API server; a watch that stalls without closing is noticed by its silence and
relisted, the edit made meanwhile told once; with no bookmarks at all, the quiet watches are
relisted without telling anything and each edit is told once; a flood of 1,000 changes keeps
the history bounded and tells every object. (410 Gone: tests/integration/test_watch_cache.py;
a watch cut mid-rollout and an API server restart: test_api_faults.py.)"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from kubernetes import client
from kubernetes import config as kube_config

from gitsync.kube.cache import CONFIGMAPS, RAYSERVICES, CachedRayServices
from gitsync.kube.informer import WatchSettings
from gitsync.kube.rayservices import RayServicesClient
from gitsync.kube.rest import configmap_path, request
from gitsync.kube.state import StateStore
from gitsync.model import ServiceKey
from gitsync.names import ENVIRONMENT, MANAGED_BY, SOURCE
from gitsync.sync import sync_once
from testbed.controlplane import ControlPlane
from testbed.simulator import Simulator
from tests.integration.gitops import GitOpsRepo
from tests.integration.kube import GROUP, PLURAL, VERSION, RequestLog
from tests.integration.test_shutdown import through

from .apiproxy import ApiFaultProxy
from .faultproxy import FaultProxy


def until(predicate: Any, timeout: float, what: str) -> float:
    began = time.monotonic()
    while not predicate():
        assert time.monotonic() - began < timeout, f"not within {timeout}s: {what}"
        time.sleep(0.02)
    return time.monotonic() - began


@pytest.fixture
def proxy(control_plane: ControlPlane) -> Iterator[FaultProxy]:
    found = FaultProxy(urlsplit(control_plane.api_url).port or 443)
    try:
        yield found
    finally:
        found.close()


def test_a_dropped_watch_misses_no_edit_and_tells_it_once(
    api: client.ApiClient,
    control_plane: ControlPlane,
    sim: Simulator,
    namespace: str,
    proxy: FaultProxy,
    tmp_path: Path,
) -> None:
    configuration = client.Configuration()
    kube_config.load_kube_config(
        str(through(control_plane, proxy, tmp_path)), client_configuration=configuration
    )
    with client.ApiClient(configuration) as proxied:
        repo = GitOpsRepo(tmp_path / "gitops", namespace)
        services = CachedRayServices(proxied, WatchSettings(silent=30, timeout=60))
        told: list[ServiceKey] = []
        services.subscribe(lambda key, old, new: told.append(key))
        try:
            config = repo.agent_config(tmp_path / "cache")
            assert sync_once(config, services, StateStore(proxied, namespace)).ok
            informer = services.informers.informer(RAYSERVICES, namespace)
            assert informer.wait_synced(10)
            lists = informer.lists
            proxy.set("down")  # the watch's connection is cut, nothing answers
            until(lambda: not informer.synced, 10, "the broken watch noticed")
            assert informer.reasons[-1].startswith("broken")
            client.CustomObjectsApi(api).patch_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, "ranker",
                {"spec": {"rayClusterDeletionDelaySeconds": 90}}, field_manager="kubectl-edit",
            )  # fmt: skip
            time.sleep(1.0)
            assert told == []
            proxy.set("pass")
            until(lambda: informer.synced and informer.lists > lists, 40, "listed again")
            until(lambda: told, 5, "the edit told")
            time.sleep(0.5)
            assert told == [ServiceKey(namespace, "ranker")], "once, for the edited object"
            live = services.get(ServiceKey(namespace, "ranker"))
            assert live is not None
            assert live["spec"]["rayClusterDeletionDelaySeconds"] == 90
        finally:
            services.close()


def proxied_client(kubeconfig: Path) -> client.ApiClient:
    configuration = client.Configuration()
    kube_config.load_kube_config(str(kubeconfig), client_configuration=configuration)
    return client.ApiClient(configuration)


def edit(api: client.ApiClient, namespace: str, seconds: int) -> None:
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "ranker",
        {"spec": {"rayClusterDeletionDelaySeconds": seconds}}, field_manager="kubectl-edit",
    )  # fmt: skip


def deletion_delay(services: CachedRayServices, namespace: str) -> Any:
    live = services.get(ServiceKey(namespace, "ranker")) or {}
    return live.get("spec", {}).get("rayClusterDeletionDelaySeconds")


def test_a_stalled_watch_is_noticed_by_its_silence_and_misses_no_edit(
    api: client.ApiClient,
    control_plane: ControlPlane,
    sim: Simulator,
    namespace: str,
    proxy: FaultProxy,
    tmp_path: Path,
) -> None:
    """The watch's connection stays open but carries nothing (new connections still pass):
    no error ever comes, only silence. After ``silent`` seconds the informer lists again
    and tells the edit made meanwhile, once."""
    repo = GitOpsRepo(tmp_path / "gitops", namespace)
    assert sync_once(
        repo.agent_config(tmp_path / "cache"), RayServicesClient(api), StateStore(api, namespace)
    ).ok
    # The informer's client alone behind the proxy: the one connection it holds is its watch.
    with proxied_client(through(control_plane, proxy, tmp_path)) as proxied:
        services = CachedRayServices(proxied, WatchSettings(silent=3, timeout=300))
        told: list[ServiceKey] = []
        services.subscribe(lambda key, old, new: told.append(key))
        try:
            services.list_managed(namespace, "staging")
            informer = services.informers.informer(RAYSERVICES, namespace)
            assert informer.wait_synced(10)
            until(lambda: informer.watches >= 1, 10, "watching")
            time.sleep(0.5)
            lists = informer.lists
            assert proxy.stall() >= 1
            edit(api, namespace, 91)
            time.sleep(1.0)
            assert told == [], "a stalled watch brings nothing"
            until(lambda: informer.lists > lists, 20, "listed again after the silence")
            assert "silent" in informer.reasons
            until(lambda: told, 5, "the edit told")
            time.sleep(0.5)
            assert told == [ServiceKey(namespace, "ranker")], "once, for the edited object"
            assert deletion_delay(services, namespace) == 91
            # Watching again through a new connection: the next edit comes by the watch.
            until(lambda: informer.synced, 10, "watching again")
            edit(api, namespace, 92)
            until(lambda: deletion_delay(services, namespace) == 92, 5, "the next edit")
            # The cache keeps the object before it tells its subscribers (on the watch's
            # thread, just after): wait for the telling, then make sure it came once.
            until(lambda: len(told) >= 2, 5, "the next edit told")
            time.sleep(0.5)
            assert told == [ServiceKey(namespace, "ranker")] * 2, "once, for the edited object"
        finally:
            services.close()


def test_with_no_bookmarks_quiet_watches_relist_silently_and_each_edit_is_told_once(
    api: client.ApiClient,
    control_plane: ControlPlane,
    sim: Simulator,
    namespace: str,
    tmp_path: Path,
) -> None:
    """An API server (or a proxy in front of it) that sends no bookmarks: nothing resets a
    quiet watch's silence, so it is listed again every ``silent`` seconds and re-opened from
    the last event's version when the API server ends it. Those relists tell nothing; edits
    made across them are told in order, none twice (two made while no watch ran are one
    change: the relist tells the last); the lists stay bounded by the silence."""
    repo = GitOpsRepo(tmp_path / "gitops", namespace)
    assert sync_once(
        repo.agent_config(tmp_path / "cache"), RayServicesClient(api), StateStore(api, namespace)
    ).ok
    proxy = ApiFaultProxy(control_plane, tmp_path)
    proxy.dropped.add("allowWatchBookmarks")
    silent = 1.5
    try:
        with proxied_client(proxy.kubeconfig) as proxied:
            services = CachedRayServices(proxied, WatchSettings(silent=silent, timeout=2))
            told: list[Any] = []
            services.subscribe(
                lambda key, old, new: told.append(
                    (key.name, (new or {}).get("spec", {}).get("rayClusterDeletionDelaySeconds"))
                )
            )
            try:
                began = time.monotonic()
                services.list_managed(namespace, "staging")
                informer = services.informers.informer(RAYSERVICES, namespace)
                assert informer.wait_synced(10)
                until(lambda: "silent" in informer.reasons, 10, "a quiet watch relisted")
                assert told == [], "a relist that finds nothing changed tells nothing"
                for n in range(5):  # across relists and re-opened watches
                    edit(api, namespace, 100 + n)
                    time.sleep(0.7)
                until(lambda: deletion_delay(services, namespace) == 104, 10, "the last edit")
                time.sleep(silent + 0.5)  # a relist after the edits tells none of them again
                values = [value for _, value in told]
                assert {name for name, _ in told} == {"ranker"}
                assert values == sorted(set(values)), f"in order, none twice: {values}"
                assert values[-1] == 104, values
                watches = [r for _, r, _ in proxy.requests if "watch=1" in r]
                assert watches
                assert all("allowWatchBookmarks=true" in w for w in watches)  # asked, dropped
                elapsed = time.monotonic() - began
                assert informer.lists <= elapsed / silent + 2, (informer.lists, elapsed)
                assert len(informer.objects) == 3
            finally:
                services.close()
    finally:
        proxy.close()


def configmap(namespace: str, name: str, value: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {MANAGED_BY: "gitsync", ENVIRONMENT: "flood"},
            "annotations": {SOURCE: f"environments/flood/{name}.yaml"},
        },
        "data": {"value": value},
    }


def test_a_flood_of_changes_keeps_the_history_bounded_and_tells_every_object(
    api: client.ApiClient, control_plane: ControlPlane, namespace: str
) -> None:
    count, history = 1000, 256
    with control_plane.api_client() as own:
        services = CachedRayServices(own, WatchSettings(history=history))
        told: set[str] = set()
        services.subscribe(lambda key, old, new: told.add(key.name))
        try:
            informer = services.informers.informer(CONFIGMAPS, namespace)
            assert informer.wait_synced(10)
            began = informer.sequence
            for n in range(count):  # another writer creates them (not gitsync: no apply)
                request(
                    api, "POST", configmap_path(namespace), body=configmap(namespace, f"c{n}", "a")
                )
            until(lambda: len(informer.objects) == count, 60, "every object in the cache")
            # Each is kept, then told (just after, on the watch's thread): the last telling
            # may still be on its way.
            until(lambda: len(told) == count, 5, "every object told")
            assert len(informer.history) == history
            assert informer.changes(began, 0.1) is None, "fallen behind: read everything again"
            services.objects.list_managed(namespace, "flood", "v1", "ConfigMap")  # discovery
            log = RequestLog(own)
            listed = services.objects.list_managed(namespace, "flood", "v1", "ConfigMap")
            assert len(listed) == count
            assert log.requests() == [], "the flood is served from the cache"
        finally:
            services.close()
