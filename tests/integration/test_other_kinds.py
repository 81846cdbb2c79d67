"""The other kinds a repository allows (allowedKinds), against the real API server: a
ConfigMap and a Service beside the example's RayServices are applied in their wave before
the wave's RayServices, stamped, planned as configured when they change, pruned only when
prune is on, drift-checked and healed; a kind the API server does not serve is refused at
plan time at its file:line; a Deployment gates its wave on its conditions."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from gitsync.checkout import read_tree
from gitsync.cli import main
from gitsync.diff.drift import DriftKind
from gitsync.drift import drift_json
from gitsync.errors import InvalidRevision
from gitsync.kube.rayservices import RayServicesClient
from gitsync.kube.state import StateStore
from gitsync.model import Action, Health, Outcome, ServiceKey
from gitsync.planning import environment_manifests, live_environment_plan
from gitsync.progress import Lines
from gitsync.sync import sync_once
from testbed.controlplane import ControlPlane
from testbed.simulator import Simulator

from .gitops import GitOpsRepo
from .test_drift import checker

SETTINGS = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: ranker-settings
data:
  threshold: "0.5"
"""
SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: ranker-public
  annotations:
    gitsync.ray.io/wave: "1"
spec:
  selector: {ray.io/serve: "true"}
  ports:
    - {name: http, port: 8000, targetPort: 8000}
