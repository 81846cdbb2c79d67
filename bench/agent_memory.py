"""The agent's memory: RSS of ``gitsync run`` idle and while managing 1,000 RayServices.

Starts the test bed (kube-apiserver + etcd + the KubeRay simulator), then two agents as real
processes (``gitsync run``, leader election on, polling every 2 s), each against its own
generated repository: one with no services (idle), one with SERVICES RayServices in
NAMESPACES namespaces. Once the second has rolled everything out and is polling with nothing
to do, both agents' RSS is read from /proc (current and peak). The peer, in the same run:
``kubectl get rayservices -A -o json`` over the same objects, its peak RSS.

    .venv/bin/python -m bench.agent_memory [SERVICES] [NAMESPACES]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from kubernetes import client

from bench.noop_sync import build_repo
from gitsync.kube.namespaces import ensure_namespace
from testbed.controlplane import ControlPlane, free_port
from testbed.simulator import Delays, Simulator


def rss_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def start_agent(root: Path, name: str, repo: Path, kubeconfig: Path) -> subprocess.Popen[bytes]:
    config = root / f"{name}.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "repository": {"url": repo.as_uri()},
                "cacheDir": str(root / f"cache-{name}"),
                "intervals": {"poll": "2s"},
                "listen": f"127.0.0.1:{free_port()}",
                "leaderElection": {"namespace": "gitsync-system", "leaseName": name},
                "rollout": {"healthyReads": 1, "pollInterval": "500ms", "concurrency": 16},
            }
        )
    )
    with (root / f"{name}.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "gitsync.cli", "run", "--config", str(config),
             "--kubeconfig", str(kubeconfig)],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "POD_NAME": name},
        )  # fmt: skip


def managed(api: client.ApiClient) -> int:
    listed = client.CustomObjectsApi(api).list_cluster_custom_object(
        "ray.io", "v1", "rayservices", label_selector="app.kubernetes.io/managed-by=gitsync"
    )
    return sum(
        1
        for o in listed["items"]
        if any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in (o.get("status") or {}).get("conditions") or ()
        )
    )


def main(services: int = 1000, namespaces: int = 10) -> None:
    root = Path(tempfile.mkdtemp(prefix="gitsync-bench-"))
    agents: list[subprocess.Popen[bytes]] = []
    try:
        full = build_repo(root / "full", services, namespaces)
        empty = build_repo(root / "empty", 0, 1)
        with (
            ControlPlane(workdir=root / "plane", verbose=False) as plane,
            plane.api_client() as api,
            plane.api_client() as sim_api,
            Simulator(sim_api, Delays(0.0, 0.0, 0.5)),
        ):
            for n in range(namespaces):
                ensure_namespace(api, f"bench-{n}")
            ensure_namespace(api, "gitsync-system")
            idle = start_agent(root, "idle", empty, plane.kubeconfig)
            busy = start_agent(root, "busy", full, plane.kubeconfig)
            agents += [idle, busy]
            began = time.monotonic()
            while managed(api) < services:
                assert busy.poll() is None, (root / "busy.log").read_text()[-3000:]
                assert time.monotonic() - began < 900, "rollout did not finish"
                time.sleep(2)
            while "succeeded" not in (root / "busy.log").read_text():
                time.sleep(1)
            print(f"rolled out {services} services in {time.monotonic() - began:.0f} s")
            time.sleep(20)  # several polls with nothing new
            idle_rss, idle_peak = rss_mib(idle.pid)
            busy_rss, busy_peak = rss_mib(busy.pid)
            assert plane.binaries is not None
            peer = subprocess.Popen(
                [str(plane.binaries.kubectl), "--kubeconfig", str(plane.kubeconfig),
                 "get", "rayservices", "-A", "-o", "json"],
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
            _, status, usage = os.wait4(peer.pid, 0)
            peer.returncode = os.waitstatus_to_exitcode(status)
            assert peer.returncode == 0
            kubectl_peak = usage.ru_maxrss / 1024  # KiB on Linux
        print(f"agent idle (no services): RSS {idle_rss:.1f} MiB, peak {idle_peak:.1f} MiB")
        print(f"agent, {services} services: RSS {busy_rss:.1f} MiB, peak {busy_peak:.1f} MiB")
        print(f"peer: kubectl get rayservices -A -o json, peak {kubectl_peak:.1f} MiB")
        print(f"ratio agent peak / kubectl peak: {busy_peak / kubectl_peak:.2f}")
    finally:
        for agent in agents:
            agent.terminate()
            agent.wait(30)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
