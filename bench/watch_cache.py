"""The watch-backed cache against today's direct reads, each row with its peer in the same run.

Starts the test bed (kube-apiserver + etcd + the KubeRay simulator), serves a generated
GitOps repository over file:// (N services in M namespaces) and rolls everything out once,
for each N. Then:

1. **API requests per steady-state pass** (every N): this process's client's requests
   (watches left out: they are long-running, not per pass) of the same no-op ``sync_once``
   and of the agent's health refresh at rest (one ``list_managed`` per environment directly;
   through the cache, each service's resourceVersion, since none changed), through
   ``RayServicesClient`` (every read a request, what ``gitsync sync --once`` and an agent
   with ``watch.enabled: false`` do) and through a warm ``CachedRayServices``;
2. at the largest N, **edit → Drift Event**: an in-process agent (``Agent.start``, watches on,
   report only) and another writer's ``serveConfigV2`` patch, until the Warning Event
   ``Drift`` is in the API server; the peer is the scheduled check (``watch.enabled: false``):
   one whole check, timed from the edit to its Event, plus the wait for the schedule
   (``intervals.drift``, every 5 minutes by default: 150 s on average);
3. **status write → health verdict**: what ``Rollout._wait`` does between reads: list, then
   follow the changes until KubeRay's status write is read and ``health.assess`` judged it;
   through the cache's changes and through a direct watch;
4. **the agent at rest** (``gitsync run`` as a process, watches on, then off): RSS once it
   polled with nothing new, and CPU seconds over ``--idle`` seconds of rest (default 60),
   scaled to an hour. The default poll (30 s); the scheduled drift check (every 5 minutes)
   falls outside the window.

Writes its section of ``docs/benchmarks.md`` (``--out``; :mod:`bench.suite` keeps it).

    .venv/bin/python -m bench.watch_cache [--sizes 100,1000,3000] [--namespaces 10] [--out docs]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from bench.agent_memory import rss_mib
from bench.noop_sync import build_repo
from gitsync.agent import Agent
from gitsync.config import AgentConfig, load_agent_config
from gitsync.health import assess
from gitsync.kube.cache import RAYSERVICES, CachedRayServices
from gitsync.kube.namespaces import ensure_namespace
from gitsync.kube.rayservices import GROUP, PLURAL, VERSION, RayServices, RayServicesClient
from gitsync.kube.state import StateStore
from gitsync.sync import sync_once
from testbed.controlplane import ControlPlane, free_port
from testbed.simulator import Delays, Simulator

DIRECT, CACHE = "direct lists", "watch-backed cache"
NOOP, REFRESH = "no-op sync pass", "health refresh (a poll, head unchanged)"
SCHEDULE = 300.0  # intervals.drift's default, "*/5 * * * *"
BEGIN, END = "<!-- bench.watch_cache -->", "<!-- /bench.watch_cache -->"


def counted(api: client.ApiClient) -> list[str]:
    """From now on, every request ``api`` makes but watches (method and path)."""
    calls: list[str] = []
    sent = api.rest_client.request

    def request(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        if "watch=1" not in url and "watch=true" not in url:
            calls.append(f"{method} {url.split('?', maxsplit=1)[0]}")
        return sent(method, url, *args, **kwargs)

    api.rest_client.request = request
    return calls


def measure(calls: list[str], run: Callable[[], object]) -> tuple[int, float]:
    calls.clear()
    began = time.monotonic()
    run()
    return len(calls), time.monotonic() - began


def steady_state(
    config: AgentConfig, services: RayServices, state: StateStore, calls: list[str], spaces: int
) -> dict[str, tuple[int, float]]:
    def refresh() -> None:
        """What ``Agent._refresh_health`` reads at rest: one list per environment directly;
        through the cache, each service's resourceVersion (none changed: none decoded)."""
        for n in range(spaces):
            if (
                not isinstance(services, CachedRayServices)
                or services.versions(f"bench-{n}", f"env{n}") is None
            ):
                services.list_managed(f"bench-{n}", f"env{n}")

    return {
        NOOP: measure(calls, lambda: sync_once(config, services, state)),
        REFRESH: measure(calls, refresh),
    }


def agent_config(bare: Path, cache: Path, **more: Any) -> AgentConfig:
    text = yaml.safe_dump(
        {
            "repository": {"url": bare.as_uri()},
            "cacheDir": str(cache),
            "rollout": {"healthyReads": 1, "pollInterval": "500ms", "concurrency": 16},
            **more,
        }
    )
    config, problems = load_agent_config(text)
    assert config is not None, problems
    return config


