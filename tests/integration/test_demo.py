"""``make demo`` tells its whole story — and every chapter checks its own outcome, so a
story that did not happen exits non-zero — then stops every process it started, by pid."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from testbed.binaries import REPO_ROOT, Binaries

CHAPTERS = (
    "1/6  Initial deployment",
    "2/6  A Serve-only change",
    "3/6  An image change",
    "4/6  A broken change",
    "5/6  A pull request",
    "6/6  Someone edits a RayService by hand",
    "Where to look",
)


def test_the_demo_story_completes_and_everything_stops(binaries: Binaries, tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    result = subprocess.run(
        [
            sys.executable, "-m", "testbed.demo", "--workdir", str(workdir),
            "--pace", "fast", "--exit-after-story",
        ],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    out = result.stdout
    for chapter in CHAPTERS:
        assert chapter in out, chapter
    # gitsync's own output is in the story: its log, its plan, its statuses, its CLI.
    assert "gitsync │" in out
    assert "ranker  serve-update" in out
    assert "embedder  cluster-swap" in out
    assert "gitsync/production failure  not rolled out: staging did not succeed" in out
    assert "gitsync/preview    success  preview Healthy: summarizer-pr-1" in out
    assert "changed by kubectl-edit" in out
    assert f"kube-apiserver {binaries.kube_version}" in out
    pids = {
        name: int(pid)
        for name, pid in (line.split() for line in (workdir / "pids").read_text().splitlines())
    }
    assert set(pids) == {"etcd", "kube-apiserver", "gitea", "gitsync"}
    for name, pid in pids.items():  # stopped by pid: nothing left running
        status = Path(f"/proc/{pid}/status")
        assert not status.exists() or "zombie" in status.read_text(), name
