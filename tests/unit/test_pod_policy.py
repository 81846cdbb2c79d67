"""The pod-spec policy: every field that reaches the node or the namespace's Secrets is found in
every pod template (head, workers, init and ephemeral containers, the autoscaler sidecar),
refused with file:line or stripped, and the allow-lists hold images and runtime_env URLs."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from gitsync.manifests.load import load_environment
from gitsync.manifests.podpolicy import PodPolicy, enforce, full_image, image_allowed
from gitsync.manifests.repoconfig import EnvironmentConfig, load_repo_config
from gitsync.model import SourceFile

HEAD = ("spec", "rayClusterConfig", "headGroupSpec", "template", "spec")
WORKER = ("spec", "rayClusterConfig", "workerGroupSpecs", 0, "template", "spec")


def manifest() -> dict[str, Any]:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": "ranker"},
        "spec": {
            "serveConfigV2": "applications:\n- name: rank\n  import_path: ranker:app\n",
            "rayClusterConfig": {
                "headGroupSpec": {"template": {"spec": {"containers": [
                    {"name": "ray-head", "image": "rayproject/ray:2.50.0"}]}}},
                "workerGroupSpecs": [{"groupName": "cpu", "template": {"spec": {"containers": [
                    {"name": "ray-worker", "image": "rayproject/ray:2.50.0"}]}}}],
            },
        },
    }  # fmt: skip


def at(obj: dict[str, Any], path: tuple[str | int, ...]) -> Any:
    for part in path:
        obj = obj[part]
    return obj


def test_a_plain_ray_service_passes_untouched() -> None:
    result = enforce(manifest(), PodPolicy())
    assert (result.refused, result.stripped) == ((), ())
    assert result.manifest == manifest()


# (where in the pod spec, what to set, the category, the path of the violation under it)
CASES: list[tuple[str, tuple[str | int, ...], Any, str, tuple[str | int, ...]]] = [
    ("privileged", ("containers", 0, "securityContext"), {"privileged": True},
     "privileged", ("containers", 0, "securityContext", "privileged")),
    ("escalation", ("containers", 0, "securityContext"), {"allowPrivilegeEscalation": True},
     "privileged", ("containers", 0, "securityContext", "allowPrivilegeEscalation")),
    ("init container", ("initContainers",),
     [{"name": "setup", "securityContext": {"privileged": True}}],
     "privileged", ("initContainers", 0, "securityContext", "privileged")),
    ("ephemeral container", ("ephemeralContainers",),
     [{"name": "debug", "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}],
     "capabilities", ("ephemeralContainers", 0, "securityContext", "capabilities", "add", 0)),
    ("hostNetwork", ("hostNetwork",), True, "hostNamespaces", ("hostNetwork",)),
    ("hostPID", ("hostPID",), True, "hostNamespaces", ("hostPID",)),
    ("hostIPC", ("hostIPC",), True, "hostNamespaces", ("hostIPC",)),
    ("hostPort", ("containers", 0, "ports"), [{"containerPort": 8265, "hostPort": 8265}],
     "hostPorts", ("containers", 0, "ports", 0, "hostPort")),
    ("hostPath", ("volumes",), [{"name": "root", "hostPath": {"path": "/"}}],
     "hostPath", ("volumes", 0)),
    ("secret volume", ("volumes",), [{"name": "creds", "secret": {"secretName": "db"}}],
     "secrets", ("volumes", 0)),
    ("projected secret", ("volumes",),
     [{"name": "p", "projected": {"sources": [{"configMap": {"name": "c"}},
                                              {"secret": {"name": "db"}}]}}],
     "secrets", ("volumes", 0, "projected", "sources", 1)),
    ("secrets-store CSI", ("volumes",),
     [{"name": "vault", "csi": {"driver": "secrets-store.csi.k8s.io"}}],
     "secrets", ("volumes", 0)),
    ("envFrom Secret", ("containers", 0, "envFrom"), [{"secretRef": {"name": "db"}}],
     "secrets", ("containers", 0, "envFrom", 0)),
    ("secretKeyRef", ("containers", 0, "env"),
     [{"name": "PW", "valueFrom": {"secretKeyRef": {"name": "db", "key": "pw"}}}],
     "secrets", ("containers", 0, "env", 0)),
    ("service account", ("serviceAccountName",), "ray-admin",
     "serviceAccount", ("serviceAccountName",)),
    ("deprecated serviceAccount", ("serviceAccount",), "ray-admin",
     "serviceAccount", ("serviceAccount",)),
    ("token automount", ("automountServiceAccountToken",), True,
     "serviceAccount", ("automountServiceAccountToken",)),
    ("capability", ("containers", 0, "securityContext"),
     {"capabilities": {"add": ["NET_BIND_SERVICE", "NET_ADMIN"]}},
     "capabilities", ("containers", 0, "securityContext", "capabilities", "add", 1)),
    ("hostProcess", ("securityContext",), {"windowsOptions": {"hostProcess": True}},
     "privileged", ("securityContext", "windowsOptions", "hostProcess")),
]  # fmt: skip


def put(obj: dict[str, Any], path: tuple[str | int, ...], value: Any) -> None:
    *parents, last = path
    for part in parents:
        obj = obj[part]
    if isinstance(obj, dict) and isinstance(value, dict) and isinstance(obj.get(last), dict):
        obj[last].update(value)
    else:
        obj[last] = value  # type: ignore[index]


@pytest.mark.parametrize("pod", [HEAD, WORKER], ids=["head", "worker"])
@pytest.mark.parametrize(("field", "where", "value", "category", "path"), CASES,
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_each_field_is_refused_in_every_pod_template(
    pod: tuple[str | int, ...],
    field: str,
    where: tuple[str | int, ...],
    value: Any,
    category: str,
    path: tuple[str | int, ...],
) -> None:
    obj = manifest()
    put(obj, (*pod, *where), copy.deepcopy(value))
    result = enforce(obj, PodPolicy())
    assert [(v.category, v.path) for v in result.refused] == [(category, (*pod, *path))]
    assert result.stripped == ()


@pytest.mark.parametrize(("field", "where", "value", "category", "path"), CASES,
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_a_stripped_category_is_removed_and_nothing_else(
    field: str, where: tuple[str | int, ...], value: Any, category: str,
    path: tuple[str | int, ...],
) -> None:  # fmt: skip
    obj = manifest()
    put(obj, (*WORKER, *where), copy.deepcopy(value))
    result = enforce(obj, PodPolicy(strip=frozenset({category})))
    assert result.refused == ()
    assert [v.path for v in result.stripped] == [(*WORKER, *path)]
    again = enforce(result.manifest, PodPolicy())  # what is left passes the policy
    assert again.refused == ()
    assert at(result.manifest, HEAD) == at(manifest(), HEAD)


def test_a_stripped_volume_takes_its_mounts_with_it() -> None:
    obj = manifest()
    pod = at(obj, WORKER)
    pod["volumes"] = [{"name": "cache", "emptyDir": {}},
                      {"name": "creds", "secret": {"secretName": "db"}}]  # fmt: skip
    pod["containers"][0]["volumeMounts"] = [{"name": "creds", "mountPath": "/creds"},
                                            {"name": "cache", "mountPath": "/cache"}]  # fmt: skip
    result = enforce(obj, PodPolicy(strip=frozenset({"secrets"})))
    pod = at(result.manifest, WORKER)
    assert pod["volumes"] == [{"name": "cache", "emptyDir": {}}]
    assert pod["containers"][0]["volumeMounts"] == [{"name": "cache", "mountPath": "/cache"}]


def test_the_autoscaler_sidecar_is_checked_too() -> None:
    obj = manifest()
    obj["spec"]["rayClusterConfig"]["autoscalerOptions"] = {
        "image": "evil.example/autoscaler:1",
        "securityContext": {"privileged": True},
        "envFrom": [{"secretRef": {"name": "cloud"}}],
    }
    result = enforce(obj, PodPolicy(images=("docker.io/rayproject/*",)))
    assert sorted(v.category for v in result.refused) == ["images", "privileged", "secrets"]


def test_a_disabled_policy_lets_everything_through() -> None:
    obj = manifest()
    at(obj, HEAD)["hostNetwork"] = True
    result = enforce(obj, PodPolicy(enabled=False))
    assert (result.refused, result.stripped, result.manifest) == ((), (), obj)


@pytest.mark.parametrize(
    ("image", "allowed"),
    [("rayproject/ray:2.50.0", True), ("docker.io/rayproject/ray:2.50.0", True),
     ("registry.example.com/ray/ray-ml:1", True), ("python:3.12", False),
     ("evil.example/rayproject/ray:2.50.0", False),
     ("registry.example.com/rayevil/x:1", False)],
)  # fmt: skip
def test_images_are_held_to_the_allow_list(image: str, allowed: bool) -> None:
    patterns = ("docker.io/rayproject/ray:*", "registry.example.com/ray/*")
    assert image_allowed(image, patterns) is allowed
    obj = manifest()
    at(obj, WORKER)["initContainers"] = [{"name": "fetch", "image": image}]
    refused = enforce(obj, PodPolicy(images=patterns)).refused
    assert [v.category for v in refused] == ([] if allowed else ["images"])


def test_full_image_names() -> None:
    assert full_image("ray") == "docker.io/library/ray"
    assert full_image("rayproject/ray:2") == "docker.io/rayproject/ray:2"
    assert full_image("localhost/ray") == "localhost/ray"
    assert full_image("localhost:5000/ray") == "localhost:5000/ray"


SERVE_ENV = """applications:
- name: rank
  import_path: ranker:app
  runtime_env:
    working_dir: https://evil.example/code.zip
    py_modules: [s3://models-bucket/lib.zip, https://files.example.com/ok.zip]
    pip: ["requests==2.32", "--index-url https://evil.example/simple",
          "tool @ https://evil.example/tool.whl", "git+https://evil.example/x.git"]
    conda: {channels: [https://evil.example/conda], dependencies: [{pip: [https://evil.example/y.whl]}]}
  deployments:
  - name: Ranker
    ray_actor_options:
      runtime_env: {uv: {packages: ["https://files.example.com/z.whl"]}, working_dir: /home/ray/app}
"""


def test_runtime_env_urls_are_held_to_the_allow_list() -> None:
    obj = manifest()
    obj["spec"]["serveConfigV2"] = SERVE_ENV
    assert enforce(obj, PodPolicy()).refused == ()  # no allow-list: any URL
    policy = PodPolicy(runtime_env=("https://files.example.com/*", "s3://models-bucket/*"))
    refused = enforce(obj, policy).refused
    text = [v.message for v in refused]
    assert all(v.path == ("spec", "serveConfigV2") for v in refused)
    assert len(text) == 6, text
    for needle in ("working_dir 'https://evil.example/code.zip'", "option '--index-url",
                   "'tool @ https://evil.example/tool.whl'", "'git+https://evil.example/x.git'",
                   "conda.channels 'https://evil.example/conda'",
                   "pip 'https://evil.example/y.whl'"):  # fmt: skip
        assert any(needle in t for t in text), (needle, text)
    assert not any("files.example.com" in t or "models-bucket" in t for t in text)


SERVICE = """apiVersion: ray.io/v1
kind: RayService
metadata:
  name: ranker
spec:
  serveConfigV2: |
    applications:
    - name: rank
      import_path: ranker:app
  rayClusterConfig:
    headGroupSpec:
      template:
        spec:
          hostNetwork: true
          containers:
          - name: ray-head
            image: rayproject/ray:2.50.0
            securityContext:
              privileged: true
"""


def test_an_environment_with_a_policy_refuses_with_file_and_line() -> None:
    file = SourceFile("envs/prod/ranker.yaml", SERVICE.encode())
    env = EnvironmentConfig("production", "envs/prod", "ray-production")
    assert load_environment(env, [file]).ok  # no policy: environments trust their reviewers
    loaded = load_environment(
        EnvironmentConfig("production", "envs/prod", "ray-production", policy=PodPolicy()),
        [file],
    )
    assert [(p.file, p.line) for p in loaded.problems] == [
        ("envs/prod/ranker.yaml", 14), ("envs/prod/ranker.yaml", 19),
    ]  # fmt: skip
    assert "hostNetwork shares the node's namespace" in loaded.problems[0].message
    assert "production's policy" in loaded.problems[0].message
    stripping = PodPolicy(strip=frozenset({"hostNamespaces", "privileged"}))
    loaded = load_environment(
        EnvironmentConfig("production", "envs/prod", "ray-production", policy=stripping), [file]
    )
    assert loaded.ok
    head = at(dict(loaded.services[0].manifest), HEAD)
    assert "hostNetwork" not in head
    assert head["containers"][0]["securityContext"] == {}


def test_gitsync_yaml_reads_the_policy() -> None:
    text = """environments:
  - {name: staging, path: envs/staging, namespace: ray-staging}
  - name: production
    path: envs/prod
    namespace: ray-production
    policy: {strip: [serviceAccount]}
previews:
  from: staging
  namespace: ray-previews
  policy:
    images: ["docker.io/rayproject/ray:*"]
    runtimeEnv: ["https://files.example.com/*"]
"""
    config, problems = load_repo_config(text)
    assert problems == []
    assert config is not None
    assert config.previews is not None
    staging, production = config.environments
    assert staging.policy is None
    assert production.policy == PodPolicy(strip=frozenset({"serviceAccount"}))
    assert config.previews.policy == PodPolicy(
        images=("docker.io/rayproject/ray:*",), runtime_env=("https://files.example.com/*",)
    )
    default, _ = load_repo_config(text.split("  policy:\n", maxsplit=1)[0])
    assert default is not None
    assert default.previews is not None
    assert default.previews.policy == PodPolicy()  # on by default for previews
    bad, problems = load_repo_config(
        text.replace("strip: [serviceAccount]", "strip: [hostpath], enabled: 'no'")
    )
    assert bad is None
    assert [(p.line, p.message.split(" (")[0]) for p in problems] == [
        (6, "environments[1].policy.enabled must be true or false"),
        (6, "strip: unknown category 'hostpath'"),
    ]


def test_the_serve_config_is_left_as_it_was() -> None:
    obj = manifest()
    obj["spec"]["serveConfigV2"] = SERVE_ENV
    result = enforce(obj, PodPolicy(runtime_env=("*",)))
    # Every URL matches "*"; a pip option never does (it can point pip anywhere).
    assert [v.message.split(": ")[1].split(" is")[0] for v in result.refused] == [
        "runtime_env.pip option '--index-url https://evil.example/simple'"
    ]
    assert yaml.safe_load(result.manifest["spec"]["serveConfigV2"]) == yaml.safe_load(SERVE_ENV)


@pytest.mark.parametrize(
    ("where", "value"),
    [(("volumes",), [{"name": "v", "hostPath": "/"}]), (("volumes",), ["x", None, 3]),
     (("volumes",), [{"name": "p", "projected": "x"}]), (("securityContext",), "x"),
     (("containers", 0, "securityContext"), {"capabilities": "ALL"}),
     (("containers", 0, "env"), ["x", {"valueFrom": "y"}, {"valueFrom": {"secretKeyRef": 1}}]),
     (("containers", 0, "envFrom"), [{"secretRef": "db"}]), (("containers",), "x"),
     (("containers", 0, "ports"), [{"hostPort": "80"}, "x"])],
)  # fmt: skip
def test_malformed_fields_never_crash_the_policy(where: tuple[str | int, ...], value: Any) -> None:
    """The validator reports malformed fields; the policy must still run (and refuse what it
    recognises) rather than crash on them."""
    obj = manifest()
    put(obj, (*WORKER, *where), value)
    enforce(obj, PodPolicy(strip=frozenset({"secrets", "hostPath", "hostPorts"})))
    enforce(obj, PodPolicy())
