"""Drift checks against the real API server and the simulator: no false positives after a
sync, another manager's serveConfigV2 edit named and healed in place, deleted services
recreated or reported, a fighting controller detected and left alone after the limit."""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Collection
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from gitsync.agent import Agent
from gitsync.checkout import read_tree
from gitsync.cli import main
from gitsync.config import DriftSettings, LeaderElection
from gitsync.diff.classify import Options
from gitsync.diff.drift import DriftKind
from gitsync.drift import DriftChecker, report_lines
from gitsync.kube.events import EventRecorder
from gitsync.kube.rayservices import RayServicesClient
from gitsync.kube.state import StateStore
from gitsync.model import Action, DesiredService, Outcome, ServiceKey
from gitsync.names import ENVIRONMENT, MANAGED_BY
from gitsync.planning import environment_manifests, live_environment_plan
from gitsync.source.git import GitSource
from gitsync.stamp import stamped, untouched_since_apply
from gitsync.sync import sync_once
from testbed.controlplane import ControlPlane
from testbed.simulator import Simulator
from tests.conftest import fresh_namespace

from .gitops import GitOpsRepo
from .kube import GROUP, PLURAL, VERSION, CountingRayServices, apply, get, load, wait_for


def checker(
    api: client.ApiClient,
    repo: GitOpsRepo,
    tmp_path: Path,
    services: RayServicesClient | None = None,
    **drift: Any,
) -> DriftChecker:
    config = replace(repo.agent_config(tmp_path / "cache"), drift=DriftSettings(**drift))
    return DriftChecker(
        config,
        services or RayServicesClient(api),
        StateStore(api, repo.namespace),
        GitSource(config.repository),
        record=EventRecorder(api),
    )


def events_until(api: client.ApiClient, namespace: str, found: Any) -> list[Any]:
    """The namespace's Events once ``found(events)`` holds: they are written in the
    background, shortly after the check that recorded them."""
    deadline = time.monotonic() + 10
    while True:
        events = client.CoreV1Api(api).list_namespaced_event(namespace).items
        if found(events) or time.monotonic() > deadline:
            return list(events)
        time.sleep(0.1)


def synced(api: client.ApiClient, repo: GitOpsRepo, tmp_path: Path) -> None:
    config = repo.agent_config(tmp_path / "cache")
    assert sync_once(config, RayServicesClient(api), StateStore(api, repo.namespace)).ok


def edit_serve_config(
    api: client.ApiClient, namespace: str, name: str, manager: str, seen_by: Agent | None = None
) -> None:
    """Another writer's edit of the first deployment's replicas; with ``seen_by``, returns
    once that agent's watch-backed cache holds the edit (it sees it an event later, and a
    drift check reads the cache)."""
    live = get(api, namespace, name)
    text = re.sub(  # the first deployment's replicas + 3 (staging's 1 becomes 4)
        r"num_replicas: (\d+)",
        lambda m: f"num_replicas: {int(m.group(1)) + 3}",
        live["spec"]["serveConfigV2"],
        count=1,
    )
    assert text != live["spec"]["serveConfigV2"]
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name, {"spec": {"serveConfigV2": text}},
        field_manager=manager,
    )  # fmt: skip
    if seen_by is not None:
        key, deadline = ServiceKey(namespace, name), time.monotonic() + 30
        while (seen_by.services.get(key) or {}).get("spec", {}).get("serveConfigV2") != text:
            assert time.monotonic() < deadline, f"the agent's cache never saw the edit of {name}"
            time.sleep(0.05)


