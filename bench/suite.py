"""The benchmark suite (``make bench``): gitsync against kubectl on the same API server.

Starts the test bed once (kube-apiserver + etcd + the KubeRay simulator answering at once),
then for each N (100, 1,000, 3,000 RayServices in 10 namespaces; realistic objects: two
Serve applications, a head and two worker groups with env vars and resources):

1. **No-op pass**: ``gitsync sync --once`` (a process, Python start-up included) with
   nothing to do vs ``kubectl diff --server-side`` and
   ``kubectl apply --server-side --dry-run=server`` over the same files: wall, CPU, API
   requests as the API server counted them (``apiserver_request_total``, all clients);
2. **Rollout throughput** (once, 100 changed services in one wave, serve-update): gitsync at
   wave concurrency 1, 8, 16 vs serial ``kubectl apply --server-side``;
3. **Memory**: ``gitsync run`` RSS managing the N services (after its first, no-op pass and a
   few polls), and idle;
4. **Classification**: 1,000 changed services, CPU (``bench.classify``).

Medians over ``--repeat`` runs (min-max shown). Writes ``docs/benchmarks.md`` and
``docs/benchmarks.png`` (cost against N). ``--smoke`` runs a tiny version (``make test`` does,
so the harness cannot rot).

    .venv/bin/python -m bench.suite [--sizes 100,1000,3000] [--repeat 3] [--out docs]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from bench import classify
from bench.noop_sync import request_counts
from gitsync.config import AgentConfig, load_agent_config
from gitsync.kube.namespaces import ensure_namespace
from gitsync.kube.rayservices import RayServices
from gitsync.kube.state import StateStore
from gitsync.sync import sync_once
from testbed.binaries import ensure_binaries
from testbed.controlplane import ControlPlane, free_port
from testbed.simulator import Delays, Simulator

NAMESPACES = 10
SERVE = """applications:
- name: retrieve
  route_prefix: /retrieve
  import_path: retriever.serve:app
  runtime_env:
    env_vars: {{INDEX: "products-v{index}", LOG_LEVEL: info}}
  deployments:
  - name: Retriever
    num_replicas: 2
    ray_actor_options: {{num_cpus: 1}}
- name: rerank
  route_prefix: /rerank
  import_path: reranker.serve:app
  deployments:
  - name: Reranker
    num_replicas: 1
    ray_actor_options: {{num_gpus: 1}}
  - name: Features
    autoscaling_config: {{min_replicas: 1, max_replicas: 4}}
