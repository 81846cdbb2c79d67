"""What the reliability tests watch the cluster do, and the agent as a real process.

:class:`Recorder` watches every RayService of the namespaces a test names and keeps each
version it sees — revision annotation, generation, health (one read, as
:func:`gitsync.health.assess` judges it) — ordered by ``resourceVersion``. With one etcd
behind the API server that is the order the writes happened in, whichever watch delivered
them first, so "was wave 0 Healthy when wave 1 was applied" is answered exactly.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
import yaml
from kubernetes import client, watch

from gitsync import kuberay
from gitsync.health import assess
from gitsync.model import Health
from tests.integration.kube import GROUP, PLURAL, VERSION

REPO_ROOT = Path(__file__).resolve().parents[2]
REVISION = "gitsync.ray.io/revision"


@dataclass(frozen=True)
class Seen:
    rv: int  # the object's resourceVersion: etcd's global write order
    at: float  # time.monotonic() when the watch delivered it
    namespace: str
    name: str
    revision: str
    generation: int
    health: Health


def seen(obj: Mapping[str, Any], at: float) -> Seen:
    meta = obj["metadata"]
    spec = obj.get("spec") or {}
    try:
        apps = tuple(kuberay.serve_application_names(spec.get("serveConfigV2")))
    except ValueError:
        apps = ()
    return Seen(
        int(meta["resourceVersion"]),
        at,
        meta["namespace"],
        meta["name"],
        (meta.get("annotations") or {}).get(REVISION, ""),
        int(meta.get("generation") or 0),
        assess(obj, apps).health,
    )


class Recorder:
    """Every version of every RayService in ``namespaces``, from a cluster-wide watch."""

    def __init__(self, api: client.ApiClient, namespaces: set[str]) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.namespaces = namespaces
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)

    def __enter__(self) -> Recorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)

    def _add(self, obj: Mapping[str, Any]) -> None:
        if obj["metadata"]["namespace"] in self.namespaces:
            with self._lock:
                self.seen.append(seen(obj, time.monotonic()))

    def _run(self) -> None:
        version = ""
        while not self._stop.is_set():
            if not version:
                listed = self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
                for obj in listed["items"]:
                    self._add(obj)
                version = listed["metadata"]["resourceVersion"]
            stream = watch.Watch().stream(
                self.custom.list_cluster_custom_object,
                GROUP,
                VERSION,
                PLURAL,
                resource_version=version,
                timeout_seconds=2,
            )
            try:
                for event in stream:
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        version = ""  # expired: relist
                        break
                    version = obj["metadata"]["resourceVersion"]
                    if event["type"] != "DELETED":
                        self._add(obj)
                    if self._stop.is_set():
                        return
            except (client.ApiException, urllib3.exceptions.HTTPError, OSError):
                version = ""

    def ordered(self) -> list[Seen]:
        with self._lock:
            return sorted(set(self.seen), key=lambda s: s.rv)

    def latest(self) -> dict[tuple[str, str], Seen]:
        found: dict[tuple[str, str], Seen] = {}
        for s in self.ordered():
            found[(s.namespace, s.name)] = s
        return found

    def wait(self, what: str, predicate: Callable[[], bool], timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.02)


def agent_process(
    config: Mapping[str, Any], kubeconfig: Path, folder: Path, name: str
) -> subprocess.Popen[bytes]:
    """``gitsync run`` as its own process, running this checkout's code."""
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(dict(config)))
    argv = [sys.executable, "-m", "gitsync.cli", "run", "--config", str(path)]
    env = {**os.environ, "POD_NAME": name, "PYTHONPATH": str(REPO_ROOT)}
    with (folder / f"{name}.log").open("wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            [*argv, "--kubeconfig", str(kubeconfig)],
            env=env,
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads")