def test_a_fresh_sync_has_no_drift_over_many_checks(
    api: client.ApiClient, sim: Simulator, namespace: str, tmp_path: Path
) -> None:
    """Between checks the simulator writes status (observedGeneration after a foreign spec
    write, an application turning UNHEALTHY); one service takes the slow path (a dry run)
    because another manager owns a spec field Git does not declare; every service carries
    a KubeRay-style annotation another manager wrote. None of it is drift, so self-heal,
    on, never rolls anything out."""
    repo = GitOpsRepo(tmp_path / "gitops", namespace, self_heal=True)
    synced(api, repo, tmp_path)
    custom = client.CustomObjectsApi(api)
    names = ("embedder", "ranker", "summarizer")
    for name in names:
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name,
            {"metadata": {"annotations": {"ray.io/kuberay-version": "v1.5.0"}}},
            field_manager="kuberay-operator",
        )  # fmt: skip
    apps = [
        (ServiceKey(namespace, name), app)
        for name in names
        for app in get(api, namespace, name)["status"]["activeServiceStatus"]["applicationStatuses"]
    ]
    loaded = environment_manifests(read_tree(repo.work), "staging", "t")
    drift = checker(api, repo, tmp_path)
    for check in range(10):
        # A policy controller sets a spec field Git does not declare: the embedder's
        # shortcut is off (a dry run each check), and the simulator writes status when it
        # observes the new generation.
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, "embedder",
            {"spec": {"rayClusterDeletionDelaySeconds": 60 + check}},
            field_manager="policy-controller",
        )  # fmt: skip
        wait_for(api, namespace, "embedder", observed, "observed")
        if check < len(apps):  # and a crash: a status write on another service
            key, app = apps[check]
            sim.break_app(key, app)
            wait_for(api, namespace, key.name, functools.partial(unhealthy, app=app), "UNHEALTHY")
        shortcut = {
            s.key.name: untouched_since_apply(get(api, namespace, s.key.name), applied_body(s))
            for s in loaded.services
        }
        assert shortcut == {"embedder": False, "ranker": True, "summarizer": True}
        [report] = drift.check(heal=True)
        assert report.drifts == (), report
        assert report.healed is None
        assert report.revision == repo.revisions[-1]


def applied_body(service: DesiredService) -> dict[str, Any]:
    """What gitsync applied for ``service`` in staging (the revision stamp aside)."""
    return stamped(
        service.manifest,
        environment="staging",
        revision=None,
        source=service.source,
        wave=service.wave,
    )


