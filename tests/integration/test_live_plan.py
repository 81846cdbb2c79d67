"""Plan and diff against the real API server: CRD defaults are no drift, foreign edits are."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from gitsync.checkout import read_tree
from gitsync.cli import main
from gitsync.diff.classify import Options
from gitsync.kube.rayservices import RayServices, RayServicesClient
from gitsync.model import Action, ServiceKey
from gitsync.plan import Plan
from gitsync.planning import environment_manifests, live_plans
from gitsync.stamp import stamped
from testbed.controlplane import ControlPlane

from .kube import GROUP, PLURAL, VERSION, CountingRayServices, get

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plain-layout"


def live_plan(checkout: Path, services: RayServices, options: Options) -> Plan:
    [plan] = live_plans(checkout, ["staging"], services, options)
    return plan


@pytest.fixture
def checkout(tmp_path: Path, namespace: str) -> Path:
    """The example repository with staging deploying into this test's namespace."""
    root = tmp_path / "checkout"
    shutil.copytree(EXAMPLES, root)
    config = yaml.safe_load((root / "gitsync.yaml").read_text())
    config["environments"][0]["namespace"] = namespace
    (root / "gitsync.yaml").write_text(yaml.safe_dump(config))
    return root


def apply_all(api: client.ApiClient, checkout: Path) -> None:
    """Applies staging as gitsync's apply will: every stamped body, server-side, for real."""
    services = RayServicesClient(api)
    plan = live_plan(checkout, services, Options())
    assert {c.action for c in plan.changes} == {Action.CREATE}
    loaded = environment_manifests(read_tree(checkout), "staging", "test")
    env = loaded.environment
    for s in loaded.services:
        services.apply(
            stamped(s.manifest, environment=env.name, revision="r1", source=s.source, wave=s.wave)
        )


def test_freshly_applied_services_are_unchanged_despite_crd_defaults(
    api: client.ApiClient, checkout: Path, namespace: str
) -> None:
    apply_all(api, checkout)
    live = get(api, namespace, "ranker")
    assert live["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["numOfHosts"] == 1  # defaulted
    plan = live_plan(checkout, RayServicesClient(api), Options())
    assert [(c.key.name, c.action) for c in plan.changes] == [
        ("embedder", Action.UNCHANGED),
        ("ranker", Action.UNCHANGED),
        ("summarizer", Action.UNCHANGED),
    ]


def test_a_foreign_edit_of_a_git_owned_field_shows_up(
    api: client.ApiClient, checkout: Path, namespace: str, control_plane: ControlPlane
) -> None:
    apply_all(api, checkout)
    live = get(api, namespace, "ranker")
    edited = live["spec"]["serveConfigV2"].replace("num_replicas: 1", "num_replicas: 7")
    control_plane.kubectl(
        "patch",
        "rayservice",
        "ranker",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        yaml.safe_dump({"spec": {"serveConfigV2": edited}}),
    )
    control_plane.kubectl("label", "rayservice", "embedder", "-n", namespace, "team=search")
    plan = live_plan(checkout, RayServicesClient(api), Options())
    actions = {c.key.name: c for c in plan.changes}
    assert actions["ranker"].action is Action.SERVE_UPDATE
    assert actions["ranker"].details == ("app rank: deployment Ranker: num_replicas: 7 → 1",)
    # A label another tool added is not Git's: applying keeps it, so it is no change.
    assert actions["embedder"].action is Action.UNCHANGED


def test_a_managed_service_git_dropped_is_pruned_and_a_stranger_is_not(
    api: client.ApiClient, checkout: Path, namespace: str
) -> None:
    apply_all(api, checkout)
    stranger = yaml.safe_load((EXAMPLES / "environments/staging/embedder.yaml").read_text())
    stranger["metadata"].update(name="someone-elses", namespace=namespace)
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, stranger
    )
    config = yaml.safe_load((checkout / "gitsync.yaml").read_text())
    config["environments"][0]["prune"] = True
    (checkout / "gitsync.yaml").write_text(yaml.safe_dump(config))
    (checkout / "environments/staging/summarizer.yaml").unlink()
    plan = live_plan(checkout, RayServicesClient(api), Options())
    assert plan.waves[-1].prune
    assert [(c.key, c.action) for c in plan.waves[-1].changes] == [
        (ServiceKey(namespace, "summarizer"), Action.PRUNE)
    ]
    assert "someone-elses" not in {c.key.name for c in plan.changes}


