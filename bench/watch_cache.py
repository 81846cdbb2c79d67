"""API requests of a steady-state pass: the watch-backed cache against direct lists.

Starts the test bed (kube-apiserver + etcd + the KubeRay simulator), serves a generated
GitOps repository over file:// (N services in M namespaces), rolls everything out once, then
counts the requests (this process's client, watches left out: they are long-running, not per
pass) of the same no-op ``sync_once`` and of the agent's health refresh (one
``list_managed`` per environment) made through ``RayServicesClient`` (every read a request,
what ``gitsync sync --once`` does) and through a warm ``CachedRayServices`` (what
``gitsync run`` does), in the same run.

    .venv/bin/python -m bench.watch_cache [SERVICES] [NAMESPACES]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from bench.noop_sync import build_repo
from gitsync.config import AgentConfig, load_agent_config
from gitsync.kube.cache import RAYSERVICES, CachedRayServices
from gitsync.kube.namespaces import ensure_namespace
from gitsync.kube.rayservices import RayServices, RayServicesClient
from gitsync.kube.state import StateStore
from gitsync.sync import sync_once
from testbed.controlplane import ControlPlane
from testbed.simulator import Delays, Simulator


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
        for n in range(spaces):
            services.list_managed(f"bench-{n}", f"env{n}")

    return {
        "no-op sync pass": measure(calls, lambda: sync_once(config, services, state)),
        "health refresh (a poll, head unchanged)": measure(calls, refresh),
    }


def run(
    services_count: int = 100, namespaces: int = 10, plane: ControlPlane | None = None
) -> dict[str, dict[str, tuple[int, float]]]:
    """Requests and seconds per path and step; on ``plane`` (default: a test bed of its own)."""
    root = Path(tempfile.mkdtemp(prefix="gitsync-bench-watch-"))
    try:
        bare = build_repo(root, services_count, namespaces)
        if plane is not None:
            return _measured(plane, root, bare, services_count, namespaces)
        with ControlPlane(workdir=root / "plane", verbose=False) as own:
            return _measured(own, root, bare, services_count, namespaces)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _measured(
    plane: ControlPlane, root: Path, bare: Path, services_count: int, namespaces: int
) -> dict[str, dict[str, tuple[int, float]]]:
    text = yaml.safe_dump(
        {
            "repository": {"url": bare.as_uri()},
            "cacheDir": str(root / "cache"),
            "rollout": {"healthyReads": 1, "pollInterval": "500ms", "concurrency": 16},
        }
    )
    config, problems = load_agent_config(text)
    assert config is not None, problems
    results: dict[str, dict[str, tuple[int, float]]] = {}
    with plane.api_client() as api, plane.api_client() as sim_api, plane.api_client() as own:
        for n in range(namespaces):
            ensure_namespace(api, f"bench-{n}")
        ensure_namespace(api, "gitsync-system")
        with Simulator(sim_api, Delays(0.0, 0.0, 0.5)):
            first = sync_once(config, RayServicesClient(api), StateStore(api, "gitsync-system"))
            assert first.ok, first
            direct = RayServicesClient(api)
            calls = counted(api)
            results["direct lists"] = steady_state(
                config, direct, StateStore(api, "gitsync-system"), calls, namespaces
            )
            cache = CachedRayServices(own)
            try:
                state = StateStore(own, "gitsync-system", cache.informers)
                assert sync_once(config, cache, state).ok  # starts the watches
                for n in range(namespaces):
                    assert cache.informers.informer(RAYSERVICES, f"bench-{n}").wait_synced(60)
                assert sync_once(config, cache, state).ok  # warm
                results["watch-backed cache"] = steady_state(
                    config, cache, state, counted(own), namespaces
                )
            finally:
                cache.close()
    return results


def main(services_count: int = 100, namespaces: int = 10) -> None:
    results = run(services_count, namespaces)
    print(f"steady state, {services_count} services in {namespaces} namespaces:")
    for path, rows in results.items():
        for what, (requests, seconds) in rows.items():
            print(f"  {path:<20} {what:<42} {requests:5d} requests  {seconds:6.2f} s")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
