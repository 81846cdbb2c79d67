"""``gitsync status`` reads the cluster alone — no Git, no forge — and its exit code says
whether every environment is Healthy as applied: 0 settled, 1 not (yet), 2 on errors.

Before: it cloned the repository (Git credentials needed) and exited 0 whatever the health."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from gitsync.cli import main
from gitsync.kube.rayservices import RayServicesClient
from gitsync.kube.state import StateStore
from gitsync.model import Phase, RolloutState
from gitsync.sync import sync_once
from testbed.controlplane import ControlPlane
from testbed.simulator import FailureRule, Simulator

from .gitops import GitOpsRepo
from .kube import GROUP, PLURAL, VERSION, get


def status(
    kubeconfig: Path, namespace: str, capsys: pytest.CaptureFixture[str], *more: str
) -> tuple[int, str, str]:
    code = main(
        ["status", "--kubeconfig", str(kubeconfig), "--state-namespace", namespace,
         "-n", namespace, *more]
    )  # fmt: skip
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_status_needs_no_git_and_exits_by_health(
    api: client.ApiClient,
    namespace: str,
    sim: Simulator,
    control_plane: ControlPlane,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    repo = GitOpsRepo(tmp_path / "gitops", namespace)
    store = StateStore(api, namespace)
    assert sync_once(repo.agent_config(tmp_path / "cache"), RayServicesClient(api), store).ok
    shutil.rmtree(repo.bare)  # no Git at all from here on
    revision = repo.revisions[0]

    code, out, _ = status(control_plane.kubeconfig, namespace, capsys)
    assert code == 0, out
    assert out.startswith(f"staging: succeeded at {revision[:12]}")

    code, out, _ = status(control_plane.kubeconfig, namespace, capsys, "-o", "json")
    assert code == 0
    document = json.loads(out)
    assert document["settled"] is True
    [environment] = document["environments"]
    assert environment["rollout"]["phase"] == "succeeded"
    assert environment["rollout"]["revision"] == revision
    assert {
        s["name"]: (s["health"], s["revision"]) for s in environment["services"]
    } == dict.fromkeys(("embedder", "ranker", "summarizer"), ("Healthy", revision))
    code, text, _ = status(control_plane.kubeconfig, namespace, capsys, "-o", "yaml")
    assert yaml.safe_load(text) == document  # one document, two spellings

    # A rollout under way: not settled, exit 1.
    store.write(RolloutState("staging", revision, Phase.IN_PROGRESS, 0, "now", namespace=namespace))
    code, out, err = status(control_plane.kubeconfig, namespace, capsys)
    assert code == 1
    assert "staging: in-progress" in out
    assert "not settled: staging" in err

    # Succeeded, then a hand edit KubeRay cannot deploy: ranker is Degraded, exit 1.
    store.write(
        RolloutState("staging", revision, Phase.SUCCEEDED, None, "then", "now", namespace=namespace)
    )
    assert status(control_plane.kubeconfig, namespace, capsys)[0] == 0
    sim.add_rule(FailureRule(namespace=namespace, service="ranker", message="bad edit"))
    live = get(api, namespace, "ranker")
    edited = live["spec"]["serveConfigV2"].replace("num_replicas: 1", "num_replicas: 4")
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "ranker", {"spec": {"serveConfigV2": edited}}
    )

    def degraded(out: str) -> bool:
        return any(line.split()[:2] == ["ranker", "Degraded"] for line in out.splitlines())

    deadline, seen = time.monotonic() + 30, []
    while time.monotonic() < deadline:  # Progressing (a new generation), then Degraded
        code, out, err = status(control_plane.kubeconfig, namespace, capsys)
        seen.append(code)
        if degraded(out):
            break
        time.sleep(0.3)
    assert degraded(out), out
    assert seen[-1] == 1
    assert "not settled: staging" in err


def test_status_without_access_is_an_error_not_a_verdict(
    control_plane: ControlPlane, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kubeconfig = control_plane.token_kubeconfig("wrong", tmp_path / "kubeconfig")
    code, _, err = status(kubeconfig, "gitsync-system", capsys)
    assert code == 2
    assert "401 Unauthorized" in err
