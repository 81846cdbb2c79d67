"""The watch-backed cache under faults, against the real API server behind a TCP proxy: a
watch dropped while another writer edits is relisted and the edit told once; while no watch
runs, reads go to the API server; a flood of 1,000 changes keeps the history bounded and
tells every object."""

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
            assert len(told) == count
            assert len(informer.history) == history
            assert informer.changes(began, 0.1) is None, "fallen behind: read everything again"
            services.objects.list_managed(namespace, "flood", "v1", "ConfigMap")  # discovery
            log = RequestLog(own)
            listed = services.objects.list_managed(namespace, "flood", "v1", "ConfigMap")
            assert len(listed) == count
            assert log.requests() == [], "the flood is served from the cache"
        finally:
            services.close()
