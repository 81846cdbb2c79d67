"""The preview transform: names within KubeRay's limit, the preview namespace whatever the
manifest says, caps on workers and Serve replicas, route prefixes per pull request."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from gitsync.checkout import read_environment, read_tree
from gitsync.manifests.preview import MAX_NAME, PREVIEW, preview_manifest, preview_name
from gitsync.manifests.repoconfig import PreviewConfig

CONFIG = PreviewConfig("staging", "ray-previews", max_worker_replicas=1, max_num_replicas=1)
SERVE = """applications:
- name: rank
  route_prefix: /rank
  import_path: ranker.serve:app
  deployments:
  - name: Ranker
    num_replicas: 4
  - name: Scorer
    autoscaling_config: {min_replicas: 2, max_replicas: 8}
- name: health
  route_prefix: /
  import_path: ranker.health:app
"""
MANIFEST = {
    "apiVersion": "ray.io/v1",
    "kind": "RayService",
    "metadata": {"name": "ranker", "namespace": "production", "labels": {"team": "search"}},
    "spec": {
        "serveConfigV2": SERVE,
        "rayClusterConfig": {
            "workerGroupSpecs": [
                {"groupName": "cpu", "replicas": 4, "minReplicas": 2, "maxReplicas": 10}
            ]
        },
    },
}


def test_names_stay_within_kuberays_limit_and_are_deterministic() -> None:
    assert preview_name("ranker", 7) == "ranker-pr-7"
    long = "a-very-long-rayservice-name-that-goes-on-and-on-x"
    name = preview_name(long, 12345)
    assert len(name) <= MAX_NAME
    assert name.endswith("-pr-12345")
    assert name == preview_name(long, 12345)
    assert name != preview_name(long + "y", 12345)


def test_the_preview_lands_in_the_preview_namespace_with_caps_and_prefixes() -> None:
    preview = preview_manifest(MANIFEST, 7, CONFIG)
    assert preview["metadata"]["namespace"] == "ray-previews"
    assert preview["metadata"]["name"] == "ranker-pr-7"
    assert preview["metadata"]["labels"] == {"team": "search", PREVIEW: "7"}
    [group] = preview["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (1, 1, 1)
    serve = yaml.safe_load(preview["spec"]["serveConfigV2"])
    rank, health = serve["applications"]
    assert rank["route_prefix"] == "/pr-7/rank"
    assert health["route_prefix"] == "/pr-7"
    ranker, scorer = rank["deployments"]
    assert ranker["num_replicas"] == 1
    assert scorer["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 1}
    assert MANIFEST["metadata"]["namespace"] == "production"  # the input is untouched


def test_previews_read_a_manifest_naming_another_namespace_and_validate_the_rest(
    tmp_path: Path,
) -> None:
    """The environment itself rejects ``namespace: ray-production``; its preview does not
    (the transform decides the namespace), but every other problem still counts."""
    corpus = Path(__file__).parent / "corpus"
    (tmp_path / "gitsync.yaml").write_text(
        "environments:\n  - {name: staging, path: envs/staging, namespace: ray-staging}\n"
    )
    folder = tmp_path / "envs" / "staging"
    folder.mkdir(parents=True)
    shutil.copy(corpus / "namespace-conflict.yaml", folder / "svc.yaml")
    report = read_tree(tmp_path)
    assert report.config is not None
    [env] = report.config.environments
    assert not report.ok
    loaded = read_environment(tmp_path, report.config, env, any_namespace=True)
    assert loaded.ok, loaded.problems
    [service] = loaded.services
    assert service.key.namespace == service.manifest["metadata"]["namespace"] == "ray-staging"
    preview = preview_manifest(service.manifest, 3, CONFIG)
    assert preview["metadata"]["namespace"] == "ray-previews"
    # Another problem beside the namespace is still one.
    text = (folder / "svc.yaml").read_text()
    (folder / "svc.yaml").write_text(text + "status: {}\n")
    loaded = read_environment(tmp_path, report.config, env, any_namespace=True)
    assert [p.message for p in loaded.problems] == [
        "status is written by KubeRay, not by Git; remove it from the manifest"
    ]
