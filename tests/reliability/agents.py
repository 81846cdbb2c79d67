"""The reliability suite's agent: one :class:`Agent` in the test process, wired to the real
API server, whose passes the tests trigger one at a time; and what they read back."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from kubernetes import client

from gitsync.agent import Agent
from tests.integration.kube import GROUP, PLURAL, VERSION
from tests.reliability.corpus import Case, base_tree

PASS_TIMEOUT = 120.0


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def live(api: client.ApiClient, namespace: str) -> dict[str, tuple[int, str]]:
    """Name → (generation, revision annotation): what a stray apply would change."""
    items = client.CustomObjectsApi(api).list_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL
    )["items"]
    return {
        o["metadata"]["name"]: (
            o["metadata"]["generation"],
            o["metadata"]["annotations"]["gitsync.ray.io/revision"],
        )
        for o in items
    }


def reset(root: Path, namespace: str, case: Case | None) -> None:
    for entry in root.iterdir():
        if entry.name != ".git":
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    base_tree(root, namespace)
    if case is not None:
        case.write(root)


def wait_first_pass(agent: Agent) -> None:
    deadline = time.monotonic() + PASS_TIMEOUT
    while not (agent.passes >= 1 and not agent._lock.locked()):
        assert time.monotonic() < deadline, "the first pass did not finish"
        time.sleep(0.05)


def run_pass(agent: Agent) -> float:
    began, before = time.monotonic(), agent.passes
    agent.trigger()
    while agent.passes == before or agent._lock.locked():
        assert time.monotonic() - began < PASS_TIMEOUT, "the pass did not finish"
        time.sleep(0.02)
    return time.monotonic() - began
