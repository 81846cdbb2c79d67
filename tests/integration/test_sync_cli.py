"""gitsync sync --once --dry-run, gitsync status, and field-manager conflicts."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from gitsync.cli import main
from gitsync.errors import InvalidRevision
from gitsync.kube.rayservices import RayServicesClient
from gitsync.kube.state import StateStore
from gitsync.model import Outcome
from gitsync.progress import Lines
from gitsync.sync import sync_once
from testbed.controlplane import ControlPlane
from testbed.simulator import FailureRule, Simulator

from .gitops import GitOpsRepo
from .kube import GROUP, PLURAL, VERSION, get


@pytest.fixture
def repo(tmp_path: Path, namespace: str) -> GitOpsRepo:
    return GitOpsRepo(tmp_path / "gitops", namespace)


def test_dry_run_applies_nothing_and_prints_the_plan(
    api: client.ApiClient,
    repo: GitOpsRepo,
    namespace: str,
    control_plane: ControlPlane,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = repo.config_file(tmp_path / "cache", tmp_path / "agent.yaml")
    argv = ["sync", "--once", "--dry-run", "--config", str(config)]
    argv += ["--kubeconfig", str(control_plane.kubeconfig)]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "embedder  create" in out  # the plan, on stdout
    assert "staging: dry run: changes planned, nothing applied" in err
    # -o json|yaml: the plans (what would be done), as `gitsync plan -o json` prints them.
    assert main([*argv, "-o", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert (document["revision"], document["dryRun"]) == (repo.revisions[-1], True)
    [planned] = document["environments"]
    assert planned["to"] == repo.revisions[-1]
    plan_argv = ["plan", str(repo.work), "-o", "json"]
    assert main([*plan_argv, "--kubeconfig", str(control_plane.kubeconfig)]) == 1
    [expected] = json.loads(capsys.readouterr().out)["environments"]
    assert {**planned, "to": None} == expected
    actions = {c["name"]: c["action"] for w in planned["waves"] for c in w["changes"]}
    assert actions == dict.fromkeys(("embedder", "ranker", "summarizer"), "create")
    assert main([*argv, "-o", "yaml"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == document
    assert (
        client.CustomObjectsApi(api).list_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL
        )["items"]
        == []
    )


def test_sync_then_status(
    api: client.ApiClient,
    repo: GitOpsRepo,
    namespace: str,
    sim: Simulator,
    control_plane: ControlPlane,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = repo.config_file(tmp_path / "cache", tmp_path / "agent.yaml")
    args = ["--config", str(config), "--kubeconfig", str(control_plane.kubeconfig)]
    assert main(["sync", "--once", *args]) == 0
    captured = capsys.readouterr()
    assert f"staging: succeeded at {repo.revisions[0][:12]}" in captured.out
    assert "wave" not in captured.out  # progress goes to stderr
    assert f"applied {namespace}/ranker" in captured.err
    assert main(["status", *args]) == 0
    out = capsys.readouterr().out
    assert f"staging: succeeded at {repo.revisions[0][:12]}" in out
    for name in ("embedder", "ranker", "summarizer"):
        assert any(line.split()[:2] == [name, "Healthy"] for line in out.splitlines()), out
    # Kubernetes Events on each RayService: what gitsync did and saw.
    events = client.CoreV1Api(api).list_namespaced_event(namespace).items
    ranker = [
        (e.type, e.reason, e.message)
        for e in events
        if e.involved_object.name == "ranker" and e.source.component == "gitsync"
    ]
    assert (
        "Normal",
        "Applied",
        f"gitsync applied revision {repo.revisions[0][:12]} (create)",
    ) in ranker
    assert any(reason == "Healthy" for _, reason, _ in ranker)
    # kubectl describe shows only events whose involvedObject.uid is the object's.
    described = control_plane.kubectl("describe", "rayservice", "ranker", "-n", namespace).stdout
    assert f"gitsync applied revision {repo.revisions[0][:12]} (create)" in described
    # An env var changed in Git: the plan against the live object names it, masks its values,
    # and shows them only under ui.showEnvValues (the agent's rollout records).
    repo.commit(
        lambda root: repo.edit(
            "ranker.yaml", "http://embedder-serve-svc:8000/embed", "http://secret-host/embed"
        ),
        "move the embedder",
    )
    assert main(["sync", "--once", "--dry-run", *args]) == 0
    printed = capsys.readouterr()  # the plan on stdout, progress on stderr
    assert "runtime_env.env_vars.EMBEDDER_URL: ••• → •••" in printed.out
    for text in (printed.out, printed.err):
        assert "secret-host" not in text
        assert "embedder-serve-svc" not in text
    config.write_text(config.read_text() + "ui: {showEnvValues: true}\n")
    assert main(["sync", "--once", "--dry-run", *args]) == 0
    assert "→ http://secret-host/embed" in capsys.readouterr().out


def test_a_field_owned_by_another_manager_is_a_conflict_unless_forced(
    api: client.ApiClient, repo: GitOpsRepo, namespace: str, sim: Simulator, tmp_path: Path
) -> None:
    config = repo.agent_config(tmp_path / "cache")
    store = StateStore(api, namespace)
    assert sync_once(config, RayServicesClient(api), store).ok
    live = get(api, namespace, "ranker")
    taken = {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": "ranker", "namespace": namespace},
        "spec": {
            "serveConfigV2": live["spec"]["serveConfigV2"].replace(
                "num_replicas: 1", "num_replicas: 9"
            )
        },
    }
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        "ranker",
        taken,
        field_manager="platform-tool",
        force=True,
        _content_type="application/apply-patch+yaml",
        _preload_content=False,
    ).release_conn()
    repo.commit(
        lambda root: repo.edit("ranker.yaml", "num_replicas: 1", "num_replicas: 2"), "scale"
    )
    [result] = sync_once(config, RayServicesClient(api), store).results
    assert result.outcome is Outcome.FAILED
    assert "conflicts with another field manager" in result.message
    assert "platform-tool" in result.message
    forced = replace(config, rollout=replace(config.rollout, force_conflicts=True))
    assert sync_once(forced, RayServicesClient(api), store).ok
    assert "num_replicas: 2" in get(api, namespace, "ranker")["spec"]["serveConfigV2"]
    assert yaml.safe_load(get(api, namespace, "ranker")["spec"]["serveConfigV2"])


def test_an_existing_unowned_rayservice_is_never_modified(
    api: client.ApiClient, repo: GitOpsRepo, namespace: str, sim: Simulator, tmp_path: Path
) -> None:
    manual = yaml.safe_load(repo.path("embedder.yaml").read_text())
    manual["metadata"]["namespace"] = namespace
    manual["spec"]["serveConfigV2"] = manual["spec"]["serveConfigV2"].replace(
        "num_replicas: 1", "num_replicas: 5"
    )
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, manual
    )
    before = get(api, namespace, "embedder")
    [result] = sync_once(
        repo.agent_config(tmp_path / "cache"), RayServicesClient(api), StateStore(api, namespace)
    ).results
    assert result.outcome is Outcome.FAILED
    assert "already exists and belongs to something other than gitsync" in result.message
    after = get(api, namespace, "embedder")
    assert (
        after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
        or after["spec"] == before["spec"]
    )
    assert "num_replicas: 5" in after["spec"]["serveConfigV2"]


def delete_namespace(api: client.ApiClient, name: str) -> None:
    client.CustomObjectsApi(api).delete_collection_namespaced_custom_object(
        GROUP, VERSION, name, PLURAL
    )
    client.CoreV1Api(api).delete_namespace(name)


def test_a_failed_environment_stops_the_ones_after_it(
    api: client.ApiClient, tmp_path: Path, namespace: str, sim: Simulator
) -> None:
    production = f"{namespace}-prod"
    repo = GitOpsRepo(tmp_path / "gitops", namespace, production=production, create_namespace=True)
    try:
        lines: list[str] = []
        result = sync_once(
            repo.agent_config(tmp_path / "cache"),
            RayServicesClient(api),
            StateStore(api, namespace),
            observer=Lines(lines.append),
        )
        assert result.ok, lines
        assert [r.environment for r in result.results] == ["staging", "production"]
        assert (
            client.CoreV1Api(api)
            .read_namespace(production)
            .metadata.labels["app.kubernetes.io/managed-by"]
            == "gitsync"
        )
        sim.add_rule(
            FailureRule(namespace=namespace, import_path="embedder.v2:app", message="import failed")
        )

        def change(root: Path) -> None:
            for env in ("staging", "production"):
                path = root / "environments" / env / "embedder.yaml"
                path.write_text(path.read_text().replace("embedder.serve:app", "embedder.v2:app"))

        repo.commit(change, "break both")
        lines.clear()
        result = sync_once(
            repo.agent_config(tmp_path / "cache"),
            RayServicesClient(api),
            StateStore(api, namespace),
            observer=Lines(lines.append),
        )
        assert [(r.environment, r.outcome) for r in result.results] == [("staging", Outcome.FAILED)]
        assert any("not rolling out production: staging did not succeed" in line for line in lines)
        assert (
            get(api, production, "embedder")["metadata"]["annotations"]["gitsync.ray.io/revision"]
            == repo.revisions[0]
        )
    finally:
        delete_namespace(api, production)


def test_health_timeout_fails_the_rollout(
    api: client.ApiClient, repo: GitOpsRepo, namespace: str, sim: Simulator, tmp_path: Path
) -> None:
    sim.add_rule(
        FailureRule(
            status="DEPLOYING", message="", namespace=namespace, import_path="embedder.serve:app"
        )
    )
    config = repo.agent_config(tmp_path / "cache", health_timeout=3.0)
    [result] = sync_once(config, RayServicesClient(api), StateStore(api, namespace)).results
    assert result.outcome is Outcome.FAILED
    assert f"{namespace}/embedder not Healthy after 3s (wave 0)" in result.message
    assert "app embed is DEPLOYING on embedder-" in result.message
    names = {
        o["metadata"]["name"]
        for o in client.CustomObjectsApi(api).list_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL
        )["items"]
    }
    assert names == {"embedder"}  # wave 1 never applied


def test_a_gitsync_yaml_pointing_an_environment_outside_allowed_namespaces_applies_nothing(
    api: client.ApiClient, repo: GitOpsRepo, namespace: str, tmp_path: Path
) -> None:
    elsewhere = f"{namespace}-elsewhere"  # exists, so only the allow-list stops the apply
    client.CoreV1Api(api).create_namespace({"metadata": {"name": elsewhere}})
    try:

        def point_elsewhere(root: Path) -> None:
            path = root / "gitsync.yaml"
            path.write_text(
                path.read_text().replace(f"namespace: {namespace}", f"namespace: {elsewhere}")
            )

        repo.commit(point_elsewhere, "staging, somewhere else")
        line = next(
            n
            for n, text in enumerate((repo.work / "gitsync.yaml").read_text().splitlines(), 1)
            if text.startswith("- ")
        )
        config = replace(
            repo.agent_config(tmp_path / "cache"), allowed_namespaces=(("staging", (namespace,)),)
        )
        with pytest.raises(InvalidRevision) as raised:
            sync_once(config, RayServicesClient(api), StateStore(api, namespace))
        [problem] = raised.value.problems
        assert str(problem).startswith(
            f"gitsync.yaml:{line}: environment 'staging' deploys to namespace '{elsewhere}', "
            "which the agent config does not allow"
        )
        for ns in (namespace, elsewhere):
            listing = client.CustomObjectsApi(api).list_namespaced_custom_object(
                GROUP, VERSION, ns, PLURAL
            )
            assert listing["items"] == [], ns
    finally:
        client.CoreV1Api(api).delete_namespace(elsewhere)