"""
KINDS = [
    {"apiVersion": "v1", "kind": "ConfigMap"},
    {"apiVersion": "v1", "kind": "Service"},
    {"apiVersion": "apps/v1", "kind": "Deployment"},
]


def allow(work: Path, kinds: list[dict[str, str]], **staging: object) -> None:
    config = yaml.safe_load((work / "gitsync.yaml").read_text())
    config["allowedKinds"] = kinds
    config["environments"][0].update(staging)
    (work / "gitsync.yaml").write_text(yaml.safe_dump(config))


def with_objects(tmp_path: Path, namespace: str, **options: Any) -> GitOpsRepo:
    repo = GitOpsRepo(tmp_path / "gitops", namespace, **options)

    def add(work: Path) -> None:
        allow(work, KINDS)
        (work / "environments/staging/settings.yaml").write_text(SETTINGS)
        (work / "environments/staging/public.yaml").write_text(SERVICE)

    repo.commit(add, "a ConfigMap and a Service beside the RayServices")
    return repo


def config_map(api: client.ApiClient, namespace: str) -> Any:
    try:
        return client.CoreV1Api(api).read_namespaced_config_map("ranker-settings", namespace)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def sync(api: client.ApiClient, repo: GitOpsRepo, tmp_path: Path, lines: list[str]) -> None:
    config = repo.agent_config(tmp_path / "cache")
    result = sync_once(
        config,
        RayServicesClient(api),
        StateStore(api, repo.namespace),
        observer=Lines(lines.append),
    )
    assert result.ok, (result, lines)


def plan_actions(api: client.ApiClient, repo: GitOpsRepo) -> dict[str, Action]:
    loaded = environment_manifests(read_tree(repo.work), "staging", "t")
    plan = live_environment_plan(
        loaded,
        RayServicesClient(api),
        repo.agent_config(repo.work.parent / "cache-plan").classify,
        None,
    )
    return {c.key.label: c.action for c in plan.changes}


CM = "ConfigMap/ranker-settings"


def test_objects_are_applied_in_their_wave_first_configured_and_pruned_only_with_prune(
    api: client.ApiClient, sim: Simulator, namespace: str, tmp_path: Path
) -> None:
    repo = with_objects(tmp_path, namespace)
    assert plan_actions(api, repo)[CM] is Action.CREATE
    lines: list[str] = []
    sync(api, repo, tmp_path, lines)
    # Applied, stamped and owned by gitsync; each before the RayServices of its wave.
    live = config_map(api, namespace)
    assert live.data == {"threshold": "0.5"}
    assert live.metadata.labels == {
        "app.kubernetes.io/managed-by": "gitsync",
        "gitsync.ray.io/environment": "staging",
    }
    assert live.metadata.annotations["gitsync.ray.io/revision"] == repo.revisions[-1]
    assert [f.manager for f in live.metadata.managed_fields] == ["gitsync"]
    service = client.CoreV1Api(api).read_namespaced_service("ranker-public", namespace)
    assert service.spec.ports[0].port == 8000
    applied = [line.split("applied ")[1].split(" ")[0] for line in lines if ": applied " in line]
    assert applied.index(f"{namespace}/ConfigMap/ranker-settings") < applied.index(
        f"{namespace}/embedder"
    )
    assert applied.index(f"{namespace}/Service/ranker-public") < applied.index(
        f"{namespace}/ranker"
    )
    # Nothing changed: unchanged, proved without a dry run.
    actions = plan_actions(api, repo)
    assert set(actions.values()) == {Action.UNCHANGED}
    assert {CM, "Service/ranker-public"} <= actions.keys()
    # A change is "configured", field by field.
    repo.commit(
        lambda w: (w / "environments/staging/settings.yaml").write_text(
            SETTINGS.replace('"0.5"', '"0.7"')
        ),
        "raise the threshold",
    )
    loaded = environment_manifests(read_tree(repo.work), "staging", "t")
    plan = live_environment_plan(
        loaded, RayServicesClient(api), repo.agent_config(tmp_path).classify, None
    )
    [change] = [c for c in plan.changes if c.action is not Action.UNCHANGED]
    assert (change.key.label, change.action, change.details) == (
        CM,
        Action.CONFIGURED,
        ("data.threshold: 0.5 → 0.7",),
    )
    sync(api, repo, tmp_path, lines)
    assert config_map(api, namespace).data == {"threshold": "0.7"}
    # Removed from Git with prune off: planned as a prune, left running.
    repo.commit(lambda w: (w / "environments/staging/settings.yaml").unlink(), "drop it")
    assert plan_actions(api, repo)[CM] is not Action.UNCHANGED
    lines.clear()
    sync(api, repo, tmp_path, lines)
    assert config_map(api, namespace) is not None
    assert any("ConfigMap/ranker-settings is no longer in Git" in line for line in lines), lines
    # Prune on: deleted (the Service Git still declares stays).
    repo.commit(lambda w: allow(w, KINDS, prune=True), "prune")
    lines.clear()
    sync(api, repo, tmp_path, lines)
    assert config_map(api, namespace) is None
    assert client.CoreV1Api(api).read_namespaced_service("ranker-public", namespace)
    # gitsync's own state ConfigMap carries the ownership labels too: never a prune candidate.
    pruned = [line for line in lines if ": pruned " in line]
    assert pruned == [f"staging: pruned {namespace}/ConfigMap/ranker-settings"], lines


def status(
    control_plane: ControlPlane, namespace: str, capsys: pytest.CaptureFixture[str], *more: str
) -> tuple[int, str]:
    """``gitsync status`` from the cluster alone (the test's namespace holds the state)."""
    argv = ["status", "--kubeconfig", str(control_plane.kubeconfig)]
    code = main([*argv, "--state-namespace", namespace, *more])
    return code, capsys.readouterr().out


def status_rows(
    control_plane: ControlPlane, namespace: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, tuple[str, str | None]]]:
    """The exit code, and each object ``gitsync status -o json`` lists: health and drift."""
    code, out = status(control_plane, namespace, capsys, "-o", "json")
    [environment] = json.loads(out)["environments"]
    return code, {
        f"{s['apiVersion']} {s['kind']}/{s['name']}": (
            s["health"],
            s["drift"] and s["drift"]["kind"],
        )
        for s in environment["services"]
    }