def observed(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    return bool(status.get("observedGeneration") == obj["metadata"]["generation"])


def unhealthy(obj: dict[str, Any], app: str) -> bool:
    statuses = (obj.get("status") or {}).get("activeServiceStatus", {}).get("applicationStatuses")
    return bool((statuses or {}).get(app, {}).get("status") == "UNHEALTHY")


def test_a_serve_config_edit_is_named_and_healed_in_place(
    api: client.ApiClient,
    sim: Simulator,
    namespace: str,
    tmp_path: Path,
    control_plane: ControlPlane,
    capsys: pytest.CaptureFixture[str],
) -> None:
    repo = GitOpsRepo(tmp_path / "gitops", namespace, self_heal=True)
    synced(api, repo, tmp_path)
    key = ServiceKey(namespace, "ranker")
    puts_before = len(sim.submissions(key))
    edit_serve_config(api, namespace, "ranker", "kubectl-edit")
    # Report only (the CLI without --heal): named, with what healing would do; exit 1.
    config_file = repo.config_file(tmp_path / "cache-cli", tmp_path / "agent.yaml")
    args = ["--config", str(config_file), "--kubeconfig", str(control_plane.kubeconfig)]
    assert main(["drift", *args, "-o", "json"]) == 1
    [env] = json.loads(capsys.readouterr().out)["environments"]
    [found] = env["drifted"]
    assert found["service"] == str(key)
    assert found["kind"] == "modified"
    assert found["managers"] == ["kubectl-edit"]
    # Each drifted field as {path, old, new}, as plan's: Git's value, then the live one.
    # Where Git declares it, and each field with where Git sets it (no overlay: its own
    # line in the file, inside the serveConfigV2 block).
    assert found["source"] == "environments/staging/ranker.yaml:2"
    assert found["fields"] == [
        {
            "path": "spec.serveConfigV2.applications[rank].deployments[Ranker].num_replicas",
            "old": 1,
            "new": 4,
            "source": "environments/staging/ranker.yaml:22",
        }
    ]
    assert found["heal"]["action"] == "serve-update"
    # The agent's check heals it: an in-place Serve update, gated on health.
    counting = CountingRayServices(api)
    healer = checker(api, repo, tmp_path, counting)
    [report] = healer.check(heal=True)
    assert report.healed is not None
    assert report.healed.outcome is Outcome.SUCCEEDED
    # ranker alone was dry-run (the others are provably untouched), and once: the heal
    # plans from the answer the check compared.
    assert counting.dry_runs == 1
    assert "num_replicas: 1" in get(api, namespace, "ranker")["spec"]["serveConfigV2"]
    assert len(sim.submissions(key)) == puts_before + 2  # the edit's PUT, then the heal's
    assert len(set(sim.submissions(key))) == 1  # the same cluster: no swap
    [after] = checker(api, repo, tmp_path).check(heal=True)
    assert after.drifts == ()

    def reasons(events: list[Any]) -> set[str]:
        return {e.reason for e in events if e.involved_object.name == "ranker"}

    events = events_until(api, namespace, lambda e: {"Drift", "DriftCorrected"} <= reasons(e))
    assert {"Drift", "DriftCorrected"} <= reasons(events)

    # The same edit made again after the heal is a new finding for the checker that healed
    # it: a third Drift Event (the CLI's check and the healing one recorded the first two).
    def drifts_told(events: list[Any]) -> int:
        return sum(1 for e in events if e.reason == "Drift" and e.involved_object.name == "ranker")

    assert drifts_told(events_until(api, namespace, lambda e: drifts_told(e) >= 2)) == 2
    edit_serve_config(api, namespace, "ranker", "kubectl-edit")
    [again] = healer.check(heal=False)
    assert [d.key for d in again.drifts] == [key]
    assert drifts_told(events_until(api, namespace, lambda e: drifts_told(e) >= 3)) == 3


@pytest.mark.parametrize("self_heal", [False, True])
def test_a_deleted_service_is_recreated_or_reported(
    api: client.ApiClient,
    sim: Simulator,
    namespace: str,
    tmp_path: Path,
    control_plane: ControlPlane,
    capsys: pytest.CaptureFixture[str],
    self_heal: bool,
) -> None:
    repo = GitOpsRepo(tmp_path / "gitops", namespace, self_heal=self_heal)
    synced(api, repo, tmp_path)
    client.CustomObjectsApi(api).delete_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "summarizer"
    )
    counting = CountingRayServices(api)
    [report] = checker(api, repo, tmp_path, counting).check(heal=True)
    [drift] = report.drifts
    assert (drift.key.name, drift.kind) == ("summarizer", DriftKind.DELETED)
    assert counting.dry_runs == 1  # summarizer's body, once, healed or not
    names = {
        o["metadata"]["name"]
        for o in client.CustomObjectsApi(api).list_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL
        )["items"]
    }
    config_file = repo.config_file(tmp_path / "cache-cli", tmp_path / "agent.yaml")
    args = ["--config", str(config_file), "--kubeconfig", str(control_plane.kubeconfig)]
    # status exits 0 only when nothing is drifted from what was applied.
    assert main(["status", *args]) == (0 if self_heal else 1)
    lines = capsys.readouterr().out.splitlines()
    [checked] = [line for line in lines if "drift check" in line]
    # When the check ran and against which revision, then what it left drifted.
    assert re.search(r"drift check \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ against ", checked)
    assert repo.revisions[-1][:12] in checked
    drifted = any("summarizer" in line and "DRIFTED" in line for line in lines)
    if self_heal:
        assert report.healed is not None
        assert report.healed.outcome is Outcome.SUCCEEDED
        assert "summarizer" in names
        assert checked.endswith(": no drift")  # healed: no longer drifted
        assert not drifted, lines
    else:
        assert report.healed is None
        assert "summarizer" not in names
        assert checked.endswith(": 1 drifted")
        assert drifted, lines


