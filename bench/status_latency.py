"""How long after the last health change a commit status appears on the forge.

Starts the test bed (kube-apiserver + etcd + the KubeRay simulator) and a real Gitea, pushes
the example repository (staging: three RayServices in two waves) to Gitea, and runs
``sync_once`` with the Gitea provider and the default rollout settings (3 Healthy reads
spanning 5 s, reads every 1 s). Meanwhile one thread watches the namespace and stamps every
RayService status change, another polls Gitea's status API every 20 ms. Reported per run:

- health→status: the last RayService status change before the rollout ended → the
  ``success`` status visible through Gitea's API (most of it is the deliberate settle time);
- settle: the part of it that is ``rollout.healthySeconds`` holding;
- event→post: the reporter's own latency, from the rollout's verdict to Gitea accepting the
  post (``gitsync_status_post_latency_seconds``).

    .venv/bin/python -m bench.status_latency [RUNS]
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml
from kubernetes import client, watch

from gitsync.config import AgentConfig, StatusConfig, load_agent_config
from gitsync.kube.namespaces import ensure_namespace
from gitsync.kube.rayservices import RayServicesClient
from gitsync.kube.state import StateStore
from gitsync.metrics import Metrics
from gitsync.report.factory import build_provider
from gitsync.report.reporter import Reporter
from gitsync.source.config import TokenAuth
from gitsync.sync import sync_once
from testbed.binaries import ensure_binaries
from testbed.controlplane import ControlPlane
from testbed.gitea import Gitea
from testbed.simulator import Delays, Simulator

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "plain-layout"


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=b", "-c", "user.email=b@example.com", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def push_repo(gitea: Gitea, root: Path, namespace: str, run: int) -> tuple[str, str]:
    work = root / f"work{run}"
    shutil.copytree(EXAMPLES, work)
    config = yaml.safe_load((work / "gitsync.yaml").read_text())
    staging = config["environments"][0]
    staging["namespace"] = namespace
    config["environments"] = [staging]
    config.pop("previews", None)
    shutil.rmtree(work / "environments" / "production")
    (work / "gitsync.yaml").write_text(yaml.safe_dump(config))
    url = gitea.create_repo(f"latency{run}")
    git("init", "-q", "-b", "main", cwd=work)
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "initial", cwd=work)
    git(*gitea.git_auth_config(), "push", "-q", url, "main", cwd=work)
    return url, git("rev-parse", "HEAD", cwd=work)


def agent(url: str, gitea: Gitea, root: Path, namespace: str, run: int) -> AgentConfig:
    token = root / "token"
    token.write_text(gitea.token)
    document = {
        "repository": {"url": url, "branch": "main"},
        "cacheDir": str(root / f"cache{run}"),
        "rollout": {"stateNamespace": namespace},
    }
    config, problems = load_agent_config(yaml.safe_dump(document))
    assert config is not None, problems
    return AgentConfig(
        config.repository,
        status=StatusConfig("gitea", token=TokenAuth(token_file=token)),
        rollout=config.rollout,
    )


def measure(plane: ControlPlane, gitea: Gitea, root: Path, run: int) -> tuple[float, float, float]:
    namespace = f"latency-{run}"
    with plane.api_client() as api:
        ensure_namespace(api, namespace)
        url, sha = push_repo(gitea, root, namespace, run)
        config = agent(url, gitea, root, namespace, run)
        changes: list[float] = []
        seen: list[float] = []
        stop = threading.Event()

        def watch_statuses() -> None:
            with plane.api_client() as watch_api:
                custom = client.CustomObjectsApi(watch_api)
                last: dict[str, object] = {}
                while not stop.is_set():
                    stream = watch.Watch().stream(
                        custom.list_namespaced_custom_object,
                        "ray.io", "v1", namespace, "rayservices", timeout_seconds=1,
                    )  # fmt: skip
                    for event in stream:
                        obj = event["object"]
                        status = obj.get("status")
                        if status is not None and last.get(obj["metadata"]["name"]) != status:
                            last[obj["metadata"]["name"]] = status
                            changes.append(time.monotonic())

        def poll_gitea() -> None:
            path = url.removeprefix(gitea.url).removesuffix(".git")
            while not stop.is_set():
                combined = gitea.api("GET", f"/repos{path}/commits/{sha}/status")
                if any(s["status"] == "success" for s in combined.get("statuses") or ()):
                    seen.append(time.monotonic())
                    return
                time.sleep(0.02)

        threads = [threading.Thread(target=f, daemon=True) for f in (watch_statuses, poll_gitea)]
        for thread in threads:
            thread.start()
        metrics = Metrics()
        reporter = Reporter(build_provider(config, metrics), metrics)
        result = sync_once(
            config, RayServicesClient(api), StateStore(api, namespace), reporter=reporter
        )
        reporter.close(timeout=30)
        threads[1].join(30)
        stop.set()
        threads[0].join(5)
        assert result.ok, result
        assert seen, "no success status appeared"
        last_change = max(t for t in changes if t < seen[0])
        post = metrics.registry.get_sample_value(
            "gitsync_status_post_latency_seconds_sum", {"provider": "gitea"}
        )
        posts = metrics.registry.get_sample_value(
            "gitsync_status_post_latency_seconds_count", {"provider": "gitea"}
        )
        return seen[0] - last_change, config.rollout.healthy_seconds, (post or 0) / (posts or 1)


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    binaries = ensure_binaries(quiet=True)
    with tempfile.TemporaryDirectory(prefix="gitsync-bench-") as tmp:
        root = Path(tmp)
        plane = ControlPlane(binaries=binaries, workdir=root / "plane")
        plane.start()
        try:
            with plane.api_client() as sim_api, Gitea(binaries, root / "gitea") as gitea:
                sim = Simulator(sim_api, Delays(cluster_start=1.0, app_deploy=1.0))
                sim.start()
                try:
                    rows = [measure(plane, gitea, root, run) for run in range(runs)]
                finally:
                    sim.stop()
        finally:
            plane.stop()
    print("run  health→status  settle (healthySeconds)  rest  event→post (mean per status)")
    for run, (latency, settle, post) in enumerate(rows):
        rest = latency - settle
        print(
            f"{run:>3}  {latency:>11.2f}s  {settle:>22.1f}s  {rest:>4.2f}s  {post * 1000:>8.0f} ms"
        )


if __name__ == "__main__":
    main()
