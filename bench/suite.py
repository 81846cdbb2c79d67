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
4. **Classification**: 1,000 changed services, CPU (``bench.classify``);
5. **Rendering** (100 and 1,000 services through a kustomize overlay, ``bench.render``): the
   environment read and rendered by gitsync vs the same build by kustomize alone, and a
   revision that changes nothing rendered (the cache answers) vs the plain-YAML read.

Medians over ``--repeat`` runs (min-max shown). Writes ``docs/benchmarks.md`` and
``docs/benchmarks.png`` (cost against N), keeping the section ``bench.watch_cache`` writes
there. ``--smoke`` runs a tiny version (``make test`` does,
so the harness cannot rot).

    .venv/bin/python -m bench.suite [--sizes 100,1000,3000] [--repeat 3] [--out docs]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, watch

from bench import classify, render, webhook_poll
from bench.noop_sync import request_counts
from bench.watch_cache import kept_section
from bench.workload import NAMESPACES, Repo
from gitsync.config import AgentConfig, load_agent_config
from gitsync.kube.namespaces import ensure_namespace
from gitsync.kube.rayservices import RayServicesClient
from gitsync.kube.state import StateStore
from gitsync.names import REVISION
from gitsync.sync import sync_once
from testbed import checkout_env
from testbed.binaries import ensure_binaries
from testbed.controlplane import ControlPlane, free_port
from testbed.gitea import Gitea

NOOP = "gitsync sync --once (no-op)"
AGENT_PASS = "gitsync pass, warm process (direct lists)"  # noqa: S105 - a row's name
KUBECTL_DIFF = "kubectl diff --server-side"
DRY_RUN = "kubectl apply --server-side --dry-run=server"
SERIAL = "serial kubectl apply --server-side"
CONCURRENCY = (1, 8, 16, 32)
PROFILED_CONCURRENCY = 16