def test_a_fighting_controller_is_left_alone_after_the_limit(
    api: client.ApiClient,
    sim: Simulator,
    namespace: str,
    tmp_path: Path,
    control_plane: ControlPlane,
    capsys: pytest.CaptureFixture[str],
) -> None:
    repo = GitOpsRepo(tmp_path / "gitops", namespace, self_heal=True)
    synced(api, repo, tmp_path)
    drift = checker(api, repo, tmp_path, limit=2, window=3600.0)
    outcomes = []
    for _ in range(3):
        edit_serve_config(api, namespace, "embedder", "autoscaler-x")  # the other controller
        [report] = drift.check(heal=True)
        outcomes.append((report.healed.outcome if report.healed else None, report.fighting))
    assert outcomes[0][0] is Outcome.SUCCEEDED
    assert outcomes[1][0] is Outcome.SUCCEEDED
    assert outcomes[2] == (None, (ServiceKey(namespace, "embedder"),))  # stopped correcting
    assert "num_replicas: 4" in get(api, namespace, "embedder")["spec"]["serveConfigV2"]

    def fight(events: list[Any]) -> bool:
        return any(e.reason == "DriftFight" and "autoscaler-x" in e.message for e in events)

    assert fight(events_until(api, namespace, fight))
    config_file = repo.config_file(tmp_path / "cache-cli", tmp_path / "agent.yaml")
    args = ["--config", str(config_file), "--kubeconfig", str(control_plane.kubeconfig)]
    assert main(["status", *args]) == 1  # a service fought over is not as applied
    out = capsys.readouterr().out
    assert any("embedder" in line and "FIGHTING" in line for line in out.splitlines()), out


def test_healing_a_hand_edited_image_explains_the_cluster_swap(
    api: client.ApiClient, sim: Simulator, namespace: str, tmp_path: Path
) -> None:
    repo = GitOpsRepo(tmp_path / "gitops", namespace)  # report only
    synced(api, repo, tmp_path)
    live = get(api, namespace, "ranker")
    head = live["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    patch: dict[str, Any] = {
        "spec": {
            "rayClusterConfig": {
                "headGroupSpec": {
                    "template": {
                        "spec": {"containers": [{**head, "image": "rayproject/ray:2.50.0-py311"}]}
                    }
                }
            }
        }
    }
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "ranker", patch, field_manager="kubectl-set"
    )
    [report] = checker(api, repo, tmp_path).check(heal=True)
    [drift] = report.drifts
    assert drift.heal is not None
    assert drift.heal.action is Action.CLUSTER_SWAP
    assert drift.managers == ("kubectl-set",)
    assert report.costs
    assert "twice the cluster's resources" in report.costs[0]
    assert report.healed is None


def test_the_agents_drift_job_counts_and_heals(
    api: client.ApiClient, sim: Simulator, namespace: str, tmp_path: Path
) -> None:
    repo = GitOpsRepo(tmp_path / "gitops", namespace, self_heal=True)
    config = replace(
        repo.agent_config(tmp_path / "cache"),
        leader_election=LeaderElection(enabled=False),
        environments=(),
    )
    agent = Agent(config, api, "drift-test")
    agent.poll()  # the first pass rolls everything out
    assert agent.last_ok
    edit_serve_config(api, namespace, "summarizer", "kubectl-edit", seen_by=agent)
    [report] = agent.drift()
    assert report.healed is not None
    assert report.healed.outcome is Outcome.SUCCEEDED
    assert (
        agent.metrics.registry.get_sample_value(
            "gitsync_drift_detected_total", {"environment": "staging"}
        )
        == 1
    )
    assert (
        agent.metrics.registry.get_sample_value(
            "gitsync_sync_total", {"environment": "staging", "result": "succeeded"}
        )
        == 2
    )
    drifted = agent.metrics.registry.get_sample_value(
        "gitsync_drifted_services", {"environment": "staging", "kind": "modified"}
    )
    assert drifted == 0  # found, and healed


