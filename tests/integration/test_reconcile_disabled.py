"""``gitsync.ray.io/reconcile: disabled`` on a live RayService, against the real API server and
the simulator: drift reported and never healed while it is there, healed once it is gone; a
new commit rolls out around the service (a broken one in wave 0 holds nothing up), the commit
status says it was skipped, and removing the annotation applies it at the next pass."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from gitsync.checkout import read_tree
from gitsync.cli import main
from gitsync.kube.rayservices import RayServicesClient
from gitsync.kube.state import StateStore
from gitsync.model import Health, Outcome, ServiceKey
from gitsync.names import RECONCILE
from gitsync.planning import environment_manifests, live_environment_plan
from gitsync.status import cluster_status
from testbed.controlplane import ControlPlane
from testbed.simulator import Simulator

from .gitops import GitOpsRepo
from .kube import GROUP, PLURAL, VERSION, get, wait_for
from .test_drift import checker, edit_serve_config, events_until, synced, unhealthy

REVISION = "gitsync.ray.io/revision"


def annotate(api: client.ApiClient, namespace: str, name: str, value: str | None) -> None:
    """What ``kubectl annotate`` sends (``value`` None: ``kubectl annotate … key-``)."""
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name,
        {"metadata": {"annotations": {RECONCILE: value}}}, field_manager="kubectl-annotate",
    )  # fmt: skip


def test_a_disabled_service_is_reported_never_healed_then_healed_once_enabled(
    api: client.ApiClient, sim: Simulator, namespace: str, tmp_path: Path
) -> None:
    repo = GitOpsRepo(tmp_path / "gitops", namespace, self_heal=True)
    synced(api, repo, tmp_path)
    key = ServiceKey(namespace, "ranker")
    puts = len(sim.submissions(key)) + 1  # the hand edit's PUT, and no heal's after it
    annotate(api, namespace, "ranker", "disabled")
    edit_serve_config(api, namespace, "ranker", "kubectl-edit")  # the on-call engineer's fix
    edited = get(api, namespace, "ranker")["spec"]["serveConfigV2"]
    deadline = time.monotonic() + 10
    while len(sim.submissions(key)) < puts and time.monotonic() < deadline:
        time.sleep(0.05)
    drift = checker(api, repo, tmp_path)
    for _ in range(3):
        [report] = drift.check(heal=True)
        [found] = report.drifts
        assert found.key == key
        assert report.disabled == (key,)
        assert report.healed is None
        assert get(api, namespace, "ranker")["spec"]["serveConfigV2"] == edited
    assert len(sim.submissions(key)) == puts  # never re-submitted
    record = StateStore(api, namespace).read_drift("staging")
    assert record.corrections == {}  # nothing counted towards a fight
    [finding] = record.findings
    assert finding["disabled"] is True
    [row] = cluster_status(RayServicesClient(api), StateStore(api, namespace), [namespace])
    shown = {s.key.name: s for s in row.services}
    assert (shown["ranker"].disabled, shown["ranker"].drift) == (True, "drifted")
    assert shown["ranker"].settled  # taken out of gitsync's hands: it does not hold status up
    assert (shown["embedder"].health, shown["embedder"].drift) == (Health.HEALTHY, "")

    def drift_events(events: list[Any]) -> list[str]:
        return [
            e.message for e in events if e.reason == "Drift" and e.involved_object.name == "ranker"
        ]

    [message] = drift_events(events_until(api, namespace, drift_events))
    assert "reconcile disabled" in message
    # Handed back: the next check heals it.
    annotate(api, namespace, "ranker", None)
    [report] = drift.check(heal=True)
    assert report.disabled == ()
    assert report.healed is not None
    assert report.healed.outcome is Outcome.SUCCEEDED
    assert get(api, namespace, "ranker")["spec"]["serveConfigV2"] != edited
    assert RECONCILE not in (get(api, namespace, "ranker")["metadata"].get("annotations") or {})


def test_a_new_commit_rolls_out_around_a_disabled_service_until_it_is_enabled(
    api: client.ApiClient,
    sim: Simulator,
    namespace: str,
    tmp_path: Path,
    control_plane: ControlPlane,
    capsys: pytest.CaptureFixture[str],
) -> None:
    repo = GitOpsRepo(tmp_path / "gitops", namespace)
    config_file = repo.config_file(tmp_path / "cache", tmp_path / "agent.yaml")
    args = ["--config", str(config_file), "--kubeconfig", str(control_plane.kubeconfig)]
    assert main(["sync", "--once", *args]) == 0
    first = repo.revisions[-1]
    # The incident: the embedder (wave 0) is crashing, and someone takes it over by hand.
    embedder = ServiceKey(namespace, "embedder")
    [app] = get(api, namespace, "embedder")["status"]["activeServiceStatus"]["applicationStatuses"]
    sim.break_app(embedder, app)
    wait_for(api, namespace, "embedder", functools.partial(unhealthy, app=app), "UNHEALTHY")
    annotate(api, namespace, "embedder", "disabled")

    def scale(root: Path) -> None:
        repo.edit("embedder.yaml", "num_replicas: 1", "num_replicas: 2")
        repo.edit("ranker.yaml", "num_replicas: 1", "num_replicas: 2")

    second = repo.commit(scale, "scale the embedder and the ranker")
    config = repo.agent_config(tmp_path / "cache-plan")
    loaded = environment_manifests(read_tree(repo.work), "staging", "t")
    plan = live_environment_plan(loaded, RayServicesClient(api), config.classify, second)
    assert plan.skipped == (embedder,)
    [skipped] = [c for c in plan.changes if c.key == embedder]
    assert "would be serve-update" in skipped.summary
    capsys.readouterr()
    for _ in range(2):  # the second pass finds the revision up to date
        assert main(["sync", "--once", *args]) == 0
    err = capsys.readouterr().err
    assert err.count(f"skipped {embedder}") == 1, err  # once per revision, not per pass
    assert get(api, namespace, "embedder")["metadata"]["annotations"][REVISION] == first
    assert "num_replicas: 1" in get(api, namespace, "embedder")["spec"]["serveConfigV2"]
    ranker = get(api, namespace, "ranker")
    assert ranker["metadata"]["annotations"][REVISION] == second
    assert "num_replicas: 2" in ranker["spec"]["serveConfigV2"]
    assert main(["notes", "--config", str(config_file)]) == 0
    notes = capsys.readouterr().out
    assert "success  Healthy at" in notes
    assert "2 service(s), every app RUNNING; 1 service skipped: reconcile disabled" in notes

    def skips(events: list[Any]) -> list[Any]:
        return [e for e in events if e.reason == "ReconcileDisabled"]

    assert [e.involved_object.name for e in skips(events_until(api, namespace, skips))] == [
        "embedder"
    ]
    time.sleep(0.5)  # the second pass's events, had it recorded any, are written by now
    assert len(skips(client.CoreV1Api(api).list_namespaced_event(namespace).items)) == 1
    # Handed back: the next pass applies Git's version.
    annotate(api, namespace, "embedder", None)
    assert main(["sync", "--once", *args]) == 0
    live = get(api, namespace, "embedder")
    assert live["metadata"]["annotations"][REVISION] == second
    assert "num_replicas: 2" in live["spec"]["serveConfigV2"]