def test_an_edited_config_map_is_drift_reported_then_healed(
    api: client.ApiClient,
    sim: Simulator,
    namespace: str,
    tmp_path: Path,
    control_plane: ControlPlane,
    capsys: pytest.CaptureFixture[str],
) -> None:
    repo = with_objects(tmp_path, namespace, self_heal=True)
    sync(api, repo, tmp_path, [])
    # gitsync status lists the other kinds beside the RayServices, with their health, from
    # the cluster alone (the kinds its rollout recorded), in every output format.
    healthy = (str(Health.HEALTHY), None)
    code, rows = status_rows(control_plane, namespace, capsys)
    assert (code, rows) == (
        0,
        {
            "ray.io/v1 RayService/embedder": healthy,
            "ray.io/v1 RayService/ranker": healthy,
            "ray.io/v1 RayService/summarizer": healthy,
            "v1 ConfigMap/ranker-settings": healthy,
            "v1 Service/ranker-public": healthy,
        },
    )
    code, out = status(control_plane, namespace, capsys, "-o", "yaml")
    assert [s["kind"] for s in yaml.safe_load(out)["environments"][0]["services"]] == [
        *["RayService"] * 3, "ConfigMap", "Service"
    ]  # fmt: skip
    code, out = status(control_plane, namespace, capsys)
    assert code == 0
    [settings] = [line.split() for line in out.splitlines() if CM in line]
    assert settings[:3] == [CM, "Healthy", repo.revisions[-1][:12]], out
    [clean] = checker(api, repo, tmp_path).check(heal=True)
    assert (clean.drifts, clean.error) == ((), ""), clean
    client.CoreV1Api(api).patch_namespaced_config_map(
        "ranker-settings", namespace, {"data": {"threshold": "0.9"}}, field_manager="kubectl-edit"
    )
    [found] = checker(api, repo, tmp_path).check(heal=False)
    [drift] = found.drifts
    assert drift.key == ServiceKey(namespace, "ranker-settings", "ConfigMap", "v1")
    assert (drift.kind, drift.fields, drift.managers) == (
        DriftKind.MODIFIED,
        ("data.threshold",),
        ("kubectl-edit",),
    )
    [document] = drift_json(found)["drifted"]
    assert document["source"] == "environments/staging/settings.yaml:1"
    assert document["fields"] == [
        {
            "path": "data.threshold",
            "old": "0.5",
            "new": "0.9",
            "source": "environments/staging/settings.yaml:6",  # the field's own line
        }
    ]
    code, rows = status_rows(control_plane, namespace, capsys)
    assert (code, rows["v1 ConfigMap/ranker-settings"]) == (1, (str(Health.HEALTHY), "drifted"))
    assert drift.heal is not None
    assert drift.heal.action is Action.CONFIGURED
    [healed] = checker(api, repo, tmp_path).check(heal=True)
    assert healed.healed is not None
    assert healed.healed.outcome is Outcome.SUCCEEDED, healed
    assert config_map(api, namespace).data == {"threshold": "0.5"}
    [after] = checker(api, repo, tmp_path).check(heal=True)
    assert after.drifts == ()
    # Deleted by hand: reported (and, self-heal on, recreated).
    client.CoreV1Api(api).delete_namespaced_config_map("ranker-settings", namespace)
    [gone] = checker(api, repo, tmp_path).check(heal=False)
    code, rows = status_rows(control_plane, namespace, capsys)
    assert (code, rows["v1 ConfigMap/ranker-settings"]) == (1, (str(Health.MISSING), "drifted"))
    [gone] = checker(api, repo, tmp_path).check(heal=True)
    assert [d.kind for d in gone.drifts] == [DriftKind.DELETED]
    assert config_map(api, namespace) is not None


