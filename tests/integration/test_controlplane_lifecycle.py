"""The control plane's processes never outlive the process that started them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from testbed.binaries import REPO_ROOT, Binaries
from testbed.controlplane import ControlPlane

SCRIPT = """
import sys, time
from pathlib import Path
from testbed.controlplane import ControlPlane
plane = ControlPlane(workdir=Path(sys.argv[1]), verbose=False, crds=False).start()
print(" ".join(str(pid) for pid in plane.pids.values()), flush=True)
time.sleep(300)
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "zombie" not in state


def test_sigkilled_owner_takes_etcd_and_apiserver_with_it(
    binaries: Binaries, tmp_path: Path
) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "plane")],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert owner.stdout is not None
    pids = [int(p) for p in owner.stdout.readline().split()]
    assert len(pids) == 2
    assert all(alive(pid) for pid in pids)
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait()
    owner.stdout.close()
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in pids if alive(pid)]


def test_stop_ends_every_process(binaries: Binaries, tmp_path: Path) -> None:
    plane = ControlPlane(binaries=binaries, workdir=tmp_path / "plane", verbose=False, crds=False)
    plane.start()
    pids = list(plane.pids.values())
    plane.stop()
    assert not [pid for pid in pids if alive(pid)]
    assert plane.pids == {}
