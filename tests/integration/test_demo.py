"""``make demo`` tells its whole story — and every chapter checks its own outcome, so a
story that did not happen exits non-zero — then stops every process it started, by pid; on the
KubeRay simulator, and on the real operator with real Ray heads (``make demo RAY=real``)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from testbed.binaries import REPO_ROOT, Binaries
from testbed.rayhost import HEAD_TAG

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


def _carrying(tags: set[str]) -> list[int]:
    """Pids of the processes whose environment carries one of these Ray-head tags."""
    needles = {f"{HEAD_TAG}={tag}".encode() for tag in tags}
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            environ = set((entry / "environ").read_bytes().split(b"\0"))
        except OSError:  # not a process, or gone
            continue
        if environ & needles:
            pids.append(int(entry.name))
    return pids


@pytest.mark.ray  # real Ray heads: `make test` runs it in its real-Ray lane (testbed/ci.py)
@pytest.mark.timeout(3600)  # Ray's pace: seven heads to start on a shared 2-core machine
def test_the_demo_story_on_real_ray_completes_and_sigterm_stops_everything(
    binaries: Binaries, tmp_path: Path
) -> None:
    """``make demo RAY=real``: the same story on the real operator and real Ray heads, with
    Serve's own answers; it keeps running until SIGTERM, which stops every process it started,
    each Ray head's process group and workers included. When Ray cannot start, the story stops
    with the head's log and exits 1 (the test fails)."""
    workdir, errors = tmp_path / "demo", tmp_path / "stderr"
    with errors.open("w") as stderr_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "testbed.demo", "--workdir", str(workdir), "--ray", "real"],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=stderr_file, text=True,
        )  # fmt: skip
    lines: list[str] = []
    running = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if "Everything keeps running" in line:
                running.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        while not running.wait(1) and process.poll() is None:
            pass
        story = "".join(lines)
        assert running.is_set(), story[-8000:] + errors.read_text()[-3000:]
        process.send_signal(signal.SIGTERM)
        code = process.wait(180)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
    reader.join(10)
    assert process.stdout is not None
    process.stdout.close()
    stderr = errors.read_text()
    assert code == 0, stderr[-3000:]
    assert "gitsync demo: stopped everything" in stderr
    out = "".join(lines)
    for chapter in CHAPTERS:
        assert chapter in out, chapter
    assert "the KubeRay operator v1.5.0; a real Ray 2.60.0 head" in out
    assert "embedder  cluster-swap" in out
    # Serve's own answers: the new user_config on the same cluster, and the swap's traffic.
    assert '"model_version": "2026-11-20"' in out
    for namespace in ("ray-staging", "ray-production"):
        assert re.search(rf"{namespace}/embedder: \d+ requests through the swap, 0 failed", out)
    # The broken import path fails in Ray itself (the simulator has a rule for it).
    assert "ModuleNotFoundError" in out
    assert "gitsync/production failure  not rolled out: staging did not succeed" in out
    assert "gitsync/preview    success  preview Healthy: embedder-pr-1" in out
    assert "changed by kubectl-edit" in out
    pids = {
        name: int(pid)
        for name, pid in (line.split() for line in (workdir / "pids").read_text().splitlines())
    }
    assert set(pids) == {"etcd", "kube-apiserver", "gitea", "gitsync", "kuberay-operator"}
    heads = [line.split() for line in (workdir / "ray-heads.txt").read_text().splitlines()]
    assert len(heads) >= 5, heads  # 2 services x 2 environments, the swaps' and the preview's
    for name, pid in [*pids.items(), *((pod, int(pid)) for pod, pid, _ in heads)]:
        status = Path(f"/proc/{pid}/status")
        assert not status.exists() or "zombie" in status.read_text(), name
    assert _carrying({tag for _, _, tag in heads}) == []  # Ray's workers too
