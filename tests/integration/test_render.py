"""Rendered environments with the real tools: examples/repo-layout (a base and overlays, with
kubectl's kustomize) and examples/helm-layout (helm template), each whole through validate,
sync to Healthy, status and plan (Git against Git, and live) against the real API server and
the simulator; diff, drift and the render cache; problems placed at the file the user wrote
(the base, the patch or images: entry, the template), a render failure as the revision's
failure."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from kubernetes import client

from gitsync import renderer
from gitsync.checkout import read_tree, read_tree_cached
from gitsync.cli import main
from testbed.binaries import Binaries
from testbed.controlplane import ControlPlane
from testbed.simulator import Simulator
from tests.conftest import fresh_namespace

from .gitops import HELM, KUSTOMIZE, GitOpsRepo, counting_tool, edit, git, runs
from .kube import GROUP, PLURAL, VERSION


@pytest.fixture(autouse=True)
def renderers(binaries: Binaries, monkeypatch: pytest.MonkeyPatch) -> Binaries:
    """The test bed's kustomize (kubectl's) and helm, configured as an agent configures them."""
    monkeypatch.setenv("GITSYNC_KUSTOMIZE", str(binaries.kubectl))
    monkeypatch.setenv("GITSYNC_HELM", str(binaries.helm))
    return binaries


def copy(example: Path, tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(example, repo)
    return repo


def commit(repo: Path, message: str) -> str:
    if not (repo / ".git").exists():
        git("init", "-q", "-b", "main", cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", message, cwd=repo)
    return git("rev-parse", "HEAD", cwd=repo)


def workers(report_env: object, name: str) -> dict[str, object]:
    services = {s.key.name: s for s in report_env.services}  # type: ignore[attr-defined]
    group = services[name].manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    container = group["template"]["spec"]["containers"][0]
    return {
        "replicas": group["replicas"],
        "image": container["image"],
        "memory": container["resources"]["requests"]["memory"],
    }


def planned_changes(out: str) -> dict[str, list[tuple[str, str]]]:
    """`plan -o json`'s output: each environment's changed services and their actions."""
    return {
        p["environment"]: [
            (c["name"], c["action"])
            for w in p["waves"]
            for c in w["changes"]
            if c["action"] != "unchanged"
        ]
        for p in json.loads(out)["environments"]
    }


def test_kustomize_overlays_render_with_their_patches(tmp_path: Path) -> None:
    report = read_tree(copy(KUSTOMIZE, tmp_path))
    assert report.ok, report.problems
    staging, production = report.environments
    assert workers(staging, "embedder") == {
        "replicas": 1,
        "image": "rayproject/ray:2.49.0-py311",
        "memory": "8Gi",
    }
    assert workers(production, "embedder") == {
        "replicas": 3,
        "image": "rayproject/ray:2.49.1-py311",
        "memory": "12Gi",
    }
    for env in report.environments:  # placed at the base, without kustomize's annotations
        assert {(s.source, s.line) for s in env.services} == {
            ("base/embedder.yaml", 2),
            ("base/ranker.yaml", 2),
            ("base/summarizer.yaml", 2),
        }
        for service in env.services:
            annotations = service.manifest["metadata"].get("annotations", {})
            assert not any(
                k.startswith(("config.kubernetes.io", "alpha.config")) for k in annotations
            )


def test_problems_point_at_the_base_or_the_patch_that_wrote_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = copy(KUSTOMIZE, tmp_path)
    edit(repo / "base/summarizer.yaml", "type: NewCluster", "type: Bogus")
    edit(repo / "overlays/production/ranker-scale.yaml", "value: 3", "value: 30")
    (repo / "overlays/production/embedder-replicas.yaml").write_text(
        "apiVersion: ray.io/v1\nkind: RayService\nmetadata:\n  name: embedder\nspec:\n"
        "  rayClusterConfig:\n    enableInTreeAutoscaling: maybe\n"
    )
    edit(
        repo / "overlays/production/kustomization.yaml",
        "patches:\n",
        "patches:\n  - path: embedder-replicas.yaml\n",
    )
    assert main(["validate", str(repo)]) == 1
    out = capsys.readouterr().out.splitlines()
    base_line = next(
        i + 1
        for i, t in enumerate((repo / "base/summarizer.yaml").read_text().splitlines())
        if "Bogus" in t
    )
    # The base's problem once (staging and production both render it), at the base's line.
    assert [line for line in out if "Bogus" in line] == [
        next(line for line in out if line.startswith(f"base/summarizer.yaml:{base_line}: "))
    ]
    # A value a JSON patch set: at the patch operation's value; a strategic-merge patch: its line.
    assert any(
        line.startswith("overlays/production/ranker-scale.yaml:4: ") and "30" in line
        for line in out
    ), out
    assert any(line.startswith("overlays/production/embedder-replicas.yaml:7: ") for line in out), (
        out
    )


HEAD_IMAGE = ("spec", "rayClusterConfig", "headGroupSpec", "template", "spec", "containers", 0,
              "image")  # fmt: skip


def test_an_image_set_by_images_is_placed_at_that_entry_and_base_fields_at_their_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = copy(KUSTOMIZE, tmp_path)
    kustomization = repo / "overlays/production/kustomization.yaml"
    entry = ("overlays/production/kustomization.yaml", line_of(kustomization, "- name: "))
    staging, production = read_tree(repo).environments
    by_name = {s.key.name: s for s in production.services}
    worker = ("spec", "rayClusterConfig", "workerGroupSpecs", 0, "template", "spec",
              "containers", 0)  # fmt: skip
    assert by_name["ranker"].patched[HEAD_IMAGE] == entry
    assert by_name["embedder"].patched[(*worker, "image")] == entry
    # The JSON patch that replaced the embedder's resources stays theirs.
    assert by_name["embedder"].patched[(*worker, "resources")][0] == (
        "overlays/production/embedder-scale.yaml"
    )
    # rayproject/ray-ml is another image: the entry for rayproject/ray leaves it alone.
    assert HEAD_IMAGE not in by_name["summarizer"].patched
    assert all(not s.patched for s in staging.services)  # staging is the base as written
    # The pod-spec policy refuses the tag the entry sets: at the entry, not at the base.
    edit(
        repo / "gitsync.yaml",
        "    after: [staging]",
        '    after: [staging]\n    policy: {images: ["docker.io/rayproject/ray:2.49.0-*",'
        ' "docker.io/rayproject/ray-ml:*"]}',
    )
    assert main(["validate", str(repo)]) == 1
    refused = [line for line in capsys.readouterr().out.splitlines() if "allow-list" in line]
    assert refused, "nothing refused"
    assert all(line.startswith(f"{entry[0]}:{entry[1]}: ") for line in refused), refused
    assert any("rayproject/ray:2.49.1-py311" in line for line in refused)
    # A field only the base writes is placed at its own line of the base file.
    edit(repo / "base/ranker.yaml", 'rayVersion: "2.49.0"', "rayVersion: 2.49")
    assert main(["validate", str(repo)]) == 1
    out = capsys.readouterr().out
    ray_version = line_of(repo / "base/ranker.yaml", "rayVersion: 2.49")
    assert f"base/ranker.yaml:{ray_version}: " in out, out


def test_a_base_change_plans_every_environment_it_affects(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = copy(KUSTOMIZE, tmp_path)
    before = commit(repo, "overlays")
    edit(repo / "base/ranker.yaml", 'model_version: "2026-11-01"', 'model_version: "2026-12-01"')
    after = commit(repo, "a new ranker model, in the base only")
    argv = ["plan", str(repo), "--from", before, "--to", after, "-o", "json"]
    assert main(argv) == 1
    changed = planned_changes(capsys.readouterr().out)
    assert changed == {
        "staging": [("ranker", "serve-update")],
        "production": [("ranker", "serve-update")],
    }


def test_render_failure_is_the_revisions_failure_without_local_paths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = copy(KUSTOMIZE, tmp_path)
    edit(repo / "overlays/staging/kustomization.yaml", "../../base", "../../missing")
    assert main(["validate", str(repo)]) == 1
    out = capsys.readouterr().out
    assert "gitsync.yaml:4: environment 'staging': kustomize failed:" in out
    assert "missing" in out
    assert tempfile.gettempdir() not in out
    assert "gitsync-render" not in out


def test_helm_chart_renders_per_environment_values(tmp_path: Path) -> None:
    report = read_tree(copy(HELM, tmp_path))
    assert report.ok, report.problems
    staging, production = report.environments
    assert workers(staging, "ranker") == {
        "replicas": 1,
        "image": "rayproject/ray:2.49.0-py311",
        "memory": "8Gi",
    }
    assert workers(production, "embedder") == {
        "replicas": 3,
        "image": "rayproject/ray:2.49.0-py311-cu121",
        "memory": "12Gi",
    }
    assert {s.source for s in production.services} == {
        "charts/ray-services/templates/rayservice.yaml"
    }


def test_helm_problems_point_at_the_template_and_lookup_finds_no_cluster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = copy(HELM, tmp_path)
    edit(
        repo / "environments/production/values.yaml",
        "workers: {replicas: 3}",
        "workers: {replicas: 30}",
    )
    template = repo / "charts/ray-services/templates/rayservice.yaml"
    # lookup against the cluster answers nothing: helm template has no cluster, no kubeconfig.
    edit(
        template,
        "  annotations:\n",
        '  annotations:\n    seen: {{ lookup "v1" "Namespace" "" "default" | len | quote }}\n',
    )
    assert main(["validate", str(repo)]) == 1
    out = capsys.readouterr().out
    line = next(
        i + 1
        for i, t in enumerate(template.read_text().splitlines())
        if t.strip().startswith("replicas:")
    )
    assert f"charts/ray-services/templates/rayservice.yaml:{line}: " in out
    assert "30 is above maxReplicas 10" in out
    edit(repo / "environments/production/values.yaml", "replicas: 30", "replicas: 3")
    report = read_tree(repo)
    assert report.ok, report.problems
    [ranker] = [s for s in report.environments[1].services if s.key.name == "ranker"]
    assert ranker.manifest["metadata"]["annotations"]["seen"] == "0"


def test_renders_are_cached_by_what_they_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, binaries: Binaries
) -> None:
    wrapper, log = counting_tool(binaries.kubectl, tmp_path)
    monkeypatch.setenv("GITSYNC_KUSTOMIZE", str(wrapper))
    monkeypatch.setattr(renderer, "MAX_CACHED_RENDERS", 3)
    repo, cache = copy(KUSTOMIZE, tmp_path), tmp_path / "renders"
    assert read_tree(repo, render_cache=cache).ok
    assert runs(log) == 2
    (repo / "README.md").write_text("a file no render reads\n")
    assert read_tree(repo, render_cache=cache).ok
    assert runs(log) == 2
    edit(repo / "overlays/production/ranker-scale.yaml", "value: 8", "value: 9")
    assert read_tree(repo, render_cache=cache).ok
    assert runs(log) == 3
    edit(repo / "base/ranker.yaml", "max_replicas: 2", "max_replicas: 3")
    assert read_tree(repo, render_cache=cache).ok
    assert runs(log) == 5
    assert len(list(cache.iterdir())) == 3  # the least recently used renders pruned
    # A pass at a revision already read renders nothing (the tree's report is kept).
    tree = tmp_path / "trees" / "abc"
    shutil.copytree(repo, tree)
    read_tree_cached(tree)
    before = runs(log)
    assert read_tree_cached(tree).ok
    assert runs(log) == before


def test_sync_plan_diff_and_drift_on_the_overlay_and_nothing_from_a_failed_render(
    api: client.ApiClient,
    namespace: str,
    sim: Simulator,
    control_plane: ControlPlane,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    repo = GitOpsRepo(tmp_path / "gitops", namespace, example=KUSTOMIZE)
    config = repo.config_file(tmp_path / "cache", tmp_path / "agent.yaml")
    args = ["--config", str(config), "--kubeconfig", str(control_plane.kubeconfig)]
    assert main(["sync", "--once", *args]) == 0
    assert f"staging: succeeded at {repo.revisions[0][:12]}" in capsys.readouterr().out

    def live() -> dict[str, dict[str, object]]:
        items = client.CustomObjectsApi(api).list_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL
        )["items"]
        return {i["metadata"]["name"]: i for i in items}

    applied = live()
    assert set(applied) == {"embedder", "ranker", "summarizer"}
    for item in applied.values():  # kustomize's build annotations never reach the cluster
        assert not any("config.kubernetes.io" in k for k in item["metadata"]["annotations"])
    # Live plan, diff and drift work on the rendered overlay as on plain YAML.
    kube = ["--kubeconfig", str(control_plane.kubeconfig)]
    assert main(["plan", str(repo.work), *kube]) == 0  # nothing to do
    assert main(["drift", *args]) == 0
    base = repo.work / "base/ranker.yaml"
    edit(base, 'model_version: "2026-11-01"', 'model_version: "2026-12-01"')
    capsys.readouterr()
    assert main(["diff", str(repo.work), *kube]) == 1
    assert "user_config.model_version: 2026-11-01 → 2026-12-01" in capsys.readouterr().out
    edit(base, 'model_version: "2026-12-01"', 'model_version: "2026-11-01"')
    repo.commit(
        lambda root: edit(
            root / "overlays/staging/kustomization.yaml",
            "- ../../base",
            "- https://example.com/remote-base",
        ),
        "a remote base",
    )
    assert main(["sync", "--once", *args]) != 0
    printed = capsys.readouterr()
    assert "is remote; rendering has no network" in printed.out + printed.err
    after = live()
    assert {n: i["metadata"]["resourceVersion"] for n, i in after.items()} == {
        n: i["metadata"]["resourceVersion"] for n, i in applied.items()
    }


# Each example whole, end to end: what production renders differently from staging, and a
# file both environments read (the base's ranker, the chart's own values) edited once.
EXAMPLES_END_TO_END = {
    "overlays": (
        KUSTOMIZE,
        {"replicas": 3, "image": "rayproject/ray:2.49.1-py311", "memory": "12Gi"},
        ("base/ranker.yaml", 'model_version: "2026-11-01"', 'model_version: "2026-12-01"'),
    ),
    "helm": (
        HELM,
        {"replicas": 3, "image": "rayproject/ray:2.49.0-py311-cu121", "memory": "12Gi"},
        ("charts/ray-services/values.yaml", "ranker-2.3.1.zip", "ranker-2.3.2.zip"),
    ),
}


def live_workers(api: client.ApiClient, namespace: str, name: str) -> dict[str, object]:
    item = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name
    )
    group = item["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    container = group["template"]["spec"]["containers"][0]
    return {
        "replicas": group["replicas"],
        "image": container["image"],
        "memory": container["resources"]["requests"]["memory"],
    }


@pytest.mark.parametrize("layout", sorted(EXAMPLES_END_TO_END))
def test_each_example_validates_plans_and_syncs_staging_then_production_to_healthy(
    layout: str,
    api: client.ApiClient,
    namespace: str,
    sim: Simulator,
    control_plane: ControlPlane,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The example as a team keeps it (both environments, each in a namespace of its own)
    through validate, sync --once until Healthy, status, a live plan with nothing to do, then a
    change to what both environments share, planned between the two revisions for both (the
    agent rolling such a commit out: test_agent.py)."""
    example, production_workers, (shared, old, new) = EXAMPLES_END_TO_END[layout]
    with fresh_namespace(api) as production:
        repo = GitOpsRepo(tmp_path / "gitops", namespace, production=production, example=example)
        assert main(["validate", str(repo.work)]) == 0
        config = repo.config_file(tmp_path / "cache", tmp_path / "agent.yaml")
        args = ["--config", str(config), "--kubeconfig", str(control_plane.kubeconfig)]
        assert main(["sync", "--once", *args]) == 0
        out = capsys.readouterr().out
        for env in ("staging", "production"):
            assert f"{env}: succeeded at {repo.revisions[0][:12]}" in out, out
        assert main(["status", *args]) == 0  # every environment Healthy as applied
        staging_workers = {"replicas": 1, "image": "rayproject/ray:2.49.0-py311", "memory": "8Gi"}
        assert live_workers(api, namespace, "embedder") == staging_workers
        assert live_workers(api, production, "embedder") == production_workers
        kube = ["--kubeconfig", str(control_plane.kubeconfig)]
        assert main(["plan", str(repo.work), *kube]) == 0  # the cluster is what Git renders
        before = repo.revisions[-1]
        after = repo.commit(lambda root: edit(root / shared, old, new), f"{shared}: {new}")
        capsys.readouterr()
        argv = ["plan", str(repo.work), "--from", before, "--to", after, "-o", "json"]
        assert main(argv) == 1
        assert planned_changes(capsys.readouterr().out) == {
            "staging": [("ranker", "serve-update")],
            "production": [("ranker", "serve-update")],
        }


