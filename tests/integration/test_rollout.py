"""Rollouts against the real API server with the KubeRay simulator: waves gated on health,
halts, rollback, swaps, supersession, crash and resume, prune."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from gitsync.health import assess
from gitsync.kube.rayservices import RayServicesClient
from gitsync.kube.state import StateStore
from gitsync.model import Health, Outcome, Phase, ServiceKey
from gitsync.progress import Lines
from gitsync.sync import sync_once
from testbed.controlplane import ControlPlane
from testbed.simulator import FailureRule, Simulator

from .gitops import GitOpsRepo
from .kube import GROUP, PLURAL, VERSION, get
from .test_simulator import recorded_statuses

REVISION = "gitsync.ray.io/revision"


@pytest.fixture
def repo(tmp_path: Path, namespace: str) -> GitOpsRepo:
    return GitOpsRepo(tmp_path / "gitops", namespace)


def run(
    api: client.ApiClient,
    repo: GitOpsRepo,
    tmp_path: Path,
    lines: list[str] | None = None,
    **rollout: Any,
) -> Any:
    config = repo.agent_config(tmp_path / "cache", **rollout)
    log = lines if lines is not None else []
    return sync_once(
        config,
        RayServicesClient(api),
        StateStore(api, repo.namespace),
        observer=Lines(log.append),
        supersede_every=rollout.pop("supersede_every", 0.2)
        if "supersede_every" in rollout
        else 0.2,
    )


def revision_of(api: client.ApiClient, namespace: str, name: str) -> str:
    return str(get(api, namespace, name)["metadata"]["annotations"].get(REVISION))


def test_wave_one_is_applied_only_after_wave_zero_is_healthy(
    api: client.ApiClient, repo: GitOpsRepo, namespace: str, sim: Simulator, tmp_path: Path
) -> None:
    with recorded_statuses(api, namespace) as history:
        result = run(api, repo, tmp_path)
    assert result.ok, result
    names = [o["metadata"]["name"] for o in history]
    embedder_healthy = next(
        i
        for i, o in enumerate(history)
        if o["metadata"]["name"] == "embedder" and assess(o, ("embed",)).health is Health.HEALTHY
    )
    first_wave_one = min(names.index("ranker"), names.index("summarizer"))
    assert embedder_healthy < first_wave_one, "wave 1 was written before wave 0 was Healthy"
    for name in ("embedder", "ranker", "summarizer"):
        assert revision_of(api, namespace, name) == repo.revisions[0]
    state = StateStore(api, namespace).read("staging")
    assert state is not None
    assert (state.phase, state.revision, state.last_healthy_revision) == (
        Phase.SUCCEEDED,
        repo.revisions[0],
        repo.revisions[0],
    )


def test_deploy_failed_in_wave_zero_halts_before_wave_one(
    api: client.ApiClient, repo: GitOpsRepo, namespace: str, sim: Simulator, tmp_path: Path
) -> None:
    assert run(api, repo, tmp_path).ok
    sim.add_rule(
        FailureRule(
            namespace=namespace,
            import_path="embedder.v2:app",
            message="ModuleNotFoundError: No module named 'embedder.v2'",
        )
    )

    def change(root: Path) -> None:
        repo.edit("embedder.yaml", "embedder.serve:app", "embedder.v2:app")
        repo.edit("ranker.yaml", "num_replicas: 1", "num_replicas: 2")

    bad = repo.commit(change, "break the embedder, scale the ranker")
    result = run(api, repo, tmp_path)
    [staging] = result.results
    assert staging.outcome is Outcome.FAILED
    assert staging.failed == ServiceKey(namespace, "embedder")
    assert (
        "app embed is DEPLOY_FAILED: ModuleNotFoundError: No module named 'embedder.v2'"
        in staging.message
    )
    assert revision_of(api, namespace, "ranker") == repo.revisions[0]  # wave 1 untouched
    assert revision_of(api, namespace, "embedder") == bad
    state = StateStore(api, namespace).read("staging")
    assert state is not None
    assert (state.phase, state.wave, state.last_healthy_revision) == (
        Phase.FAILED,
        0,
        repo.revisions[0],
    )


def test_rollback_auto_restores_the_last_healthy_spec(
    api: client.ApiClient, repo: GitOpsRepo, namespace: str, sim: Simulator, tmp_path: Path
) -> None:
    assert run(api, repo, tmp_path).ok
    good_serve = get(api, namespace, "embedder")["spec"]["serveConfigV2"]
    sim.add_rule(
        FailureRule(namespace=namespace, import_path="embedder.v2:app", message="import failed")
    )
    repo.commit(
        lambda root: repo.edit("embedder.yaml", "embedder.serve:app", "embedder.v2:app"), "break"
    )
    lines: list[str] = []
    [staging] = run(api, repo, tmp_path, lines, rollback="auto").results
    assert staging.outcome is Outcome.ROLLED_BACK, lines
    assert f"rolled {namespace}/embedder back to {repo.revisions[0][:12]}" in staging.message
    live = get(api, namespace, "embedder")
    assert live["spec"]["serveConfigV2"] == good_serve
    assert live["metadata"]["annotations"][REVISION] == repo.revisions[0]
    state = StateStore(api, namespace).read("staging")
    assert state is not None
    assert state.phase is Phase.ROLLED_BACK


def test_cluster_swap_is_progressing_until_promotion(
    api: client.ApiClient, repo: GitOpsRepo, namespace: str, sim: Simulator, tmp_path: Path
) -> None:
    assert run(api, repo, tmp_path).ok
    old = get(api, namespace, "embedder")["status"]["activeServiceStatus"]["rayClusterName"]
    repo.commit(
        lambda root: repo.edit(
            "embedder.yaml",
            "image: rayproject/ray:2.49.0-py311",
            "image: rayproject/ray:2.50.0-py311",
        ),
        "new image",
    )
    lines: list[str] = []
    assert run(api, repo, tmp_path, lines).ok
    mine = [
        line
        for line in lines
        if f"{namespace}/embedder " in line and ("Progressing" in line or "Healthy" in line)
    ]
    assert any("cluster swap in progress" in line for line in mine), mine
    first_healthy = next(i for i, line in enumerate(mine) if " Healthy:" in line)
    assert all(" Progressing:" in line for line in mine[:first_healthy])
    new = get(api, namespace, "embedder")["status"]["activeServiceStatus"]["rayClusterName"]
    assert new != old
    assert new in mine[first_healthy]  # Healthy names the promoted cluster


def test_a_newer_commit_supersedes_a_long_health_wait(
    api: client.ApiClient, repo: GitOpsRepo, namespace: str, sim: Simulator, tmp_path: Path
) -> None:
    assert run(api, repo, tmp_path).ok
    # Deploys of this import path never finish: the rollout waits until its timeout.
    sim.add_rule(
        FailureRule(
            status="DEPLOYING", message="", namespace=namespace, import_path="embedder.slow:app"
        )
    )
    stuck = repo.commit(
        lambda root: repo.edit("embedder.yaml", "embedder.serve:app", "embedder.slow:app"), "slow"
    )
    lines: list[str] = []
    outcome: list[Any] = []
    worker = threading.Thread(target=lambda: outcome.append(run(api, repo, tmp_path, lines)))
    worker.start()
    deadline = time.monotonic() + 20
    while not any("embedder Progressing" in line for line in lines) and time.monotonic() < deadline:
        time.sleep(0.1)
    fix = repo.commit(
        lambda root: repo.edit("embedder.yaml", "embedder.slow:app", "embedder.fixed:app"), "fix"
    )
    worker.join(60)
    [result] = outcome
    assert result.revision == fix
    assert result.ok
    assert any(f"{stuck[:12]} superseded" in line for line in lines), lines
    assert revision_of(api, namespace, "embedder") == fix


def test_prune_deletes_exactly_the_removed_owned_services(
    api: client.ApiClient, tmp_path: Path, namespace: str, sim: Simulator
) -> None:
    repo = GitOpsRepo(tmp_path / "gitops", namespace, prune=True)
    assert run(api, repo, tmp_path).ok
    lookalike = yaml.safe_load(repo.path("summarizer.yaml").read_text())
    lookalike["metadata"].update(
        name="summarizer-copy",
        namespace=namespace,
        labels={"app.kubernetes.io/managed-by": "gitsync", "gitsync.ray.io/environment": "other"},
    )
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, lookalike
    )
    repo.commit(lambda root: repo.path("summarizer.yaml").unlink(), "retire the summarizer")
    [staging] = run(api, repo, tmp_path).results
    assert staging.outcome is Outcome.SUCCEEDED
    assert staging.pruned == (ServiceKey(namespace, "summarizer"),)
    names = {
        o["metadata"]["name"]
        for o in client.CustomObjectsApi(api).list_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL
        )["items"]
    }
    assert names == {"embedder", "ranker", "summarizer-copy"}


def test_sigkill_mid_wave_then_restart_completes(
    api: client.ApiClient,
    repo: GitOpsRepo,
    namespace: str,
    sim: Simulator,
    tmp_path: Path,
    control_plane: ControlPlane,
) -> None:
    config = repo.config_file(tmp_path / "cache", tmp_path / "agent.yaml")
    command = [
        sys.executable,
        "-m",
        "gitsync.cli",
        "sync",
        "--once",
        "--config",
        str(config),
        "--kubeconfig",
        str(control_plane.kubeconfig),
    ]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    store = StateStore(api, namespace)
    # A process's start (imports, clone, plan) is seconds on a busy machine: a generous bound.
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        state = store.read("staging")
        if state is not None and state.wave == 0 and state.phase is Phase.IN_PROGRESS:
            break
        assert first.poll() is None, "the sync finished before it could be killed mid-wave"
        time.sleep(0.02)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(10)
    assert first.stderr is not None
    first.stderr.close()
    killed = store.read("staging")
    assert killed is not None
    assert killed.phase is Phase.IN_PROGRESS  # the crash left the rollout in flight
    second = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert second.returncode == 0, second.stderr
    assert "resuming the rollout" in second.stderr
    final = store.read("staging")
    assert final is not None
    assert (final.phase, final.revision) == (Phase.SUCCEEDED, repo.revisions[0])
    for name in ("embedder", "ranker", "summarizer"):
        obj = get(api, namespace, name)
        assert obj["metadata"]["annotations"][REVISION] == repo.revisions[0]
        assert assess(obj).health is Health.HEALTHY