def add_stray(api: client.ApiClient, repo: GitOpsRepo, name: str) -> ServiceKey:
    """A gitsync-labelled RayService of the environment that Git does not declare (left over
    from a revision that removed it, or labelled by hand)."""
    body = load(repo.path("ranker.yaml"))
    labels = {MANAGED_BY: "gitsync", ENVIRONMENT: "staging"}
    body["metadata"] = {"name": name, "labels": labels}
    apply(api, repo.namespace, body)
    return ServiceKey(repo.namespace, name)


@pytest.mark.parametrize("prune", [False, True])
def test_an_unexpected_service_is_pruned_only_with_prune(
    api: client.ApiClient, sim: Simulator, namespace: str, tmp_path: Path, prune: bool
) -> None:
    repo = GitOpsRepo(tmp_path / "gitops", namespace, self_heal=True, prune=prune)
    synced(api, repo, tmp_path)
    stray = add_stray(api, repo, "stray")
    drift = checker(api, repo, tmp_path, limit=2, window=3600.0)
    store = StateStore(api, namespace)
    if not prune:  # reported at every check; nothing to correct, so never a fight
        for _ in range(4):
            [report] = drift.check(heal=True)
            assert [(d.key, d.kind) for d in report.drifts] == [(stray, DriftKind.UNEXPECTED)]
            assert report.healed is None
            assert report.fighting == ()
        assert get(api, namespace, "stray")
        record = store.read_drift("staging")
        assert record.corrections == {}
        assert [f["fighting"] for f in record.findings] == [False]
        return
    [report] = drift.check(heal=True)
    assert [(d.key, d.kind) for d in report.drifts] == [(stray, DriftKind.UNEXPECTED)]
    assert report.healed is not None
    assert report.healed.outcome is Outcome.SUCCEEDED
    assert report.healed.pruned == (stray,)
    assert "stray" not in {
        s.name for s in RayServicesClient(api).list_managed(namespace, "staging")
    }
    [after] = drift.check(heal=True)
    assert after.drifts == ()


