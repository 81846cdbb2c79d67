"""The preview transform: names within KubeRay's limit, the preview namespace whatever the
manifest says, caps on workers and Serve replicas, route prefixes per pull request."""

from __future__ import annotations

import shutil
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import pytest
import yaml

from gitsync.checkout import read_environment, read_tree
from gitsync.manifests.preview import MAX_NAME, PREVIEW, preview_manifest, preview_name
from gitsync.manifests.quantity import parse_quantity
from gitsync.manifests.repoconfig import PreviewConfig, load_repo_config

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


RESOURCES = {
    "apiVersion": "ray.io/v1",
    "kind": "RayService",
    "metadata": {"name": "summarizer"},
    "spec": {
        "serveConfigV2": """applications:
- name: summarize
  import_path: summarizer.serve:app
  deployments:
  - name: Summarizer
    num_replicas: auto
    ray_actor_options: {num_cpus: 4, num_gpus: 1, memory: 8589934592}
  - name: Tokenizer
    num_replicas: auto
    autoscaling_config: {min_replicas: 2, max_replicas: 50, target_ongoing_requests: 4}
    ray_actor_options: {num_cpus: 0.25}
- name: internal
  route_prefix: null
  import_path: summarizer.internal:app
""",
        "rayClusterConfig": {
            "headGroupSpec": {"template": {"spec": {"containers": [
                {"name": "ray-head", "resources": {
                    "requests": {"cpu": "1", "memory": "4Gi"},
                    "limits": {"cpu": "2", "memory": "4Gi"}}},
            ]}}},
            "workerGroupSpecs": [{"groupName": "gpu", "replicas": 2, "template": {"spec": {
                "containers": [{"name": "ray-worker", "resources": {
                    "requests": {"cpu": "250m", "memory": "16Gi", "nvidia.com/gpu": 2},
                    "limits": {"cpu": "8", "memory": "16G", "nvidia.com/gpu": "2",
                               "ephemeral-storage": "100Gi"}}}],
            }}}],
        },
    },
}  # fmt: skip


def containers(preview: dict[str, object]) -> list[dict[str, dict[str, object]]]:
    cluster = preview["spec"]["rayClusterConfig"]  # type: ignore[index]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [c["resources"] for g in groups for c in g["template"]["spec"]["containers"]]


def test_resource_caps_apply_to_containers_and_actor_options() -> None:
    config = replace(CONFIG, max_cpu="500m", max_memory="2Gi", max_gpu=1)
    head, worker = containers(preview_manifest(RESOURCES, 4, config))
    assert head == {
        "requests": {"cpu": "500m", "memory": "2Gi"},
        "limits": {"cpu": "500m", "memory": "2Gi"},
    }
    assert worker == {
        "requests": {"cpu": "250m", "memory": "2Gi", "nvidia.com/gpu": "1"},  # 250m: under
        "limits": {"cpu": "500m", "memory": "2Gi", "nvidia.com/gpu": "1",
                   "ephemeral-storage": "100Gi"},  # not a capped resource
    }  # fmt: skip
    serve = yaml.safe_load(preview_manifest(RESOURCES, 4, config)["spec"]["serveConfigV2"])
    summarizer, tokenizer = serve["applications"][0]["deployments"]
    assert summarizer["ray_actor_options"] == {"num_cpus": 0.5, "num_gpus": 1, "memory": 2**31}
    assert tokenizer["ray_actor_options"] == {"num_cpus": 0.25}


def test_without_resource_caps_resources_are_untouched() -> None:
    preview = preview_manifest(RESOURCES, 4, CONFIG)
    assert containers(preview) == containers(RESOURCES)
    serve = yaml.safe_load(preview["spec"]["serveConfigV2"])
    summarizer = serve["applications"][0]["deployments"][0]
    assert summarizer["ray_actor_options"] == {"num_cpus": 4, "num_gpus": 1, "memory": 2**33}


def test_auto_replicas_are_capped_and_the_default_route_moves_under_the_pr() -> None:
    config = replace(CONFIG, max_num_replicas=2)
    serve = yaml.safe_load(preview_manifest(RESOURCES, 4, config)["spec"]["serveConfigV2"])
    summarize, internal = serve["applications"]
    assert summarize["route_prefix"] == "/pr-4"  # absent: Serve's default "/"
    assert internal["route_prefix"] is None  # no HTTP route: none added
    summarizer, tokenizer = summarize["deployments"]
    # "auto" alone would autoscale to Serve's default of 100 replicas.
    assert summarizer["num_replicas"] == "auto"
    assert summarizer["autoscaling_config"] == {"max_replicas": 2}
    assert tokenizer["num_replicas"] == "auto"
    assert tokenizer["autoscaling_config"] == {
        "min_replicas": 2, "max_replicas": 2, "target_ongoing_requests": 4
    }  # fmt: skip


