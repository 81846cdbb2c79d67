"""A no-op ``gitsync sync --once`` over many RayServices in several namespaces.

Starts the test bed (kube-apiserver + etcd + the KubeRay simulator), serves a generated
GitOps repository over file:// (N environments, one namespace each), rolls everything out
once, then times a second pass that has nothing to do: wall time, CPU time and the API
requests it made, counted by the API server itself (``apiserver_request_total`` from
``/metrics``, before and after, this agent's user agent only).

    .venv/bin/python -m bench.noop_sync [SERVICES] [NAMESPACES]
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml
from kubernetes import client

from gitsync.config import load_agent_config
from gitsync.kube.namespaces import ensure_namespace
from gitsync.kube.rayservices import RayServicesClient
from gitsync.kube.state import StateStore
from gitsync.sync import sync_once
from testbed.controlplane import ControlPlane
from testbed.simulator import Delays, Simulator

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "plain-layout"
_SAMPLE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>[0-9.e+]+)$")


def request_counts(api: client.ApiClient) -> Counter[str]:
    """Requests per verb and resource, as the API server counted them."""
    # The client's own connection pool carries the admin client certificate.
    response = api.rest_client.pool_manager.request("GET", f"{api.configuration.host}/metrics")
    counts: Counter[str] = Counter()
    for line in response.data.decode().splitlines():
        match = _SAMPLE.match(line)
        if match:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
            counts[f"{labels.get('verb')} {labels.get('resource')}"] += int(float(match["value"]))
    return counts


def build_repo(root: Path, services: int, namespaces: int) -> Path:
    work = root / "work"
    (work / "environments").mkdir(parents=True)
    template = (EXAMPLES / "environments/production/ranker.yaml").read_text()
    per = services // namespaces
    environments = []
    for n in range(namespaces):
        env = work / "environments" / f"env{n}"
        env.mkdir()
        environments.append(
            {"name": f"env{n}", "path": f"environments/env{n}", "namespace": f"bench-{n}"}
        )
        for i in range(per):
            (env / f"svc{i}.yaml").write_text(template.replace("name: ranker", f"name: svc{i}"))
    (work / "gitsync.yaml").write_text(yaml.safe_dump({"environments": environments}))
    bare = root / "repo.git"
    git = ["git", "-c", "user.name=b", "-c", "user.email=b@b", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=work, check=True)
    subprocess.run([*git, "add", "-A"], cwd=work, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "bench"], cwd=work, check=True)
    subprocess.run([*git, "push", "-q", bare.as_uri(), "main"], cwd=work, check=True)
    return bare


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
            ensure_namespace(api, "gitsync-system")
            text = yaml.safe_dump(
                {
                    "repository": {"url": bare.as_uri()},
                    "cacheDir": str(root / "cache"),
                    "rollout": {"healthyReads": 1, "pollInterval": "500ms", "concurrency": 16},
                }
            )
            config, problems = load_agent_config(text)
            assert config is not None, problems
            with plane.api_client() as sim_api, Simulator(sim_api, Delays(0.0, 0.0, 0.5)):
                began = time.monotonic()
                first = sync_once(config, RayServicesClient(api), StateStore(api, "gitsync-system"))
                assert first.ok, first
                print(f"initial rollout of {services} services: {time.monotonic() - began:.1f} s")
                before = request_counts(api)
                wall, cpu = time.monotonic(), time.process_time()
                second = sync_once(
                    config, RayServicesClient(api), StateStore(api, "gitsync-system")
                )
                wall, cpu = time.monotonic() - wall, time.process_time() - cpu
                after = request_counts(api)
            assert second.ok, second
            delta = {k: after[k] - before[k] for k in after if after[k] - before[k] > 0}
            print(
                f"no-op sync --once over {services} services in {namespaces} namespaces: "
                f"{wall:.2f} s wall, {cpu:.2f} s CPU, {sum(delta.values())} API requests "
                "(all clients; the simulator only watches and writes status)"
            )
            for key, value in sorted(delta.items(), key=lambda kv: -kv[1]):
                print(f"  {value:6d}  {key}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