def run(
    services_count: int = 100, namespaces: int = 10, plane: ControlPlane | None = None
) -> dict[str, dict[str, tuple[int, float]]]:
    """Requests and seconds per path and step; on ``plane`` (default: a test bed of its own)."""
    root = Path(tempfile.mkdtemp(prefix="gitsync-bench-watch-"))
    try:
        bare = build_repo(root, services_count, namespaces)
        if plane is not None:
            return _measured(plane, root, bare, namespaces)
        with ControlPlane(workdir=root / "plane", verbose=False) as own:
            return _measured(own, root, bare, namespaces)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _measured(
    plane: ControlPlane, root: Path, bare: Path, namespaces: int
) -> dict[str, dict[str, tuple[int, float]]]:
    config = agent_config(bare, root / "cache")
    with plane.api_client() as api, plane.api_client() as sim_api:
        prepare(api, namespaces)
        with Simulator(sim_api, Delays(0.0, 0.0, 0.5)):
            roll_out(api, config)
            return requests(plane, api, config, namespaces)


def prepare(api: client.ApiClient, namespaces: int) -> None:
    for n in range(namespaces):
        ensure_namespace(api, f"bench-{n}")
    ensure_namespace(api, "gitsync-system")


def roll_out(api: client.ApiClient, config: AgentConfig) -> float:
    began = time.monotonic()
    first = sync_once(config, RayServicesClient(api), StateStore(api, "gitsync-system"))
    assert first.ok, first
    return time.monotonic() - began


def requests(
    plane: ControlPlane, api: client.ApiClient, config: AgentConfig, namespaces: int
) -> dict[str, dict[str, tuple[int, float]]]:
    """A steady-state pass's requests both ways (the services rolled out)."""
    results: dict[str, dict[str, tuple[int, float]]] = {}
    with plane.api_client() as direct_api, plane.api_client() as own:
        state = StateStore(direct_api, "gitsync-system")
        calls = counted(direct_api)
        results[DIRECT] = steady_state(
            config, RayServicesClient(direct_api), state, calls, namespaces
        )
        cache = CachedRayServices(own)
        try:
            state = StateStore(own, "gitsync-system", cache.informers)
            assert sync_once(config, cache, state).ok  # starts the watches
            for n in range(namespaces):
                assert cache.informers.informer(RAYSERVICES, f"bench-{n}").wait_synced(60)
            assert sync_once(config, cache, state).ok  # warm
            results[CACHE] = steady_state(config, cache, state, counted(own), namespaces)
        finally:
            cache.close()
    return results


# -- edit → Drift Event --------------------------------------------------------------------


def edit(api: client.ApiClient, namespace: str, name: str) -> float:
    """Another writer adds 3 to the service's first num_replicas; when the patch was sent."""
    custom = client.CustomObjectsApi(api)
    live = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    text = re.sub(
        r"num_replicas: (\d+)",
        lambda m: f"num_replicas: {int(m.group(1)) + 3}",
        live["spec"]["serveConfigV2"],
        count=1,
    )
    sent = time.monotonic()
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name, {"spec": {"serveConfigV2": text}},
        field_manager="kubectl-edit",
    )  # fmt: skip
    return sent


def drift_event_after(api: client.ApiClient, namespace: str, name: str, since: float) -> float:
    """Seconds from ``since`` until the API server holds a Drift Event about ``name``."""
    core = client.CoreV1Api(api)
    selector = f"reason=Drift,involvedObject.name={name}"
    while not core.list_namespaced_event(namespace, field_selector=selector).items:
        assert time.monotonic() - since < 600, f"no Drift Event for {namespace}/{name}"
        time.sleep(0.02)
    return time.monotonic() - since