"""


def service(name: str, namespace: str, index: int, replicas: int = 2) -> dict[str, Any]:
    def container(kind: str, cpu: str, memory: str, gpu: int = 0) -> dict[str, Any]:
        limits: dict[str, Any] = {"cpu": cpu, "memory": memory}
        if gpu:
            limits["nvidia.com/gpu"] = gpu
        return {
            "name": f"ray-{kind}",
            "image": "rayproject/ray:2.49.0-py311",
            "env": [
                {"name": "RAY_GRAFANA_HOST", "value": "http://grafana:3000"},
                {"name": "SERVICE_INDEX", "value": str(index)},
            ],
            "resources": {"requests": dict(limits), "limits": limits},
        }

    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "serveConfigV2": SERVE.format(index=index).replace(
                "num_replicas: 2", f"num_replicas: {replicas}"
            ),
            "rayClusterConfig": {
                "rayVersion": "2.49.0",
                "headGroupSpec": {
                    "rayStartParams": {"dashboard-host": "0.0.0.0"},  # noqa: S104 - a manifest
                    "template": {"spec": {"containers": [container("head", "2", "8Gi")]}},
                },
                "workerGroupSpecs": [
                    {
                        "groupName": "cpu",
                        "replicas": 2,
                        "minReplicas": 1,
                        "maxReplicas": 8,
                        "rayStartParams": {},
                        "template": {"spec": {"containers": [container("worker", "4", "16Gi")]}},
                    },
                    {
                        "groupName": "gpu",
                        "replicas": 1,
                        "minReplicas": 0,
                        "maxReplicas": 4,
                        "rayStartParams": {},
                        "template": {"spec": {"containers": [container("worker", "8", "32Gi", 1)]}},
                    },
                ],
            },
        },
    }


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=b", "-c", "user.email=b@example.com", "-c",
         "commit.gpgsign=false", *args],
        cwd=cwd, check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip


@dataclass
class Repo:
    root: Path
    count: int
    work: Path = field(init=False)
    bare: Path = field(init=False)

    def __post_init__(self) -> None:
        self.work, self.bare = self.root / "work", self.root / "repo.git"
        environments = []
        for n in range(NAMESPACES):
            environments.append(
                {"name": f"env{n}", "path": f"environments/env{n}", "namespace": f"bench-{n}"}
            )
        self.write(replicas=2)
        (self.work / "gitsync.yaml").write_text(yaml.safe_dump({"environments": environments}))
        git("init", "-q", "--bare", "-b", "main", str(self.bare), cwd=self.root)
        git("init", "-q", "-b", "main", cwd=self.work)
        self.commit("initial")

    def files(self) -> list[Path]:
        return sorted((self.work / "environments").rglob("*.yaml"))

    def write(self, replicas: int, only: int | None = None) -> None:
        per = max(1, self.count // NAMESPACES)
        written = 0
        for n in range(NAMESPACES):
            folder = self.work / "environments" / f"env{n}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "README.md").write_text("RayServices of this environment\n")  # git keeps it
            for i in range(per):
                if n * per + i >= self.count:
                    break
                changed = only is None or written < only
                obj = service(f"svc{i}", f"bench-{n}", i, replicas if changed else 2)
                (folder / f"svc{i}.yaml").write_text(yaml.safe_dump(obj, sort_keys=False))
                written += 1

    def commit(self, message: str) -> None:
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "--allow-empty", "-m", message, cwd=self.work)
        git("push", "-q", "-f", self.bare.as_uri(), "main", cwd=self.work)


def config_for(repo: Repo, cache: Path, concurrency: int = 16) -> AgentConfig:
    text = yaml.safe_dump(
        {
            "repository": {"url": repo.bare.as_uri()},
            "cacheDir": str(cache),
            "rollout": {
                "healthyReads": 1,
                "healthySeconds": "1ms",
                "pollInterval": "200ms",
                "concurrency": concurrency,
                "stateNamespace": "gitsync-system",
            },
        }
    )
    config, problems = load_agent_config(text)
    assert config is not None, problems
    return config


@dataclass(frozen=True)
class Sample:
    wall: float
    cpu: float
    requests: int


def measure(api: client.ApiClient, run: Callable[[], float]) -> Sample:
    """``run`` returns its CPU seconds; wall and API requests are measured here."""
    before = request_counts(api)
    began = time.monotonic()
    cpu = run()
    wall = time.monotonic() - began
    after = request_counts(api)
    return Sample(wall, cpu, sum(max(0, after[k] - before[k]) for k in after))


def in_process(work: Callable[[], object]) -> Callable[[], float]:
    def run() -> float:
        began = time.process_time()
        work()
        return time.process_time() - began

    return run


def child(argv: list[str], ok: tuple[int, ...] = (0,)) -> Callable[[], float]:
    def run() -> float:
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(process.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        assert process.stderr is not None
        if code not in ok:
            raise RuntimeError(f"{argv[:4]} exited {code}: {process.stderr.read()[-500:]!r}")
        process.stderr.close()
        process.returncode = code
        return float(usage.ru_utime + usage.ru_stime)

    return run


def median(samples: list[Sample]) -> dict[str, Any]:
    walls = [s.wall for s in samples]
    return {
        "wall": statistics.median(walls),
        "wall_min": min(walls),
        "wall_max": max(walls),
        "cpu": statistics.median(s.cpu for s in samples),
        "requests": int(statistics.median(s.requests for s in samples)),
    }


def rss_after_polls(plane: ControlPlane, repo: Repo, root: Path, name: str) -> float:
    """RSS (MiB) of ``gitsync run`` managing the repo's services after a few no-op polls."""
    config = root / f"{name}.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "repository": {"url": repo.bare.as_uri()},
                "cacheDir": str(root / f"cache-{name}"),
                "intervals": {"poll": "2s"},
                "listen": f"127.0.0.1:{free_port()}",
                "leaderElection": {"namespace": "gitsync-system", "leaseName": name},
                "rollout": {
                    "healthyReads": 1,
                    "healthySeconds": "1ms",
                    "stateNamespace": "gitsync-system",
                },
            }
        )
    )
    log = root / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gitsync.cli", "run", "--config", str(config),
             "--kubeconfig", str(plane.kubeconfig)],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "POD_NAME": name},
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 1800
        while "succeeded" not in log.read_text() and "up to date" not in log.read_text():
            assert process.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(1)
        time.sleep(10)  # a few polls with nothing new
        for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")
    finally:
        process.terminate()
        process.wait(30)