def test_with_prune_off_a_service_git_dropped_is_an_orphan_in_every_output(
    api: client.ApiClient,
    control_plane: ControlPlane,
    checkout: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The example's staging does not prune: the plan must say the service stays running,
    as the rollout will leave it, not that it will be deleted."""
    apply_all(api, checkout)
    (checkout / "environments/staging/summarizer.yaml").unlink()
    [change] = [c for c in live_plan(checkout, RayServicesClient(api), Options()).changes
                if c.action is not Action.UNCHANGED]  # fmt: skip
    assert (change.key.name, change.action) == ("summarizer", Action.ORPHAN)
    assert "left running because prune is off" in change.summary
    kube = ["--kubeconfig", str(control_plane.kubeconfig), "--env", "staging"]
    # Nothing to apply: exit 0, as kubectl diff with nothing to change.
    assert main(["plan", str(checkout), *kube]) == 0
    table = capsys.readouterr().out
    assert "orphans:" in table
    assert "summarizer  orphan" in table
    assert "deleted" not in table
    assert main(["plan", str(checkout), *kube, "-o", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    last = document["waves"][-1]
    assert last.get("orphans") is True
    assert "prune" not in last
    assert [c["action"] for c in last["changes"]] == ["orphan"]
    assert main(["diff", str(checkout), *kube, "--color", "never"]) == 0
    diff = capsys.readouterr().out
    assert diff.startswith(f"? {change.key} ")
    assert "deleted" not in diff


def test_an_existing_unlabelled_object_is_compared_not_created(
    api: client.ApiClient, checkout: Path, namespace: str
) -> None:
    manual = yaml.safe_load((checkout / "environments/staging/ranker.yaml").read_text())
    manual["metadata"]["namespace"] = namespace
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, manual
    )
    plan = live_plan(checkout, RayServicesClient(api), Options())
    assert {c.key.name: c.action for c in plan.changes}["ranker"] is Action.UNCHANGED


def test_diff_and_plan_commands(
    api: client.ApiClient,
    checkout: Path,
    namespace: str,
    control_plane: ControlPlane,
    capsys: pytest.CaptureFixture[str],
) -> None:
    kubeconfig = str(control_plane.kubeconfig)
    assert main(["diff", str(checkout), "--env", "staging", "--kubeconfig", kubeconfig]) == 1
    out = capsys.readouterr().out
    assert f"+ {namespace}/ranker (wave 1): create" in out
    assert "\033[" not in out  # not a TTY: no colour
    apply_all(api, checkout)
    assert main(["diff", str(checkout), "--env", "staging", "--kubeconfig", kubeconfig]) == 0
    assert capsys.readouterr().out == ""
    ranker = checkout / "environments/staging/ranker.yaml"
    ranker.write_text(
        ranker.read_text().replace("rayproject/ray:2.49.0-py311", "rayproject/ray:2.50.0-py311")
    )
    assert (
        main(
            [
                "diff",
                str(checkout),
                "--env",
                "staging",
                "--kubeconfig",
                kubeconfig,
                "--color",
                "always",
            ]
        )
        == 1
    )
    out = capsys.readouterr().out
    assert "cluster-swap" in out
    assert "\033[32mrayproject/ray:2.50.0-py311\033[0m" in out
    assert (
        main(["plan", str(checkout), "--env", "staging", "--kubeconfig", kubeconfig, "-o", "json"])
        == 1
    )


def test_unreachable_cluster_is_an_error(
    checkout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["diff", str(checkout), "--env", "staging", "--kubeconfig", str(tmp_path / "missing")])
        == 2
    )
    assert "cannot load a Kubernetes config" in capsys.readouterr().err


def test_a_no_op_plan_needs_no_dry_run_until_someone_else_writes(
    api: client.ApiClient, checkout: Path, namespace: str, control_plane: ControlPlane
) -> None:
    apply_all(api, checkout)
    counting = CountingRayServices(api)
    plan = live_plan(checkout, counting, Options())
    assert {c.action for c in plan.changes} == {Action.UNCHANGED}
    assert counting.dry_runs == 0  # one list for the namespace, nothing per service
    control_plane.kubectl("annotate", "rayservice", "ranker", "-n", namespace, "note=hand-made")
    assert {c.action for c in live_plan(checkout, counting, Options()).changes} == {
        Action.UNCHANGED
    }
    assert counting.dry_runs == 0  # metadata only: not a spec write
    control_plane.kubectl(
        "patch",
        "rayservice",
        "ranker",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec": {"rayClusterDeletionDelaySeconds": 5}}',
    )
    plan = live_plan(checkout, counting, Options())
    assert counting.dry_runs == 1  # another manager wrote ranker's spec: ranker is checked again
    # ... and the field it added is not Git's, so applying keeps it: still no change.
    assert {c.key.name: c.action for c in plan.changes}["ranker"] is Action.UNCHANGED
