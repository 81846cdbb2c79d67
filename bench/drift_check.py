"""One drift check over many RayServices: wall time, CPU time and API requests.

Starts the test bed (kube-apiserver + etcd + the KubeRay simulator), rolls out a generated
repository (SERVICES RayServices in NAMESPACES namespaces) once, then times drift checks:
first with nothing drifted (every live object provably untouched: no dry runs), then with
10% of the services edited by another field manager (each needs a server-side dry run).
Requests are counted by the API server itself (``apiserver_request_total``). The peer, on the
same objects in the same run: ``kubectl diff --server-side`` of the same manifests.

    .venv/bin/python -m bench.drift_check [SERVICES] [NAMESPACES]
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from kubernetes import client

from bench.noop_sync import build_repo, request_counts
from gitsync.config import load_agent_config
from gitsync.drift import DriftChecker
from gitsync.kube.namespaces import ensure_namespace
from gitsync.kube.rayservices import RayServicesClient
from gitsync.kube.state import StateStore
from gitsync.source.git import GitSource
from gitsync.sync import sync_once
from testbed.controlplane import ControlPlane
from testbed.simulator import Delays, Simulator


def timed_check(checker: DriftChecker, api: client.ApiClient) -> tuple[float, float, int, int]:
    before = request_counts(api)
    wall, cpu = time.monotonic(), time.process_time()
    reports = checker.check(heal=False)
    wall, cpu = time.monotonic() - wall, time.process_time() - cpu
    after = request_counts(api)
    requests = sum(max(0, after[k] - before[k]) for k in after)
    return wall, cpu, requests, sum(len(r.drifts) for r in reports)


def main(services: int = 1000, namespaces: int = 10) -> None:
    root = Path(tempfile.mkdtemp(prefix="gitsync-bench-"))
    try:
        bare = build_repo(root, services, namespaces)
        with (
            ControlPlane(workdir=root / "plane", verbose=False) as plane,
            plane.api_client() as api,
        ):
            for n in range(namespaces):
                ensure_namespace(api, f"bench-{n}")
            text = yaml.safe_dump(
                {
                    "repository": {"url": bare.as_uri()},
                    "cacheDir": str(root / "cache"),
                    "rollout": {"healthyReads": 1, "pollInterval": "500ms", "concurrency": 16},
                }
            )
            config, problems = load_agent_config(text)
            assert config is not None, problems
            state = StateStore(api, "gitsync-system")
            with plane.api_client() as sim_api, Simulator(sim_api, Delays(0.0, 0.0, 0.5)):
                assert sync_once(config, RayServicesClient(api), state).ok
                checker = DriftChecker(
                    config, RayServicesClient(api), state, GitSource(config.repository)
                )
                wall, cpu, requests, found = timed_check(checker, api)
                print(
                    f"drift check, {services} services in {namespaces} namespaces, none drifted: "
                    f"{wall:.2f} s wall, {cpu:.2f} s CPU, {requests} API requests (all clients), "
                    f"{found} drifted"
                )
                custom = client.CustomObjectsApi(api)
                edited = 0
                for n in range(namespaces):
                    for i in range(0, services // namespaces, 10):
                        name, namespace = f"svc{i}", f"bench-{n}"
                        live = custom.get_namespaced_custom_object(
                            "ray.io", "v1", namespace, "rayservices", name
                        )
                        serve = live["spec"]["serveConfigV2"] + "\n# edited by hand\n"
                        custom.patch_namespaced_custom_object(
                            "ray.io", "v1", namespace, "rayservices", name,
                            {"spec": {"serveConfigV2": serve}}, field_manager="kubectl-edit",
                        )  # fmt: skip
                        edited += 1
                wall, cpu, requests, found = timed_check(checker, api)
                print(
                    f"drift check with {edited} services edited by another manager: "
                    f"{wall:.2f} s wall, {cpu:.2f} s CPU, {requests} API requests, {found} drifted"
                )
            assert plane.binaries is not None
            # The peer reads the same manifests from a plain clone of the same commit.
            tree = root / "peer-clone"
            subprocess.run(["git", "clone", "-q", bare.as_uri(), str(tree)], check=True)
            manifests = [str(p) for p in sorted((tree / "environments").rglob("*.yaml"))]
            assert len(manifests) == services, f"the clone holds {len(manifests)} manifests"
            began = time.monotonic()
            peer = subprocess.run(
                [str(plane.binaries.kubectl), "--kubeconfig", str(plane.kubeconfig), "diff",
                 "--server-side", "--field-manager=gitsync", "--force-conflicts",
                 *[a for m in manifests for a in ("-f", m)]],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            peer_wall = time.monotonic() - began
            print(
                f"peer: kubectl diff --server-side over the same {len(manifests)} manifests: "
                f"{peer_wall:.2f} s wall (exit {peer.returncode}); ratio {peer_wall / wall:.1f}x"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
