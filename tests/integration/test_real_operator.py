"""gitsync's rollouts against the real KubeRay operator (built from its v1.5.0 module), with
the test bed's stand-ins for kubelet, Endpoints and the Ray dashboard (testbed.operator)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client

from gitsync.kube.rayservices import RayServicesClient
from gitsync.kube.state import StateStore
from gitsync.model import Outcome
from gitsync.progress import Lines
from gitsync.sync import PassResult, sync_once
from testbed.binaries import Binaries
from testbed.controlplane import ControlPlane
from testbed.operator import FakeEndpoints, FakeKubelet, Operator, ServeProxy, ServeState
from testbed.simulator import FailureRule, Simulator

from .gitops import GitOpsRepo
from .kube import GROUP, VERSION, get


@dataclass
class RealKubeRay:
    namespaces: list[str]
    state: ServeState
    operator: Operator


@pytest.fixture(scope="module")
def kuberay(
    api: client.ApiClient,
    control_plane: ControlPlane,
    binaries: Binaries,
    simulator: Simulator,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RealKubeRay]:
    namespaces = [f"kr-{uuid.uuid4().hex[:8]}-{i}" for i in range(4)]
    core = client.CoreV1Api(api)
    for name in namespaces:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    simulator.exclude_namespaces |= set(namespaces)  # the operator writes status here
    state = ServeState(deploy_seconds=0.5)
    proxy = ServeProxy(state).start()
    kubelet, endpoints = (
        FakeKubelet(api, namespaces).start(),
        FakeEndpoints(api, namespaces).start(),
    )
    operator = Operator(
        binaries.kuberay_operator,
        control_plane.kubeconfig,
        namespaces,
        proxy.port,
        tmp_path_factory.mktemp("kuberay-operator"),
    ).start()
    try:
        yield RealKubeRay(list(namespaces), state, operator)
    finally:
        operator.stop()
        kubelet.stop()
        endpoints.stop()
        proxy.stop()
        assert not kubelet.errors, kubelet.errors
        assert not endpoints.errors, endpoints.errors


@pytest.fixture
def repo(kuberay: RealKubeRay, tmp_path: Path) -> GitOpsRepo:
    return GitOpsRepo(tmp_path / "gitops", kuberay.namespaces.pop())


def sync(api: client.ApiClient, repo: GitOpsRepo, tmp_path: Path, lines: list[str]) -> PassResult:
    config = repo.agent_config(
        tmp_path / "cache", health_timeout=90.0, poll_interval=0.3, healthy_seconds=5.0
    )
    return sync_once(
        config,
        RayServicesClient(api),
        StateStore(api, repo.namespace),
        observer=Lines(lines.append),
    )


def rayclusters(api: client.ApiClient, namespace: str) -> set[str]:
    items = client.CustomObjectsApi(api).list_namespaced_custom_object(
        GROUP, VERSION, namespace, "rayclusters"
    )["items"]
    return {o["metadata"]["name"] for o in items}


def test_initial_rollout_in_waves(
    api: client.ApiClient, kuberay: RealKubeRay, repo: GitOpsRepo, tmp_path: Path
) -> None:
    lines: list[str] = []
    result = sync(api, repo, tmp_path, lines)
    assert result.ok, "\n".join(lines) + kuberay.operator.log()[-3000:]
    clusters = rayclusters(api, repo.namespace)
    assert {c.rsplit("-", 1)[0] for c in clusters} == {"embedder", "ranker", "summarizer"}
    submitted = {s.cluster for s in kuberay.state.submissions if s.namespace == repo.namespace}
    assert submitted == clusters  # one Serve config PUT to each cluster's dashboard


def test_serve_update_is_a_put_to_the_active_cluster(
    api: client.ApiClient, kuberay: RealKubeRay, repo: GitOpsRepo, tmp_path: Path
) -> None:
    lines: list[str] = []
    assert sync(api, repo, tmp_path, lines).ok
    before = rayclusters(api, repo.namespace)
    active = get(api, repo.namespace, "ranker")["status"]["activeServiceStatus"]["rayClusterName"]
    puts = len([s for s in kuberay.state.submissions if s.cluster == active])
    repo.commit(
        lambda root: repo.edit("ranker.yaml", "num_replicas: 1", "num_replicas: 2"),
        "scale the ranker",
    )
    result = sync(api, repo, tmp_path, lines)
    assert result.ok, "\n".join(lines)
    assert rayclusters(api, repo.namespace) == before  # no new cluster
    latest = [s for s in kuberay.state.submissions if s.cluster == active]
    assert len(latest) == puts + 1
    deployments = latest[-1].config["applications"][0]["deployments"]
    assert deployments[0]["num_replicas"] == 2


def test_image_change_swaps_and_is_healthy_only_after_promotion(
    api: client.ApiClient, kuberay: RealKubeRay, repo: GitOpsRepo, tmp_path: Path
) -> None:
    lines: list[str] = []
    assert sync(api, repo, tmp_path, lines).ok
    old = get(api, repo.namespace, "embedder")["status"]["activeServiceStatus"]["rayClusterName"]
    # A short deletion delay (default 60 s) so the old cluster's removal can be seen.
    repo.commit(
        lambda root: repo.edit(
            "embedder.yaml",
            "spec:\n  upgradeStrategy:",
            "spec:\n  rayClusterDeletionDelaySeconds: 2\n  upgradeStrategy:",
        ),
        "short delay",
    )
    assert sync(api, repo, tmp_path, lines).ok
    repo.commit(
        lambda root: repo.edit(
            "embedder.yaml",
            "image: rayproject/ray:2.49.0-py311",
            "image: rayproject/ray:2.50.0-py311",
        ),
        "new image",
    )
    lines.clear()
    result = sync(api, repo, tmp_path, lines)
    assert result.ok, "\n".join(lines)
    new = get(api, repo.namespace, "embedder")["status"]["activeServiceStatus"]["rayClusterName"]
    assert new != old
    mine = [line for line in lines if f"{repo.namespace}/embedder " in line]
    assert any("cluster swap in progress" in line for line in mine), mine
    healthy = next(i for i, line in enumerate(mine) if " Healthy:" in line)
    assert all(" Healthy:" not in line for line in mine[:healthy])
    assert new in mine[healthy]
    deadline = time.monotonic() + 30  # removed once rayClusterDeletionDelaySeconds passed
    while old in rayclusters(api, repo.namespace) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert rayclusters(api, repo.namespace) == {
        c for c in rayclusters(api, repo.namespace) if c != old
    }
    assert old not in rayclusters(api, repo.namespace)


def test_deploy_failed_halts_before_the_next_wave(
    api: client.ApiClient, kuberay: RealKubeRay, repo: GitOpsRepo, tmp_path: Path
) -> None:
    lines: list[str] = []
    assert sync(api, repo, tmp_path, lines).ok
    kuberay.state.rules.append(
        FailureRule(
            namespace=repo.namespace,
            import_path="embedder.v2:app",
            message="ModuleNotFoundError: No module named 'embedder.v2'",
        )
    )

    def change(root: Path) -> None:
        repo.edit("embedder.yaml", "embedder.serve:app", "embedder.v2:app")
        repo.edit("ranker.yaml", "num_replicas: 1", "num_replicas: 3")

    repo.commit(change, "break the embedder")
    [staging] = sync(api, repo, tmp_path, lines).results
    assert staging.outcome is Outcome.FAILED, "\n".join(lines)
    assert (
        "app embed is DEPLOY_FAILED: ModuleNotFoundError: No module named 'embedder.v2'"
        in staging.message
    )
    ranker = get(api, repo.namespace, "ranker")
    assert ranker["metadata"]["annotations"]["gitsync.ray.io/revision"] == repo.revisions[0]
