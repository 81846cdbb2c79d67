"""``make demo`` starts and stops cleanly (the part of it that exists so far)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from testbed.binaries import REPO_ROOT, Binaries


def test_demo_starts_prints_how_to_use_it_and_stops(binaries: Binaries, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "testbed.demo",
            "--workdir",
            str(tmp_path / "demo"),
            "--exit-after-start",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "a local Kubernetes control plane is running" in result.stdout
    assert f"kube-apiserver {binaries.kube_version}" in result.stdout
    kubeconfig = tmp_path / "demo" / "kubeconfig"
    assert str(kubeconfig) in result.stdout
    pids = [int(p.read_text()) for p in (tmp_path / "demo").glob("*.pid")]
    assert len(pids) == 2
    for pid in pids:  # stopped by pid: nothing left running
        assert (
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        )
