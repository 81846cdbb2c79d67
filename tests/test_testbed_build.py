"""The test bed's build script: cached binaries are reused, never rebuilt."""

from __future__ import annotations

import subprocess
from pathlib import Path

from testbed.binaries import BUILD_SCRIPT, REPO_ROOT, Binaries


def test_second_build_rebuilds_nothing(binaries: Binaries) -> None:
    paths = [binaries.kube_apiserver, binaries.kubectl, binaries.etcd, binaries.helm]
    before = {p: p.stat().st_mtime_ns for p in paths}
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert "building" not in result.stderr, result.stderr
    assert {p: p.stat().st_mtime_ns for p in paths} == before


def test_binaries_are_keyed_by_version(binaries: Binaries) -> None:
    assert binaries.kube_apiserver.name == f"kube-apiserver-{binaries.kube_version}"
    assert binaries.kubectl.name == f"kubectl-{binaries.kube_version}"
    assert binaries.etcd.name == f"etcd-{binaries.etcd_version}"
    assert binaries.helm.name == f"helm-{binaries.helm_version}"
    version = subprocess.run(
        [str(binaries.helm), "version", "--short"], capture_output=True, text=True, check=True
    )
    assert version.stdout.startswith(binaries.helm_version), version.stdout
    assert (binaries.kuberay_crds / "ray.io_rayservices.yaml").is_file()
    assert binaries.kuberay_crds.parent.parent.parent.name.endswith(f"@{binaries.kuberay_version}")


def test_cache_folder_is_ignored_by_git(binaries: Binaries) -> None:
    # The default place, whether this run's TESTBED_DIR points there or elsewhere; --no-index:
    # the path need not exist. Also as a symlink (a shared cache), which `/.testbed/` missed.
    relative = Path(".testbed") / "bin" / binaries.kube_apiserver.name
    for path in (str(relative), ".testbed"):
        result = subprocess.run(
            ["git", "check-ignore", "-q", "--no-index", path], cwd=REPO_ROOT, check=False
        )
        assert result.returncode == 0, f"{path} is not git-ignored"
