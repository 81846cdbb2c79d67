"""Every command against an API server that refuses it, for real: a service account with no
RBAC (403), a wrong token (401), and a control plane without KubeRay's CRDs (404). Each prints
one line naming what failed and what to do, and exits 2 — never 1 ("changes"), never a
traceback.

Before: a 403 or 404 escaped ``plan`` and ``diff`` as a raw ApiException traceback, exit 1.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from gitsync.cli import main
from gitsync.kube.state import StateStore
from gitsync.model import Phase, RolloutState
from testbed.binaries import Binaries
from testbed.controlplane import ControlPlane

from .gitops import EXAMPLES, GitOpsRepo

FORBIDDEN = "not allowed (403 Forbidden)"
UNAUTHORIZED = "refused gitsync's credentials (401 Unauthorized)"
NO_CRD = "the RayService CRD (ray.io/v1) is not installed: install the KubeRay operator"


@pytest.fixture(scope="module")
def bare_plane(
    binaries: Binaries, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ControlPlane]:
    """A control plane nobody installed KubeRay's CRDs on."""
    workdir = tmp_path_factory.mktemp("bare-plane")
    plane = ControlPlane(binaries=binaries, workdir=workdir, verbose=False, crds=False)
    with plane:
        yield plane


def checkout(tmp_path: Path, namespace: str) -> Path:
    root = tmp_path / "checkout"
    shutil.copytree(EXAMPLES, root)
    config = yaml.safe_load((root / "gitsync.yaml").read_text())
    config["environments"][0]["namespace"] = namespace
    (root / "gitsync.yaml").write_text(yaml.safe_dump(config))
    return root


def commands(tmp_path: Path, namespace: str, kubeconfig: Path) -> dict[str, list[str]]:
    """Each command that talks to the API server, with a config and a checkout that are fine
    (the repository's one commit is in ``tmp_path / "revision"``)."""
    repo = GitOpsRepo(
        tmp_path / "gitops", namespace, previews={"namespace": f"{namespace}-previews"}
    )
    config = repo.config_file(tmp_path / "cache", tmp_path / "agent.yaml")
    (tmp_path / "revision").write_text(repo.revisions[0])
    tree = checkout(tmp_path, namespace)
    kube = ["--kubeconfig", str(kubeconfig)]
    agent = ["--config", str(config), *kube]
    return {
        "plan": ["plan", str(tree), "--env", "staging", *kube],
        "plan -o json": ["plan", str(tree), "--env", "staging", "-o", "json", *kube],
        "diff": ["diff", str(tree), "--env", "staging", *kube],
        "sync": ["sync", "--once", "--no-status", *agent],
        "status": ["status", *agent],
        "drift": ["drift", *agent],
        "previews": ["previews", *agent],
        "run": ["run", *agent, "--listen", "127.0.0.1:0"],
    }


def refused_everywhere(
    runs: dict[str, list[str]], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    told, errs = {}, {}
    for name, argv in runs.items():
        if name == "run":  # the agent, as a real process: it must not start
            agent = subprocess.run(
                [sys.executable, "-m", "gitsync", *argv],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            code, err = agent.returncode, agent.stderr
        else:
            code = main(argv)
            err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if "gitsync" in line]
        told[name] = (code, expected in err, "Traceback" in err, lines[-1:])
        errs[name] = err
    wrong = {name: seen for name, seen in told.items() if seen[0] < 2 or not seen[1] or seen[2]}
    assert not wrong, (wrong, {name: errs[name][-2000:] for name in wrong})


def test_a_service_account_without_rbac_is_told_403_by_every_command(
    control_plane: ControlPlane,
    namespace: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    kubeconfig = control_plane.service_account_kubeconfig(
        namespace, "nobody", tmp_path / "nobody.kubeconfig"
    )
    refused_everywhere(commands(tmp_path, namespace, kubeconfig), FORBIDDEN, capsys)
    # The API server's own words name who, what and where.
    main(commands(tmp_path / "again", namespace, kubeconfig)["plan"])
    err = capsys.readouterr().err
    assert f'"system:serviceaccount:{namespace}:nobody" cannot list resource' in err
    assert err.count("\n") == 1, err


def test_a_wrong_token_is_told_401_by_every_command(
    control_plane: ControlPlane,
    namespace: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    kubeconfig = control_plane.token_kubeconfig("not-a-token", tmp_path / "bad.kubeconfig")
    refused_everywhere(commands(tmp_path, namespace, kubeconfig), UNAUTHORIZED, capsys)


def test_a_cluster_without_the_crd_is_told_to_install_kuberay_by_every_command(
    bare_plane: ControlPlane,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A rollout on record, so drift has something to compare (with none it rightly says
    # there is nothing to check, CRD or not).
    runs = commands(tmp_path, "staging", bare_plane.kubeconfig)
    revision = (tmp_path / "revision").read_text()
    with bare_plane.api_client() as admin:
        client.CoreV1Api(admin).create_namespace({"metadata": {"name": "staging"}})
        StateStore(admin, "staging").write(
            RolloutState("staging", revision, Phase.SUCCEEDED, None, "then", "now")
        )
    refused_everywhere(runs, NO_CRD, capsys)
