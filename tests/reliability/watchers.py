"""What the fault tests check from outside the agent: every version of every RayService the
API server ever held (through a direct client, never the agent's path) is a complete Git
version; and the commit statuses Gitea shows, read back through its API."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

from kubernetes import client, watch

from gitsync.checkout import read_tree
from gitsync.names import APPLIED_HASH, REVISION
from gitsync.planning import environment_manifests
from gitsync.stamp import applied_hash, stamped
from testbed.gitea import Gitea
from tests.integration.gitops import GitOpsRepo
from tests.integration.kube import GROUP, PLURAL, VERSION

ENVIRONMENT = "staging"


class Versions:
    """Git's version of each service at each commit of ``repo``: (applied hash, spec).
    :meth:`add` right after each commit (it reads the work tree)."""

    def __init__(self, repo: GitOpsRepo) -> None:
        self.repo = repo
        self.at: dict[str, dict[str, tuple[str, Mapping[str, Any]]]] = {}
        for sha in repo.revisions:  # the work tree is at the last one
            self.add(sha)

    def add(self, sha: str) -> str:
        loaded = environment_manifests(read_tree(self.repo.work), ENVIRONMENT, sha[:12])
        self.at[sha] = {
            s.key.name: (
                applied_hash(
                    stamped(
                        s.manifest,
                        environment=ENVIRONMENT,
                        revision=None,
                        source=s.source,
                        wave=s.wave,
                    )
                ),
                s.manifest["spec"],
            )
            for s in loaded.services
        }
        return sha

    def problem(self, obj: Mapping[str, Any]) -> str | None:
        """None when ``obj`` is exactly one commit's version of its service (the fields Git
        sets; the API server adds defaults and KubeRay the status); else what is wrong."""
        name = obj["metadata"]["name"]
        annotations = obj["metadata"].get("annotations") or {}
        revision = annotations.get(REVISION, "")
        if revision not in self.at or name not in self.at[revision]:
            return f"{name}: revision {revision[:12]!r} is not a commit that declares it"
        wanted_hash, spec = self.at[revision][name]
        if annotations.get(APPLIED_HASH) != wanted_hash:
            return f"{name}: applied hash is not the one of {revision[:12]}"
        if (where := _differs(spec, obj.get("spec") or {}, "spec")) is not None:
            return f"{name}: {where} differs from {revision[:12]}"
        return None


def _differs(wanted: Any, live: Any, path: str) -> str | None:
    """Where ``live`` does not hold ``wanted`` (extra fields in ``live`` are defaults)."""
    if isinstance(wanted, Mapping):
        if not isinstance(live, Mapping):
            return path
        for key, value in wanted.items():
            if (found := _differs(value, live.get(key), f"{path}.{key}")) is not None:
                return found
        return None
    if isinstance(wanted, list):
        if not isinstance(live, list) or len(live) != len(wanted):
            return path
        for i, (w, v) in enumerate(zip(wanted, live, strict=True)):
            if (found := _differs(w, v, f"{path}[{i}]")) is not None:
                return found
        return None
    return None if wanted == live else path


class Observer:
    """Watches the namespace's RayServices through ``api`` (relisting after any break, as
    long as the API server is away) and checks every version it sees."""

    def __init__(self, api: client.ApiClient, namespace: str, versions: Versions) -> None:
        self.api, self.namespace, self.versions = api, namespace, versions
        self.seen = 0
        self.problems: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="observer", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(15)

    def _check(self, obj: Mapping[str, Any]) -> None:
        self.seen += 1
        if (problem := self.versions.problem(obj)) is not None:
            self.problems.append(problem)

    def _run(self) -> None:
        custom = client.CustomObjectsApi(self.api)
        while not self._stop.is_set():
            try:
                listing = custom.list_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, _request_timeout=(2, 5)
                )
                for obj in listing["items"]:
                    self._check(obj)
                stream = watch.Watch().stream(
                    custom.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self.namespace,
                    PLURAL,
                    resource_version=listing["metadata"]["resourceVersion"],
                    timeout_seconds=2,
                    _request_timeout=(2, 6),
                )
                for event in stream:
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._check(event["object"])
                    if self._stop.is_set():
                        break
            except Exception:  # the API server is away: look again shortly
                self._stop.wait(0.2)


def statuses(gitea: Gitea, repo: GitOpsRepo, sha: str) -> list[dict[str, Any]]:
    """Every status ever set on ``sha``, oldest first (Gitea calls the state ``status``)."""
    path = repo.url.removeprefix(gitea.url).removesuffix(".git")
    listed: list[dict[str, Any]] = gitea.api("GET", f"/repos{path}/statuses/{sha}?limit=50")
    return sorted(listed, key=lambda s: s["id"])


def wait_for_status(
    gitea: Gitea, repo: GitOpsRepo, sha: str, state: str, guard: float = 120.0
) -> float:
    """Seconds until the newest ``gitsync/staging`` status on ``sha`` is ``state``."""
    began = time.monotonic()
    while True:
        shown = [s for s in statuses(gitea, repo, sha) if s["context"] == f"gitsync/{ENVIRONMENT}"]
        if shown and shown[-1]["status"] == state:
            return time.monotonic() - began
        assert time.monotonic() - began < guard, (state, [s["status"] for s in shown])
        time.sleep(0.1)