def run_size(
    plane: ControlPlane, api: client.ApiClient, count: int, repeat: int, root: Path
) -> dict[str, Any]:
    repo = Repo(root / f"repo-{count}", count)
    config = config_for(repo, root / f"cache-{count}")
    state = StateStore(api, "gitsync-system")
    began = time.monotonic()
    assert sync_once(config, RayServices(api), state).ok
    initial = time.monotonic() - began
    assert plane.binaries is not None
    kubectl = [str(plane.binaries.kubectl), "--kubeconfig", str(plane.kubeconfig)]
    files = [a for f in repo.files() for a in ("-f", str(f))]
    config_file = root / f"agent-{count}.yaml"
    config_file.write_text(
        yaml.safe_dump(
            {
                "repository": {"url": repo.bare.as_uri()},
                "cacheDir": str(root / f"cache-{count}"),
                "rollout": {"stateNamespace": "gitsync-system"},
            }
        )
    )
    # A process of its own, like kubectl: the simulator's thread would otherwise share the
    # interpreter (and its CPU time) with the pass being measured.
    gitsync = [sys.executable, "-m", "gitsync.cli", "sync", "--once", "--no-status",
               "--config", str(config_file), "--kubeconfig", str(plane.kubeconfig)]  # fmt: skip
    rows = {
        "gitsync sync --once (no-op)": median(
            [measure(api, child(gitsync)) for _ in range(repeat)]
        ),
        "kubectl diff --server-side": median(
            [
                measure(
                    api,
                    child(
                        [
                            *kubectl,
                            "diff",
                            "--server-side",
                            "--field-manager=gitsync",
                            "--force-conflicts",
                            *files,
                        ],
                        ok=(0, 1),
                    ),
                )
                for _ in range(repeat)
            ]
        ),
        "kubectl apply --server-side --dry-run=server": median(
            [
                measure(
                    api,
                    child(
                        [
                            *kubectl,
                            "apply",
                            "--server-side",
                            "--dry-run=server",
                            "--field-manager=gitsync",
                            "--force-conflicts",
                            *files,
                        ]
                    ),
                )
                for _ in range(repeat)
            ]
        ),
    }
    return {"count": count, "initial_rollout": initial, "noop": rows,
            "rss": rss_after_polls(plane, repo, root, f"agent-{count}")}  # fmt: skip


def throughput(
    plane: ControlPlane, api: client.ApiClient, root: Path, repeat: int, changed: int
) -> dict[str, Any]:
    repo = Repo(root / "repo-throughput", changed)
    state = StateStore(api, "gitsync-system")
    assert sync_once(config_for(repo, root / "cache-tp"), RayServices(api), state).ok
    results: dict[str, Any] = {}
    replicas = 3
    for concurrency in (1, 8, 16):
        samples = []
        for _ in range(repeat):
            repo.write(replicas=replicas)
            repo.commit(f"scale to {replicas}")
            replicas += 1
            config = config_for(repo, root / "cache-tp", concurrency)

            def one(config: AgentConfig = config) -> object:
                return sync_once(config, RayServices(api), state)

            samples.append(measure(api, in_process(one)))
        results[f"gitsync, wave concurrency {concurrency}"] = median(samples)
    assert plane.binaries is not None
    kubectl = [str(plane.binaries.kubectl), "--kubeconfig", str(plane.kubeconfig)]
    samples = []
    for _ in range(repeat):
        repo.write(replicas=replicas)
        replicas += 1

        def serial() -> float:
            cpu = 0.0
            for path in repo.files():
                cpu += child([*kubectl, "apply", "--server-side", "--field-manager=gitsync",
                              "--force-conflicts", "-f", str(path)])()  # fmt: skip
            return cpu

        samples.append(measure(api, serial))
    results["serial kubectl apply --server-side"] = median(samples)
    return results