def test_a_foreign_annotation_edit_and_a_removed_field_are_drift(
    api: client.ApiClient, sim: Simulator, namespace: str, tmp_path: Path
) -> None:
    """Neither leaves another manager owning something under spec: the annotation edit
    takes over a metadata field, the JSON-patch removal leaves the field with no owner."""
    repo = GitOpsRepo(tmp_path / "gitops", namespace)  # report only
    timeout = '    gitsync.ray.io/wave: "1"\n    ray.io/initializing-timeout: "10m"\n'
    repo.commit(lambda root: repo.edit("ranker.yaml", '    gitsync.ray.io/wave: "1"\n', timeout),
                "ranker: initializing timeout")  # fmt: skip
    synced(api, repo, tmp_path)
    drift = checker(api, repo, tmp_path)
    [report] = drift.check(heal=True)
    assert report.drifts == ()
    # The shortcut holds on what gitsync applied: the checks below change its answer.
    loaded = environment_manifests(read_tree(repo.work), "staging", "t")
    for service in loaded.services:
        body = applied_body(service)
        assert untouched_since_apply(get(api, namespace, service.key.name), body)
    # The sync pass's shortcut too: metadata alone proves nothing changed (no full list).
    services = FullLists(api)
    plan = live_environment_plan(loaded, services, Options(), repo.revisions[-1])
    assert (services.full_lists, plan.has_changes) == (0, False)
    custom = client.CustomObjectsApi(api)
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "ranker",
        {"metadata": {"annotations": {"ray.io/initializing-timeout": "30s"}}},
        field_manager="kubectl-annotate",
    )  # fmt: skip
    path = "/spec/rayClusterConfig/headGroupSpec/rayStartParams/num-cpus"
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "summarizer", [{"op": "remove", "path": path}],
        field_manager="kubectl-patch", _content_type="application/json-patch+json",
    )  # fmt: skip
    summarizer = get(api, namespace, "summarizer")
    assert (
        "num-cpus" not in summarizer["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]
    )
    foreign = [
        e
        for e in summarizer["metadata"]["managedFields"]
        if e["manager"] != "gitsync" and "f:spec" in (e.get("fieldsV1") or {})
    ]
    assert foreign == []  # what the old shortcut looked for: nothing
    [report] = drift.check(heal=True)
    found = {d.key.name: d for d in report.drifts}
    assert sorted(found) == ["ranker", "summarizer"]
    assert found["ranker"].kind is DriftKind.MODIFIED
    assert any("ray.io/initializing-timeout" in f for f in found["ranker"].fields)
    assert found["ranker"].managers == ("kubectl-annotate",)  # the owner of that annotation
    assert found["summarizer"].kind is DriftKind.MODIFIED
    assert any("num-cpus" in f for f in found["summarizer"].fields)
    assert found["summarizer"].managers == ()  # a removed field has no owner to name
    # and the next sync pass puts both back
    plan = live_environment_plan(loaded, services, Options(), repo.revisions[-1])
    assert services.full_lists == 1
    changed = {c.key.name for c in plan.changes if c.action is not Action.UNCHANGED}
    assert changed == {"ranker", "summarizer"}


class FullLists(RayServicesClient):
    """Counts the full (spec and status) lists: the no-op shortcut makes none."""

    full_lists = 0

    def list_managed(
        self, namespace: str, environment: str, *, names: Collection[str] | None = None
    ) -> dict[ServiceKey, dict[str, Any]]:
        self.full_lists += 1
        return super().list_managed(namespace, environment, names=names)


def test_drift_is_judged_at_the_revision_last_applied(
    api: client.ApiClient, sim: Simulator, namespace: str, tmp_path: Path
) -> None:
    """A newer commit not rolled out yet differs from the cluster: that is the next
    rollout's business, not drift (and self-heal must not roll it out)."""
    repo = GitOpsRepo(tmp_path / "gitops", namespace, self_heal=True)
    synced(api, repo, tmp_path)
    applied = repo.revisions[-1]
    newer = repo.commit(
        lambda root: repo.edit("ranker.yaml", "num_replicas: 1", "num_replicas: 3"), "scale"
    )
    drift = checker(api, repo, tmp_path)
    assert drift.source.head() == newer
    [report] = drift.check(heal=True)
    assert report.revision == applied
    assert report.drifts == ()
    assert report.healed is None
    live = get(api, namespace, "ranker")
    assert "num_replicas: 1" in live["spec"]["serveConfigV2"]
    assert live["metadata"]["annotations"]["gitsync.ray.io/revision"] == applied


def test_the_fight_gauge_is_set_then_cleared_when_the_window_passes(
    api: client.ApiClient, sim: Simulator, namespace: str, tmp_path: Path
) -> None:
    """The backoff is a sliding window: at most ``limit`` corrections of a field within
    ``window``; once the oldest is older than the window, gitsync corrects it again."""
    repo = GitOpsRepo(tmp_path / "gitops", namespace, self_heal=True)
    config = replace(
        repo.agent_config(tmp_path / "cache"),
        leader_election=LeaderElection(enabled=False),
        environments=(),
        drift=DriftSettings(limit=1, window=600.0),
    )
    agent = Agent(config, api, "drift-test")
    now = [1_000_000.0]
    agent.drift_checker.clock = lambda: now[0]
    agent.poll()
    assert agent.last_ok
    labels = {"environment": "staging", "namespace": namespace, "name": "embedder"}

    def fighting() -> float | None:
        return agent.metrics.registry.get_sample_value("gitsync_drift_fighting", labels)

    edit_serve_config(api, namespace, "embedder", "autoscaler-x", seen_by=agent)
    [report] = agent.drift()
    assert report.healed is not None
    assert report.healed.outcome is Outcome.SUCCEEDED
    assert fighting() is None
    now[0] += 300  # within the window: the second change is a fight
    edit_serve_config(api, namespace, "embedder", "autoscaler-x", seen_by=agent)
    [report] = agent.drift()
    assert report.healed is None
    assert report.fighting == (ServiceKey(namespace, "embedder"),)
    assert fighting() == 1
    [report] = agent.drift()  # still reported, still not corrected
    assert report.fighting == (ServiceKey(namespace, "embedder"),)
    assert fighting() == 1
    now[0] += 301  # the correction is older than the window: corrections resume
    [report] = agent.drift()
    assert report.fighting == ()
    assert report.healed is not None
    assert report.healed.outcome is Outcome.SUCCEEDED
    assert fighting() is None
    assert "num_replicas: 1" in get(api, namespace, "embedder")["spec"]["serveConfigV2"]


def freeze_rayservices(api: client.ApiClient, namespace: str, name: str) -> None:
    """A ValidatingAdmissionPolicy that rejects every update of a RayService in
    ``namespace`` (dry runs too), as a strict admission policy would; effective once a
    dry-run apply is rejected."""
    admission = client.AdmissionregistrationV1Api(api)
    admission.create_validating_admission_policy(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": [GROUP],
                            "apiVersions": [VERSION],
                            "operations": ["UPDATE"],
                            "resources": [PLURAL],
                        }
                    ]
                },
                "validations": [{"expression": "false", "message": "RayServices are frozen"}],
            },
        }
    )
    admission.create_validating_admission_policy_binding(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": name},
            "spec": {
                "policyName": name,
                "validationActions": ["Deny"],
                "matchResources": {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
                },
            },
        }
    )
    body = get(api, namespace, "ranker")
    body = {k: body[k] for k in ("apiVersion", "kind", "metadata", "spec")}
    body["metadata"] = {"name": "ranker", "labels": {"frozen-probe": "x"}}
    deadline = time.monotonic() + 30
    while True:
        try:
            client.CustomObjectsApi(api).patch_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, "ranker", body, field_manager="probe",
                dry_run="All", _content_type="application/apply-patch+yaml",
            )  # fmt: skip
        except client.ApiException as exc:
            if "frozen" in str(exc.body):
                return
            raise
        assert time.monotonic() < deadline, "the admission policy never took effect"
        time.sleep(0.2)