def test_a_missing_tool_makes_the_environment_invalid_saying_which(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITSYNC_HELM", str(tmp_path / "no-helm"))
    report = read_tree(copy(HELM, tmp_path))
    assert [str(p) for p in report.problems][:1] == [
        "gitsync.yaml:4: environment 'staging': renders with helm, which is not installed: "
        "put helm on PATH or set GITSYNC_HELM"
    ]


def line_of(path: Path, text: str, after: int = 0) -> int:
    """The first line of ``path`` holding ``text``, after line ``after``."""
    lines = path.read_text().splitlines()
    return next(i + 1 for i, t in enumerate(lines) if i >= after and text in t)


def test_drift_of_a_rendered_service_names_the_base_or_the_patch_and_heals_the_render(
    api: client.ApiClient,
    namespace: str,
    sim: Simulator,
    control_plane: ControlPlane,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    custom = client.CustomObjectsApi(api)
    with fresh_namespace(api) as production:
        repo = GitOpsRepo(
            tmp_path / "gitops", namespace, production=production, self_heal=True, example=KUSTOMIZE
        )
        config = repo.config_file(tmp_path / "cache", tmp_path / "agent.yaml")
        args = ["--config", str(config), "--kubeconfig", str(control_plane.kubeconfig)]
        assert main(["sync", "--once", *args]) == 0
        assert main(["drift", *args]) == 0  # the rendered overlays, as applied: no drift
        # By hand in production: a field the overlay's JSON patch set (the highmem group's
        # maxReplicas, 8 there, 4 in the base) and one of the base (the Serve config).
        path = "/spec/rayClusterConfig/workerGroupSpecs/1/maxReplicas"
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, production, PLURAL, "ranker", [{"op": "replace", "path": path, "value": 2}],
            field_manager="kubectl-patch", _content_type="application/json-patch+json",
        )  # fmt: skip
        live = custom.get_namespaced_custom_object(GROUP, VERSION, production, PLURAL, "ranker")
        serve = live["spec"]["serveConfigV2"].replace("num_replicas: 1", "num_replicas: 5", 1)
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, production, PLURAL, "ranker", {"spec": {"serveConfigV2": serve}},
            field_manager="kubectl-edit",
        )  # fmt: skip
        capsys.readouterr()
        assert main(["drift", *args, "-o", "json"]) == 1
        staging, prod = json.loads(capsys.readouterr().out)["environments"]
        assert staging["drifted"] == []  # the same base, rendered for staging: untouched
        [found] = prod["drifted"]
        assert found["service"] == f"{production}/ranker"
        assert found["source"] == "base/ranker.yaml:2"  # where the service is written
        patch = repo.work / "overlays/production/ranker-scale.yaml"
        by_path = {f["path"]: f for f in found["fields"]}
        assert by_path["spec.rayClusterConfig.workerGroupSpecs[highmem].maxReplicas"] == {
            "path": "spec.rayClusterConfig.workerGroupSpecs[highmem].maxReplicas",
            "old": 8,  # Git's, as the overlay renders it
            "new": 2,
            "source": f"overlays/production/ranker-scale.yaml:{line_of(patch, 'value: 8')}",
        }
        serve_field = "spec.serveConfigV2.applications[rank].deployments[Ranker].num_replicas"
        assert (by_path[serve_field]["old"], by_path[serve_field]["new"]) == (1, 5)
        # A field only the base writes: at its own line there (inside the serveConfigV2 block).
        base = repo.work / "base/ranker.yaml"
        assert by_path[serve_field]["source"] == f"base/ranker.yaml:{line_of(base, 'num_replicas')}"
        assert found["managers"] == ["kubectl-edit", "kubectl-patch"]
        # Healed: Git's rendered version goes back, the overlay's patches with it.
        assert main(["drift", "--heal", "--env", "production", *args]) == 1
        printed = capsys.readouterr().out
        assert f"set in overlays/production/ranker-scale.yaml:{line_of(patch, 'value: 8')}" in (
            printed
        )
        assert "healed: succeeded" in printed
        healed = custom.get_namespaced_custom_object(GROUP, VERSION, production, PLURAL, "ranker")
        groups = healed["spec"]["rayClusterConfig"]["workerGroupSpecs"]
        assert [(g["replicas"], g["maxReplicas"]) for g in groups] == [(3, 10), (0, 8)]
        assert groups[0]["template"]["spec"]["containers"][0]["image"].endswith(":2.49.1-py311")
        assert healed["spec"]["serveConfigV2"] == live["spec"]["serveConfigV2"]
        assert main(["drift", *args]) == 0
        # An image production's images: entry set, changed by hand: placed at that entry.
        head = "/spec/rayClusterConfig/headGroupSpec/template/spec/containers/0/image"
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, production, PLURAL, "ranker",
            [{"op": "replace", "path": head, "value": "rayproject/ray:2.50.0-py311"}],
            field_manager="kubectl-patch", _content_type="application/json-patch+json",
        )  # fmt: skip
        capsys.readouterr()
        assert main(["drift", "--env", "production", *args, "-o", "json"]) == 1
        [env] = json.loads(capsys.readouterr().out)["environments"]
        [found] = env["drifted"]
        kustomization = repo.work / "overlays/production/kustomization.yaml"
        assert [(f["path"], f["old"], f["new"], f["source"]) for f in found["fields"]] == [
            (
                "spec.rayClusterConfig.headGroupSpec.template.spec.containers[ray-head].image",
                "rayproject/ray:2.49.1-py311",
                "rayproject/ray:2.50.0-py311",
                f"overlays/production/kustomization.yaml:{line_of(kustomization, '- name: ')}",
            )
        ]