def classification(count: int) -> float:
    return classify.measure(count, repeat=3)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="100,1000,3000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--changed", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat")
    args = parser.parse_args(argv)
    sizes = [10] if args.smoke else [int(s) for s in args.sizes.split(",")]
    repeat = 1 if args.smoke else args.repeat
    changed = 5 if args.smoke else args.changed
    binaries = ensure_binaries(quiet=True)
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gitsync-bench-") as tmp:
        root = Path(tmp)
        with (
            ControlPlane(binaries=binaries, workdir=root / "plane", verbose=False) as plane,
            plane.api_client() as api,
            plane.api_client() as sim_api,
            Simulator(sim_api, Delays(0.0, 0.0, 0.05, requeue=5.0)),
        ):
            for n in range(NAMESPACES):
                ensure_namespace(api, f"bench-{n}")
            ensure_namespace(api, "gitsync-system")
            idle = rss_after_polls(plane, Repo(root / "repo-empty", 0), root, "agent-idle")
            results = []
            for count in sizes:
                sys.stderr.write(f"bench: {count} services\n")
                results.append(run_size(plane, api, count, repeat, root / f"n{count}"))
                # The next size's namespaces start empty: delete this size's services.
                for n in range(NAMESPACES):
                    client.CustomObjectsApi(api).delete_collection_namespaced_custom_object(
                        "ray.io", "v1", f"bench-{n}", "rayservices"
                    )
            sys.stderr.write("bench: rollout throughput\n")
            tp = throughput(plane, api, root / "tp", repeat, changed)
    classify_cpu = classification(100 if args.smoke else 1000)
    report = {
        "sizes": results, "throughput": tp, "idle_rss": idle, "classify_cpu": classify_cpu,
        "changed": changed, "repeat": repeat, "kube": binaries.kube_version,
        "seconds": time.monotonic() - began, "smoke": args.smoke,
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmarks.md").write_text(markdown(report))
    plot(report, args.out / "benchmarks.png")
    sys.stdout.write(markdown(report))


def markdown(report: dict[str, Any]) -> str:
    cpu = os.cpu_count()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`.venv/bin/python -m bench.suite`); do not edit by hand.",
        "",
        f"Machine: {platform.machine()}, {cpu} cores, {mem:.0f} GiB, Linux "
        f"{platform.release()}, Python {platform.python_version()}; kube-apiserver and "
        f"kubectl {report['kube']} (built by the test bed); the KubeRay simulator answers at "
        f"once. Medians of {report['repeat']} runs (min-max). API requests are the API "
        "server's own count (`apiserver_request_total`), all clients, during the run.",
        "",
        "## No-op pass (nothing to change)",
        "",
        "| services | tool | wall s (min-max) | CPU s | API requests | kubectl diff / gitsync |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for size in report["sizes"]:
        ours = size["noop"]["gitsync sync --once (no-op)"]["wall"]
        peer = size["noop"]["kubectl diff --server-side"]["wall"]
        for name, row in size["noop"].items():
            ratio = f"{peer / ours:.1f}x" if name.startswith("gitsync") else ""
            lines.append(
                f"| {size['count']} | {name} | {row['wall']:.2f} ({row['wall_min']:.2f}-"
                f"{row['wall_max']:.2f}) | {row['cpu']:.2f} | {row['requests']} | {ratio} |"
            )
    lines += [
        "",
        f"## Rollout throughput: {report['changed']} changed services in one wave (serve-update)",
        "",
        "| how | wall s (min-max) | API requests | serial kubectl / this |",
        "| --- | ---: | ---: | ---: |",
    ]
    serial = report["throughput"]["serial kubectl apply --server-side"]["wall"]
    for name, row in report["throughput"].items():
        lines.append(
            f"| {name} | {row['wall']:.2f} ({row['wall_min']:.2f}-{row['wall_max']:.2f}) | "
            f"{row['requests']} | {serial / row['wall']:.1f}x |"
        )
    lines += [
        "",
        "gitsync's wall time includes waiting for every service to be Healthy (one read; the "
        "simulator answers at once); kubectl's does not wait for anything.",
        "",
        "## Memory and classification",
        "",
        f"- `gitsync run` idle (no services): {report['idle_rss']:.0f} MiB RSS",
    ]
    lines += [
        f"- `gitsync run` managing {s['count']} services (after its no-op pass and a few "
        f"polls): {s['rss']:.0f} MiB RSS"
        for s in report["sizes"]
    ]
    lines += [
        f"- Classifying 1,000 changed services (normalise + semantic serveConfigV2 diff + "
        f"KubeRay rules): {report['classify_cpu']:.2f} s CPU",
        "",
        "## Growth with N",
        "",
        "![cost against N](benchmarks.png)",
        "",
        "| services | gitsync no-op wall s | per service ms | initial rollout s |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for s in report["sizes"]:
        wall = s["noop"]["gitsync sync --once (no-op)"]["wall"]
        lines.append(
            f"| {s['count']} | {wall:.2f} | {1000 * wall / s['count']:.2f} | "
            f"{s['initial_rollout']:.1f} |"
        )
    lines += ["", f"Whole run: {report['seconds'] / 60:.1f} minutes.", ""]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib  # noqa: PLC0415 - only the plot needs it

    matplotlib.use("Agg")  # no display
    import matplotlib.pyplot as plt  # noqa: PLC0415 - after choosing the backend

    counts = [s["count"] for s in report["sizes"]]
    figure, axis = plt.subplots(figsize=(7, 4), dpi=100)
    for name in report["sizes"][0]["noop"]:
        axis.plot(
            counts, [s["noop"][name]["wall"] for s in report["sizes"]], marker="o", label=name
        )
    axis.set_xlabel("RayServices (10 namespaces)")
    axis.set_ylabel("no-op pass, wall seconds")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
    main()