@pytest.mark.parametrize(
    ("text", "value"),
    [("500m", Fraction(1, 2)), ("2", 2), ("4Gi", 4 * 2**30), ("16G", 16 * 10**9),
     ("1e3", 1000), ("1E", 10**18), (".5", Fraction(1, 2)), (2, 2), (0.25, Fraction(1, 4)),
     ("2 cores", None), ("", None), (True, None), (None, None),
     # apimachinery refuses these; kubernetes.utils.parse_quantity (Decimal underneath) takes
     # them, which is why the grammar is kept here (gitsync/manifests/quantity.py).
     ("NaN", None), ("Infinity", None), ("1K", None), ("1_000", None), ("1mi", None)],
)  # fmt: skip
def test_quantities(text: object, value: object) -> None:
    assert parse_quantity(text) == value


REPO = """environments:
  - {name: staging, path: envs/staging, namespace: ray-staging}
previews:
  from: staging
  namespace: ray-previews
  overrides: %s
"""


def test_resource_caps_are_read_from_gitsync_yaml() -> None:
    config, problems = load_repo_config(REPO % "{maxCpu: 500m, maxMemory: 2Gi, maxGpu: 0}")
    assert problems == []
    assert config is not None
    assert config.previews is not None
    previews = config.previews
    assert (previews.max_cpu, previews.max_memory, previews.max_gpu) == ("500m", "2Gi", 0)
    config, problems = load_repo_config(REPO % "{}")
    assert config is not None
    assert config.previews is not None
    assert (config.previews.max_cpu, config.previews.max_gpu) == ("", None)  # no caps
    _, problems = load_repo_config(REPO % "{maxCpu: lots, maxMemory: 0, maxGpu: -1}")
    assert [p.message.split(" must")[0] for p in problems] == [
        "previews.overrides.maxCpu", "previews.overrides.maxMemory", "previews.overrides.maxGpu"
    ]  # fmt: skip


BYPASS = {
    "apiVersion": "ray.io/v1",
    "kind": "RayService",
    "metadata": {"name": "trainer"},
    "spec": {
        "serveConfigV2": "applications: []\n",
        "rayClusterConfig": {
            "enableInTreeAutoscaling": True,
            "headGroupSpec": {"template": {"spec": {
                "initContainers": [{"name": "warm", "resources": {
                    "requests": {"cpu": "64", "memory": "512Gi"}}}],
                "containers": [{"name": "ray-head"}]}}},
            "workerGroupSpecs": [{"groupName": "tpu", "replicas": 1, "numOfHosts": 64,
                "template": {"spec": {"containers": [{"name": "ray-worker", "resources": {
                    "limits": {"aws.amazon.com/neuron": "16", "nvidia.com/mig-3g.20gb": 7,
                               "google.com/tpu": "4", "example.com/fpga": 2,
                               "hugepages-2Mi": "64Gi", "ephemeral-storage": "1Ti"}}}]}}}],
        },
    },
}  # fmt: skip


def test_caps_reach_init_containers_every_accelerator_hosts_and_absent_max_replicas() -> None:
    """What a hostile (or careless) manifest used to slip past the caps."""
    config = replace(CONFIG, max_cpu="1", max_memory="2Gi", max_gpu=1)
    preview = preview_manifest(BYPASS, 5, config)
    cluster = preview["spec"]["rayClusterConfig"]
    [warm] = cluster["headGroupSpec"]["template"]["spec"]["initContainers"]
    assert warm["resources"]["requests"] == {"cpu": "1", "memory": "2Gi"}
    [group] = cluster["workerGroupSpecs"]
    assert group["numOfHosts"] == 1  # 64 pods per replica otherwise
    # The CRD would default it to 2147483647 for the in-tree autoscaler.
    assert group["maxReplicas"] == 1
    [worker] = group["template"]["spec"]["containers"]
    assert worker["resources"]["limits"] == {
        "aws.amazon.com/neuron": "1", "nvidia.com/mig-3g.20gb": "1", "google.com/tpu": "1",
        "example.com/fpga": "1", "hugepages-2Mi": "2Gi", "ephemeral-storage": "1Ti",
    }  # fmt: skip


def test_the_new_limits_are_read_from_gitsync_yaml() -> None:
    text = """environments:
  - {name: staging, path: s, namespace: ray-staging}
previews:
  from: staging
  namespace: ray-previews
  overrides: {maxNumOfHosts: 2, maxWorkerGroups: 1, maxServices: 3}
"""
    config, problems = load_repo_config(text)
    assert problems == []
    assert config is not None
    assert config.previews is not None
    previews = config.previews
    assert (previews.max_num_of_hosts, previews.max_worker_groups, previews.max_services) == (
        2, 1, 3,
    )  # fmt: skip
    default = PreviewConfig("staging", "ray-previews")
    assert (default.max_num_of_hosts, default.max_worker_groups, default.max_services) == (
        1, 4, 10,
    )  # fmt: skip