def test_a_kind_the_api_server_does_not_serve_is_refused_at_plan_time(
    api: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    """Allowed in gitsync.yaml, but no CRD serves it: refused at the object's file:line by
    the plan, and a sync applies nothing of the environment (not even its RayServices)."""
    repo = GitOpsRepo(tmp_path / "gitops", namespace)
    widget = (
        "apiVersion: widgets.example.com/v1\nkind: Widget\nmetadata:\n"
        "  name: ranker\nspec:\n  size: 3\n"
    )

    def add(work: Path) -> None:
        allow(work, [{"apiVersion": "widgets.example.com/v1", "kind": "Widget"}])
        (work / "environments/staging/widget.yaml").write_text("# not installed\n---\n" + widget)

    repo.commit(add, "a Widget without its CRD")
    loaded = environment_manifests(read_tree(repo.work), "staging", "t")
    with pytest.raises(InvalidRevision) as raised:
        live_environment_plan(
            loaded, RayServicesClient(api), repo.agent_config(tmp_path).classify, None
        )
    [problem] = raised.value.problems
    assert str(problem) == (
        "environments/staging/widget.yaml:3: the API server serves no Widget in "
        "widgets.example.com/v1: install the CRD that defines it (or fix apiVersion/kind)"
    )
    config = repo.agent_config(tmp_path / "cache")
    with pytest.raises(InvalidRevision, match=r"widget\.yaml:3"):
        sync_once(config, RayServicesClient(api), StateStore(api, namespace))
    listing = client.CustomObjectsApi(api).list_namespaced_custom_object(
        "ray.io", "v1", namespace, "rayservices"
    )
    assert listing["items"] == []


def test_a_deployment_gates_its_wave_on_its_conditions(
    api: client.ApiClient, sim: Simulator, namespace: str, tmp_path: Path
) -> None:
    """No controller runs Deployments here: the test writes the status the deployment
    controller would. Until it says Available with the generation observed, the RayServices
    of the next wave are not applied."""
    repo = GitOpsRepo(tmp_path / "gitops", namespace)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "feature-store", "annotations": {"gitsync.ray.io/wave": "0"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "fs"}},
            "template": {
                "metadata": {"labels": {"app": "fs"}},
                "spec": {"containers": [{"name": "fs", "image": "example/fs:1"}]},
            },
        },
    }

    def add(work: Path) -> None:
        allow(work, KINDS)
        (work / "environments/staging/fs.yaml").write_text(yaml.safe_dump(deployment))

    repo.commit(add, "a Deployment in wave 0")
    lines: list[str] = []
    outcome: list[Any] = []
    config = repo.agent_config(tmp_path / "cache")
    worker = threading.Thread(
        target=lambda: outcome.append(
            sync_once(
                config,
                RayServicesClient(api),
                StateStore(api, namespace),
                observer=Lines(lines.append),
            )
        )
    )
    worker.start()
    apps = client.AppsV1Api(api)
    deadline = time.monotonic() + 20
    while not any(f"{namespace}/Deployment/feature-store Progressing" in line for line in lines):
        assert time.monotonic() < deadline, lines
        time.sleep(0.1)
    time.sleep(1)  # the gate holds: wave 1 is not applied while the Deployment progresses
    ranker = client.CustomObjectsApi(api).list_namespaced_custom_object(
        "ray.io", "v1", namespace, "rayservices", field_selector="metadata.name=ranker"
    )
    assert ranker["items"] == []
    live = apps.read_namespaced_deployment("feature-store", namespace)
    status = {
        "observedGeneration": live.metadata.generation,
        "replicas": 1,
        "updatedReplicas": 1,
        "readyReplicas": 1,
        "availableReplicas": 1,
        "conditions": [
            {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
             "lastUpdateTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z"}
        ],
    }  # fmt: skip
    apps.patch_namespaced_deployment_status(
        "feature-store", namespace, {"status": status}, field_manager="deployment-controller"
    )
    worker.join(60)
    assert outcome, lines
    assert outcome[0].ok, lines
    assert any(f"{namespace}/Deployment/feature-store Healthy" in line for line in lines), lines