def config_text(repo: Repo, cache: Path, concurrency: int = 16) -> str:
    """The agent config every benchmark pass uses: one healthy read, fast polls."""
    return yaml.safe_dump(
        {
            "repository": {"url": repo.origin},
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


def config_for(repo: Repo, cache: Path, concurrency: int = 16) -> AgentConfig:
    config, problems = load_agent_config(config_text(repo, cache, concurrency))
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
        with tempfile.TemporaryFile() as err:  # a file, not a pipe: a full pipe would block it
            process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = code = os.waitstatus_to_exitcode(status)
            if code not in ok:
                err.seek(0)
                raise RuntimeError(f"{argv[:4]} exited {code}: {err.read()[-500:]!r}")
        return float(usage.ru_utime + usage.ru_stime)

    return run


class AppliedClock:
    """Watches a namespace from a thread and notes when each RayService first carries
    ``revision``: the time of the last apply request, seen from outside the tool."""

    def __init__(self, api: client.ApiClient, namespace: str, revision: str) -> None:
        self.seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._watch, args=(api, namespace, revision), daemon=True
        )
        self._thread.start()
        time.sleep(0.3)  # the watch is open before the tool starts

    def _watch(self, api: client.ApiClient, namespace: str, revision: str) -> None:
        custom = client.CustomObjectsApi(api)
        while not self._stop.is_set():
            stream = watch.Watch().stream(
                custom.list_namespaced_custom_object, "ray.io", "v1", namespace, "rayservices",
                timeout_seconds=1,
            )  # fmt: skip
            for event in stream:
                metadata = event["object"]["metadata"]
                if (metadata.get("annotations") or {}).get(REVISION) == revision:
                    self.seen.setdefault(metadata["name"], time.monotonic())

    def last(self, count: int) -> float:
        deadline = time.monotonic() + 30
        while len(self.seen) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stop.set()
        self._thread.join(5)
        assert len(self.seen) == count, f"{len(self.seen)} of {count} services applied"
        return max(self.seen.values())


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
                "repository": {"url": repo.origin},
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


def config_file(repo: Repo, cache: Path, path: Path, concurrency: int = 8) -> Path:
    """:func:`config_text` in a file, for ``gitsync sync`` processes."""
    path.write_text(config_text(repo, cache, concurrency))
    return path


def gitsync_sync(plane: ControlPlane, config: Path) -> list[str]:
    return [sys.executable, "-m", "gitsync.cli", "sync", "--once", "--no-status",
            "--config", str(config), "--kubeconfig", str(plane.kubeconfig)]  # fmt: skip


@contextlib.contextmanager
def simulator_process(plane: ControlPlane, log: Path) -> Iterator[None]:
    """The KubeRay simulator in a process of its own, answering at once (as KubeRay is a
    process of its own: its CPU time is never the measured tool's)."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "testbed.simulator", "--kubeconfig", str(plane.kubeconfig),
             "--cluster-start", "0", "--app-deploy", "0", "--tick", "0.05", "--requeue", "0"],
            stdout=out, stderr=subprocess.STDOUT, env=checkout_env(),
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while b"simulator running" not in log.read_bytes():
            assert process.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "the simulator did not start"
            time.sleep(0.1)
        yield
    finally:
        process.terminate()
        process.wait(30)


def run_size(
    plane: ControlPlane,
    api: client.ApiClient,
    count: int,
    repeat: int,
    root: Path,
    profile: bool,
) -> dict[str, Any]:
    repo = Repo(root / f"repo-{count}", count)
    config = config_for(repo, root / f"cache-{count}")
    state = StateStore(api, "gitsync-system")
    began = time.monotonic()
    assert sync_once(config, RayServicesClient(api), state).ok
    initial = time.monotonic() - began
    assert plane.binaries is not None
    kubectl = [str(plane.binaries.kubectl), "--kubeconfig", str(plane.kubeconfig)]
    files = [a for f in repo.files() for a in ("-f", str(f))]
    # A process of its own, like kubectl, Python's start-up included.
    gitsync = gitsync_sync(plane, config_file(repo, root / f"cache-{count}", root / "agent.yaml"))

    def agent_pass() -> object:
        return sync_once(config, RayServicesClient(api), state)

    agent_pass()  # warm: what a running agent has already imported and cached
    diff = [*kubectl, "diff", "--server-side", "--field-manager=gitsync", "--force-conflicts"]
    dry_run = [*kubectl, "apply", "--server-side", "--dry-run=server", "--field-manager=gitsync",
               "--force-conflicts"]  # fmt: skip
    rows = {
        NOOP: median([measure(api, child(gitsync)) for _ in range(repeat)]),
        AGENT_PASS: median([measure(api, in_process(agent_pass)) for _ in range(repeat)]),
        KUBECTL_DIFF: median(
            [measure(api, child([*diff, *files], ok=(0, 1))) for _ in range(repeat)]
        ),
        DRY_RUN: median([measure(api, child([*dry_run, *files])) for _ in range(repeat)]),
    }
    return {
        "count": count,
        "initial_rollout": initial,
        "noop": rows,
        "rss": rss_after_polls(plane, repo, root, f"agent-{count}"),
        "profile": profiled(gitsync, root / "profile.txt") if profile else [],
    }


def profiled(argv: list[str], out: Path, top: int = 14) -> list[tuple[float, str]]:
    """Seconds per function (inclusive) of one run of ``argv``, sampled by py-spy at 200 Hz:
    gitsync's own stages, and the libraries they spend it in."""
    spy = Path(sys.executable).with_name("py-spy")
    subprocess.run(
        [str(spy), "record", "--format", "raw", "--rate", "200", "--output", str(out), "--",
         *argv],
        check=True, capture_output=True,
    )  # fmt: skip
    inclusive: Counter[str] = Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        total += int(samples)
        seen = set()
        for frame in stack.split(";"):
            function, _, where = frame.partition(" (")
            module = where.split(":")[0]  # py-spy names files relative to their sys.path entry
            if module.startswith("gitsync/"):
                name = f"{module.removeprefix('gitsync/')}: {function}"
            elif "importlib" in module:
                name = "(importing modules)"
            elif "/" in module and not module.startswith("<"):
                name = f"{module.split('/')[0]} (package)"
            else:
                continue
            if name not in seen:
                seen.add(name)
                inclusive[name] += int(samples)
    rows = [(total / 200, "(whole process)")]
    rows += [(n / 200, name) for name, n in inclusive.most_common(top)]
    return rows


def throughput(
    plane: ControlPlane, api: client.ApiClient, root: Path, repeat: int, changed: int
) -> tuple[dict[str, Any], list[tuple[float, str]]]:
    """``changed`` services in one environment and one wave, all changed at once
    (serve-update: a Serve ``num_replicas``); gitsync waits for each to be Healthy again."""
    repo = Repo(root / "repo-throughput", changed, namespaces=1, namespace_prefix="bench-tp")
    ensure_namespace(api, "bench-tp-0")
    cache = root / "cache-tp"
    assert sync_once(
        config_for(repo, cache), RayServicesClient(api), StateStore(api, "gitsync-system")
    ).ok
    results: dict[str, Any] = {}
    replicas = 3
    for concurrency in CONCURRENCY:
        argv = gitsync_sync(plane, config_file(repo, cache, root / "tp.yaml", concurrency))
        samples, applied = [], []
        for _ in range(repeat):
            repo.write(replicas=replicas)
            sha = repo.commit(f"scale to {replicas}")
            replicas += 1
            clock = AppliedClock(api, "bench-tp-0", sha)
            began = time.monotonic()
            samples.append(measure(api, child(argv)))
            applied.append(clock.last(changed) - began)
        results[f"gitsync sync --once, wave concurrency {concurrency}"] = {
            **median(samples),
            "applied": statistics.median(applied),
        }
    repo.write(replicas=replicas)
    repo.commit(f"scale to {replicas}")
    replicas += 1
    argv = gitsync_sync(plane, config_file(repo, cache, root / "tp.yaml", PROFILED_CONCURRENCY))
    profile = profiled(argv, root / "tp-profile.txt")
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
    results[SERIAL] = median(samples)
    return results, profile


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
            simulator_process(plane, root / "simulator.log"),
            Gitea(binaries, root / "gitea") as gitea,
        ):
            for n in range(NAMESPACES):
                ensure_namespace(api, f"bench-{n}")
            ensure_namespace(api, "gitsync-system")
            idle = rss_after_polls(plane, Repo(root / "repo-empty", 0), root, "agent-idle")
            results = []
            for count in sizes:
                sys.stderr.write(f"bench: {count} services\n")
                profile = count == max(sizes)
                results.append(run_size(plane, api, count, repeat, root / f"n{count}", profile))
                # The next size's namespaces start empty: delete this size's services.
                for n in range(NAMESPACES):
                    client.CustomObjectsApi(api).delete_collection_namespaced_custom_object(
                        "ray.io", "v1", f"bench-{n}", "rayservices"
                    )
            sys.stderr.write("bench: rollout throughput\n")
            tp, tp_profile = throughput(plane, api, root / "tp", repeat, changed)
            sys.stderr.write("bench: poll and webhook\n")
            (root / "webhook").mkdir()
            hooks = webhook_poll.measure(
                plane, api, gitea, root / "webhook", 3 if args.smoke else 10
            )
    classify_cpu = classification(100 if args.smoke else 1000)
    sys.stderr.write("bench: rendering\n")
    renders = render.run([10] if args.smoke else [100, 1000], binaries.kubectl)
    report = {
        "sizes": results, "throughput": tp, "throughput_profile": tp_profile,
        "idle_rss": idle, "classify_cpu": classify_cpu, "render": renders,
        "changed": changed, "repeat": repeat, "kube": binaries.kube_version,
        "seconds": time.monotonic() - began, "smoke": args.smoke, **hooks,
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / "benchmarks.md"
    # bench.watch_cache writes a section of its own: kept as it is.
    kept = kept_section(target.read_text()) if target.exists() else ""
    target.write_text(markdown(report) + ("\n" + kept if kept else ""))
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
        f"kubectl {report['kube']} (built by the test bed); the KubeRay simulator runs as its "
        f"own process and answers at once. Medians of {report['repeat']} runs (min-max). API "
        "requests are the API server's own count (`apiserver_request_total`), all clients, "
        "during the run.",
        "",
        "## No-op pass (nothing to change), 10 namespaces",
        "",
        f"`{NOOP}` is a process of its own, Python's start-up included, as kubectl is. "
        f"`{AGENT_PASS}` is the same pass in a process that has imported its modules and built "
        "its API client, reading the API server directly as `gitsync sync --once` and an agent "
        "with `watch.enabled: false` do. A running agent reads through its watch-backed cache "
        "instead, and such a pass makes no request at all (section *The watch-backed cache* "
        "below).",
        "",
        "| services | tool | wall s (min-max) | CPU s | API requests | kubectl diff / this |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for size in report["sizes"]:
        peer = size["noop"][KUBECTL_DIFF]["wall"]
        for name, row in size["noop"].items():
            ratio = f"{peer / row['wall']:.1f}x" if name.startswith("gitsync") else ""
            lines.append(
                f"| {size['count']} | {name} | {row['wall']:.2f} ({row['wall_min']:.2f}-"
                f"{row['wall_max']:.2f}) | {row['cpu']:.2f} | {row['requests']} | {ratio} |"
            )
    for size in report["sizes"]:
        if size.get("profile"):
            lines += [
                "",
                f"Where one `{NOOP}` spends its time at {size['count']} services (py-spy, "
                "200 samples/s, inclusive seconds; stages nest):",
                "",
                "| seconds | function |",
                "| ---: | --- |",
                *(f"| {seconds:.2f} | `{name}` |" for seconds, name in size["profile"]),
            ]
    lines += [
        "",
        f"## Rollout throughput: {report['changed']} changed services in one wave (serve-update)",
        "",
        "One environment, one namespace, every service's Serve `num_replicas` changed in one "
        "commit; ratios are serial kubectl's time over this row's. *Every service applied*: "
        "from the process's start until a watch sees the last RayService at the new revision "
        "(fetch, plan with a server-side dry run per changed service, apply). *Whole pass*: "
        "until gitsync exits, after every service is Healthy again; the simulator reconciles "
        "one RayService at a time, as KubeRay does by default (`--reconcile-concurrency=1`), "
        "so this part is bound by the operator. Serial kubectl only applies, one file per "
        "process, and waits for nothing.",
        "",
        "| how | every service applied, s | ratio | whole pass, s (min-max) | ratio | CPU s | "
        "API requests |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    serial = report["throughput"][SERIAL]["wall"]
    for name, row in report["throughput"].items():
        applied = row.get("applied", row["wall"])
        lines.append(
            f"| {name} | {applied:.2f} | {serial / applied:.1f}x | {row['wall']:.2f} "
            f"({row['wall_min']:.2f}-{row['wall_max']:.2f}) | {serial / row['wall']:.1f}x | "
            f"{row['cpu']:.2f} | {row['requests']} |"
        )
    lines += [
        "",
        f"Where one pass at wave concurrency {PROFILED_CONCURRENCY} spends its time (py-spy, "
        "200 samples/s, inclusive seconds summed over threads: the wave's workers overlap):",
        "",
        "| seconds | function |",
        "| ---: | --- |",
        *(f"| {seconds:.2f} | `{name}` |" for seconds, name in report["throughput_profile"]),
    ]
    poll, hook = report["poll"], report["webhook"]
    lines += [
        "",
        "## Polling and webhooks (a real Gitea)",
        "",
        f"- A poll with nothing new (`Agent.poll()`, median of {poll['runs']}): "
        f"{poll['wall'] * 1000:.0f} ms ({poll['min'] * 1000:.0f}-{poll['max'] * 1000:.0f}); "
        f"{poll['git_processes']:.0f} git processes ({'; '.join(poll['commands'])}), "
        f"{poll['fetches']} fetches, {poll['bytes']:.0f} bytes from the server (the ref "
        "advertisement).",
        f"- Webhook → first apply request (median of {hook['runs']} pushes): "
        f"{hook['from_webhook'] * 1000:.0f} ms from the webhook reaching the agent (max "
        f"{hook['from_webhook_max'] * 1000:.0f} ms); {hook['from_push']:.2f} s from `git push` "
        f"returning (max {hook['from_push_max']:.2f} s), which includes Gitea's own delivery "
        "delay.",
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
        "## Rendering: an environment built by a kustomize overlay",
        "",
        "A base of N RayServices and an overlay setting their image tag and patching their "
        "workers (one patch for all, or one per service), read as a pass reads an environment. "
        "The peer is the same build by kustomize alone, a process of its own "
        f"(`kubectl kustomize`, kubectl {report['kube']}); *cache hit* is the environment read "
        "again at a revision that changes nothing the render reads (a pass at a revision "
        "already read keeps the tree's report and renders nothing at all), against reading the "
        "same services as plain YAML.",
        "",
        *render.markdown(report["render"]),
        "",
        "## Growth with N",
        "",
        "![cost against N](benchmarks.png)",
        "",
        "| services | gitsync no-op wall s | per service ms | warm pass per service ms | "
        "RSS MiB | initial rollout s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in report["sizes"]:
        wall, agent = s["noop"][NOOP]["wall"], s["noop"][AGENT_PASS]["wall"]
        lines.append(
            f"| {s['count']} | {wall:.2f} | {1000 * wall / s['count']:.2f} | "
            f"{1000 * agent / s['count']:.2f} | {s['rss']:.0f} | {s['initial_rollout']:.1f} |"
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
