"""The test bed's build script: cached binaries are reused, never rebuilt."""

from __future__ import annotations

import itertools
import socket
import subprocess
from pathlib import Path

import pytest

from testbed import rayhost
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


def test_ray_head_ports_stay_out_of_the_ranges_others_pick_from() -> None:
    """A head's ports (Serve's bound only at the first PUT) come from a range that neither
    the kernel's ephemeral ports nor Ray's worker ports overlap, each free when given."""
    low, high = (int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = [rayhost.ray_port() for _ in range(50)]
    assert len(set(ports)) == 50
    for port in ports:
        assert not low <= port <= high
        assert not 10002 <= port <= 19999  # Ray's default --min/--max-worker-port


def test_a_ray_head_port_in_use_is_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", rayhost.ray_port()))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setattr(rayhost, "_RAY_PORTS", range(port, port + 2))
        monkeypatch.setattr(rayhost, "_next_ray_port", itertools.count(0))
        assert rayhost.ray_port() == port + 1