def drift_latency(
    plane: ControlPlane, api: client.ApiClient, bare: Path, root: Path, edits: int, per: int
) -> dict[str, Any]:
    """Edit → Drift Event: the scheduled check (watches off) timed first, then an agent
    with watches on; each edit on a service not edited before (namespace bench-0)."""
    names = iter(f"svc{i}" for i in range(per))
    scheduled = []
    with plane.api_client() as own:
        direct = Agent(
            agent_config(bare, root / "cache-scheduled", watch={"enabled": False},
                         leaderElection={"enabled": False}),
            own, "bench-scheduled",
        )  # fmt: skip
        try:
            for _ in range(max(1, edits // 2)):
                name = next(names)
                sent = edit(api, "bench-0", name)
                direct.drift()  # what the schedule runs
                scheduled.append(drift_event_after(api, "bench-0", name, sent))
        finally:
            direct.recorder.close()
    with plane.api_client() as own:
        agent = Agent(
            agent_config(bare, root / "cache-events", leaderElection={"enabled": False},
                         intervals={"poll": "1h", "drift": "1h"}),
            own, "bench-events",
        )  # fmt: skip
        agent.start()
        try:
            began = time.monotonic()
            while agent.passes < 1 or agent._lock.locked() or not agent.last_ok:
                assert time.monotonic() - began < 900, "the agent's first pass did not succeed"
                time.sleep(0.1)
            assert agent.cache is not None
            assert agent.cache.informers.informer(RAYSERVICES, "bench-0").wait_synced(60)
            name = next(names)  # the first edit after the agent's first pass
            whole = drift_event_after(api, "bench-0", name, edit(api, "bench-0", name))
            events = []
            for _ in range(edits):
                name = next(names)
                events.append(drift_event_after(api, "bench-0", name, edit(api, "bench-0", name)))
                time.sleep(0.5)
        finally:
            agent.shutdown(10)
    check = statistics.median(scheduled)
    return {
        "events": statistics.median(events), "events_max": max(events), "runs": len(events),
        "whole": whole, "check": check, "check_runs": len(scheduled),
        "scheduled": SCHEDULE / 2 + check, "scheduled_max": SCHEDULE + max(scheduled),
    }  # fmt: skip


# -- status write → health verdict -----------------------------------------------------------


def verdict_latency(
    api: client.ApiClient, services: RayServices, namespace: str, name: str, attempts: int
) -> list[float]:
    """What the health wait does between reads: list, then follow the changes; seconds from
    KubeRay's status write until it is read and judged."""
    custom = client.CustomObjectsApi(api)
    environment = f"env{namespace.rsplit('-', 1)[1]}"
    found = []
    for attempt in range(attempts):
        generation = 1000 + attempt
        _, version = services.list_managed_versioned(namespace, environment)
        written = time.monotonic()
        custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name,
            {"status": {"observedGeneration": generation}}, field_manager="kuberay-operator",
        )  # fmt: skip
        for _, obj in services.watch_managed(namespace, environment, version, 10.0):
            if (obj.get("status") or {}).get("observedGeneration") == generation:
                assess(obj)
                found.append(time.monotonic() - written)
                break
        else:
            raise AssertionError(f"the status write to {namespace}/{name} was never read")
        time.sleep(0.2)
    return found


def health_latency(plane: ControlPlane, api: client.ApiClient, attempts: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with plane.api_client() as own:
        direct = verdict_latency(api, RayServicesClient(own), "bench-1", "svc0", attempts)
    with plane.api_client() as own:
        cache = CachedRayServices(own)
        try:
            cache.list_managed("bench-1", "env1")
            assert cache.informers.informer(RAYSERVICES, "bench-1").wait_synced(60)
            cached = verdict_latency(api, cache, "bench-1", "svc1", attempts)
        finally:
            cache.close()
    for path, found in ((DIRECT, direct), (CACHE, cached)):
        results[path] = {"median": statistics.median(found), "max": max(found), "runs": len(found)}
    return results


# -- the agent at rest ---------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def at_rest(
    plane: ControlPlane, bare: Path, root: Path, name: str, watch: bool, idle: float, poll: str
) -> dict[str, float]:
    """RSS and idle CPU of ``gitsync run`` managing what ``bare`` declares (rolled out)."""
    port = free_port()
    config = root / f"{name}.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "repository": {"url": bare.as_uri()},
                "cacheDir": str(root / f"cache-{name}"),
                "listen": f"127.0.0.1:{port}",
                "leaderElection": {"namespace": "gitsync-system", "leaseName": name},
                "rollout": {"healthyReads": 1, "pollInterval": "500ms", "concurrency": 16},
                "intervals": {"poll": poll, "drift": "5m"},
                "watch": {"enabled": watch},
            }
        )
    )
    log = root / f"{name}.log"
    with log.open("wb") as out:
        agent = subprocess.Popen(
            [sys.executable, "-m", "gitsync.cli", "run", "--config", str(config),
             "--kubeconfig", str(plane.kubeconfig)],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "POD_NAME": name},
        )  # fmt: skip
    try:
        began = time.monotonic()
        while 'gitsync_git_poll_total{result="unchanged"}' not in metrics(port):
            assert agent.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() - began < 600, "the agent never polled with nothing new"
            time.sleep(1)
        cpu = cpu_seconds(agent.pid)
        time.sleep(idle)
        cpu = cpu_seconds(agent.pid) - cpu
        rss, peak = rss_mib(agent.pid)
    finally:
        agent.terminate()
        agent.wait(60)
    return {"rss": rss, "peak": peak, "cpu": cpu, "window": idle, "per_hour": cpu * 3600 / idle}