def unfreeze(api: client.ApiClient, name: str) -> None:
    admission = client.AdmissionregistrationV1Api(api)
    admission.delete_validating_admission_policy_binding(name)
    admission.delete_validating_admission_policy(name)


def test_one_environments_failed_check_does_not_stop_the_others(
    api: client.ApiClient, sim: Simulator, namespace: str, tmp_path: Path
) -> None:
    with fresh_namespace(api) as production:
        repo = GitOpsRepo(tmp_path / "gitops", namespace, production=production)
        config = replace(
            repo.agent_config(tmp_path / "cache"),
            leader_election=LeaderElection(enabled=False),
            environments=(),
        )
        agent = Agent(config, api, "drift-test")
        agent.poll()  # staging, then production
        assert agent.last_ok
        assert agent.metrics.registry.get_sample_value(
            "gitsync_sync_total", {"environment": "production", "result": "succeeded"}
        )
        # Production's check needs a dry run (a hand edit), which its admission rejects.
        edit_serve_config(api, production, "ranker", "kubectl-edit", seen_by=agent)
        edit_serve_config(api, namespace, "ranker", "kubectl-edit", seen_by=agent)
        policy = f"freeze-{production}"
        freeze_rayservices(api, production, policy)
        try:
            reports = {r.environment: r for r in agent.drift()}
        finally:
            unfreeze(api, policy)
        assert sorted(reports) == ["production", "staging"]
        assert "frozen" in reports["production"].error
        assert reports["production"].drifts == ()
        assert report_lines(reports["production"]) == [
            f"production: check failed: {reports['production'].error}"
        ]
        assert reports["staging"].error == ""
        assert [(d.key.name, d.kind) for d in reports["staging"].drifts] == [
            ("ranker", DriftKind.MODIFIED)
        ]
        errors = agent.metrics.registry.get_sample_value(
            "gitsync_drift_check_errors_total", {"environment": "production"}
        )
        assert errors == 1
        assert (
            agent.metrics.registry.get_sample_value(
                "gitsync_drift_detected_total", {"environment": "staging"}
            )
            == 1
        )
        drifted = {
            (env, kind): agent.metrics.registry.get_sample_value(
                "gitsync_drifted_services", {"environment": env, "kind": kind}
            )
            for env in ("staging", "production")
            for kind in ("modified", "deleted")
        }
        assert drifted == {
            ("staging", "modified"): 1,  # report only: still drifted
            ("staging", "deleted"): 0,
            ("production", "modified"): None,  # not checked: nothing claimed
            ("production", "deleted"): None,
        }