def metrics(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            return str(response.read().decode())
    except OSError:  # not listening yet
        return ""


# -- the run --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="100,1000,3000")
    parser.add_argument("--namespaces", type=int, default=10)
    parser.add_argument("--edits", type=int, default=5)
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of rest measured")
    parser.add_argument("--poll", default="30s", help="the agents' intervals.poll at rest")
    parser.add_argument("--out", type=Path, default=None, help="write docs/benchmarks.md's part")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    report = measure_all(sizes, args.namespaces, args.edits, args.idle, args.poll)
    text = section(report)
    sys.stdout.write(text)
    if args.out is not None:
        splice(args.out / "benchmarks.md", text)


def measure_all(
    sizes: list[int],
    namespaces: int,
    edits: int,
    idle: float,
    poll: str = "30s",
    plane: ControlPlane | None = None,
) -> dict[str, Any]:
    """Every row (module docstring); on ``plane`` (default: a test bed of its own)."""
    root = Path(tempfile.mkdtemp(prefix="gitsync-bench-watch-"))
    began = time.monotonic()
    settings = (sizes, namespaces, edits, idle, poll)
    try:
        if plane is not None:
            report = _all(plane, root, *settings)
        else:
            with ControlPlane(workdir=root / "plane", verbose=False) as own:
                report = _all(own, root, *settings)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report["seconds"] = time.monotonic() - began
    return report


def _all(
    plane: ControlPlane,
    root: Path,
    sizes: list[int],
    namespaces: int,
    edits: int,
    idle: float,
    poll: str,
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "namespaces": namespaces, "requests": {}, "largest": max(sizes), "poll": poll,
    }  # fmt: skip
    with plane.api_client() as api, plane.api_client() as sim_api:
        prepare(api, namespaces)
        with Simulator(sim_api, Delays(0.0, 0.0, 0.5)):
            for count in sizes:
                sys.stderr.write(f"bench.watch_cache: {count} services\n")
                work = root / f"n{count}"
                bare = build_repo(work, count, namespaces)
                config = agent_config(bare, work / "cache")
                roll_out(api, config)
                report["requests"][count] = requests(plane, api, config, namespaces)
                if count == max(sizes):
                    sys.stderr.write("bench.watch_cache: edit → Drift Event\n")
                    report["drift"] = drift_latency(
                        plane, api, bare, work, edits, count // namespaces
                    )
                    sys.stderr.write("bench.watch_cache: status write → verdict\n")
                    report["health"] = health_latency(plane, api, edits)
                    sys.stderr.write("bench.watch_cache: the agent at rest\n")
                    report["rest"] = {
                        path: at_rest(plane, bare, work, f"agent-{n}", path == CACHE, idle, poll)
                        for n, path in enumerate((CACHE, DIRECT))
                    }
                else:  # the next size's namespaces start empty
                    for n in range(namespaces):
                        client.CustomObjectsApi(api).delete_collection_namespaced_custom_object(
                            GROUP, VERSION, f"bench-{n}", PLURAL
                        )
    return report


def ratio(peer: float, this: float) -> str:
    if this <= 0:
        return "∞ (0)" if peer > 0 else "-"
    return f"{peer / this:.1f}x"


def section(report: dict[str, Any]) -> str:
    """The watch-backed cache's part of docs/benchmarks.md."""
    spaces, largest = report["namespaces"], report["largest"]
    lines = [
        BEGIN,
        "## The watch-backed cache",
        "",
        "Generated by `.venv/bin/python -m bench.watch_cache --out docs` (one run, every row "
        "against its peer in the same run; the KubeRay simulator in process, answering at "
        f"once); do not edit by hand. Whole run: {report['seconds'] / 60:.1f} minutes.",
        "",
        f"API requests of one steady-state pass ({spaces} namespaces; this process's client, "
        "watches left out): `RayServicesClient` (every read a request: `gitsync sync "
        "--once`, `watch.enabled: false`) against a warm `CachedRayServices` (`gitsync run`).",
        "",
        "| services | step | direct lists: requests | s | watch-backed cache: requests | s | "
        "requests saved |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for count, rows in report["requests"].items():
        for step in (NOOP, REFRESH):
            (d, ds), (c, cs) = rows[DIRECT][step], rows[CACHE][step]
            lines.append(f"| {count} | {step} | {d} | {ds:.2f} | {c} | {cs:.2f} | {d - c} |")
    if "drift" in report:
        drift, health, rest = report["drift"], report["health"], report["rest"]
        lines += [
            "",
            f"At {largest} services:",
            "",
            "| measured | watch-backed cache | peer | peer / cache |",
            "| --- | ---: | ---: | ---: |",
            f"| edit → Drift Event, median of {drift['runs']} (max) | {drift['events']:.2f} s "
            f"({drift['events_max']:.2f}) | scheduled check: {drift['scheduled']:.1f} s on "
            f"average, {drift['scheduled_max']:.1f} s at worst | "
            f"{ratio(drift['scheduled'], drift['events'])} |",
            f"| status write → health verdict, median of {health[CACHE]['runs']} (max) | "
            f"{health[CACHE]['median']:.3f} s ({health[CACHE]['max']:.3f}) | direct watch: "
            f"{health[DIRECT]['median']:.3f} s ({health[DIRECT]['max']:.3f}) | "
            f"{ratio(health[DIRECT]['median'], health[CACHE]['median'])} |",
            f"| `gitsync run` RSS at rest (peak) | {rest[CACHE]['rss']:.0f} MiB "
            f"({rest[CACHE]['peak']:.0f}) | `watch.enabled: false`: {rest[DIRECT]['rss']:.0f} "
            f"MiB ({rest[DIRECT]['peak']:.0f}) | "
            f"{ratio(rest[DIRECT]['rss'], rest[CACHE]['rss'])} |",
            f"| `gitsync run` CPU per hour at rest | {rest[CACHE]['per_hour']:.0f} s | "
            f"`watch.enabled: false`: {rest[DIRECT]['per_hour']:.0f} s | "
            f"{ratio(rest[DIRECT]['per_hour'], rest[CACHE]['per_hour'])} |",
            "",
            f"- Edit → Drift Event: another writer's `serveConfigV2` patch until the Warning "
            f"Event `Drift` is in the API server, an in-process agent watching (report only; "
            f"each edit to a service not edited before, 0.5 s apart). The first edit after the "
            f"agent's first pass (which found nothing to change, so only the edited object "
            f"of its {largest // spaces}-service environment is checked): "
            f"{drift['whole']:.2f} s. The scheduled check is one whole check of every "
            f"environment with `watch.enabled: false`, timed from the edit to its Event "
            f"(median of {drift['check_runs']}: {drift['check']:.2f} s), plus the wait for "
            f"`intervals.drift` (every {SCHEDULE / 60:.0f} minutes by default: "
            f"{SCHEDULE / 2:.0f} s on average, {SCHEDULE:.0f} s at worst).",
            "- Status write → health verdict: what `Rollout._wait` does between reads — list, "
            "then follow the changes until KubeRay's status write is read and `health.assess` "
            "judged it — through the cache's changes and through a watch of its own.",
            f"- At rest: `gitsync run` (a process, leader election on, `intervals.poll: "
            f"{report['poll']}`) "
            f"once it polled with nothing new; CPU is user + system over "
            f"{rest[CACHE]['window']:.0f} s scaled to an hour (the scheduled drift check, "
            "every 5 minutes, falls outside that window and is not in it).",
        ]
    return "\n".join([*lines, END, ""])


def splice(path: Path, text: str) -> None:
    """Puts ``text`` in place of the file's earlier watch-cache section (or at its end)."""
    old = path.read_text() if path.exists() else ""
    kept = kept_section(old)
    path.write_text(old.replace(kept, text) if kept else old.rstrip("\n") + "\n\n" + text)


def kept_section(text: str) -> str:
    """The watch-cache section of a benchmarks.md (with a trailing newline), or ""."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        return ""
    return text[start : end + len(END)] + "\n"


if __name__ == "__main__":
    main()