def test_a_check_on_events_checks_the_changed_service_only_and_keeps_the_others_findings(
    api: client.ApiClient, sim: Simulator, namespace: str, tmp_path: Path
) -> None:
    """What the agent's event-driven check does (``changed``): only the edited service is
    read and dry-run; another service's finding from the last check is carried over, into
    the report, the status and the state ConfigMap, and not reported a second time."""
    repo = GitOpsRepo(tmp_path / "gitops", namespace)  # report only
    synced(api, repo, tmp_path)
    # The summarizer takes the slow path (another manager owns a spec field Git does not
    # declare): a whole check dry-runs it every time.
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "summarizer",
        {"spec": {"rayClusterDeletionDelaySeconds": 61}}, field_manager="policy-controller",
    )  # fmt: skip
    edit_serve_config(api, namespace, "embedder", "autoscaler-x")
    counting = CountingRayServices(api)
    drift = checker(api, repo, tmp_path, services=counting)
    [whole] = drift.check(heal=False)
    embedder, ranker = ServiceKey(namespace, "embedder"), ServiceKey(namespace, "ranker")
    assert [d.key for d in whole.drifts] == [embedder]
    assert whole.scope is None
    assert counting.dry_runs == 2  # the embedder and the summarizer

    edit_serve_config(api, namespace, "ranker", "kubectl-edit")
    counting.dry_runs = 0
    [partial] = drift.check(heal=False, changed={"staging": {ranker}})
    assert counting.dry_runs == 1, "the ranker only"
    assert partial.scope == frozenset({ranker})
    assert sorted(d.key for d in partial.drifts) == [embedder, ranker]
    record = StateStore(api, namespace).read_drift("staging")
    assert sorted(f["service"] for f in record.findings) == [str(embedder), str(ranker)]

    def drift_events(events: list[Any]) -> list[str]:
        return [e.involved_object.name for e in events if e.reason == "Drift"]

    found = drift_events(events_until(api, namespace, lambda e: "ranker" in drift_events(e)))
    assert sorted(found) == ["embedder", "ranker"], "one Event per finding"

    # The ranker put back by hand: its finding goes, the embedder's stays.
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "ranker",
        {"spec": {"serveConfigV2": get_applied(repo, "ranker")}}, field_manager="kubectl-edit",
    )  # fmt: skip
    counting.dry_runs = 0
    [partial] = drift.check(heal=False, changed={"staging": {ranker}})
    assert counting.dry_runs == 1
    assert [d.key for d in partial.drifts] == [embedder]
    record = StateStore(api, namespace).read_drift("staging")
    assert [f["service"] for f in record.findings] == [str(embedder)]

    # After a pass (forget), or for an environment never checked whole, the check is whole.
    drift.forget()
    counting.dry_runs = 0
    [again] = drift.check(heal=False, changed={"staging": {ranker}})
    assert again.scope is None
    assert counting.dry_runs == 3  # the embedder, the summarizer and the ranker (edited)
    assert [d.key for d in again.drifts] == [embedder]


def get_applied(repo: GitOpsRepo, name: str) -> str:
    """The serveConfigV2 Git declares for ``name`` in staging."""
    loaded = environment_manifests(read_tree(repo.work), "staging", "t")
    [service] = [s for s in loaded.services if s.key.name == name]
    text: str = service.manifest["spec"]["serveConfigV2"]
    return text
