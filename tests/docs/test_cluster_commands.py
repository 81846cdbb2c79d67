"""The documented commands that need a cluster, run against the test bed.

The agent config is config/gitsync.yaml as documented, pointed at a GitOps repository of
examples/plain-layout (staging and production in this test's namespaces, previews declared)
and at this test's namespaces; health gates are shortened for the simulator. Every
``gitsync`` line of a ``run cluster`` block that names ``config/gitsync.yaml`` or
``path/to/checkout`` runs in document order after one documented ``sync --once``; the
``run agent`` line starts ``gitsync run``, which must become leader, serve /metrics and stop
cleanly on SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from testbed.controlplane import ControlPlane
from testbed.simulator import Simulator
from tests.integration.gitops import GitOpsRepo

from .blocks import ROOT, Block, all_blocks, commands
from .sandbox import missing_lines, run_gitsync

CONFIG = "config/gitsync.yaml"
CHECKOUT = "path/to/checkout"
TAKES_KUBECONFIG = {"sync", "status", "drift", "previews", "plan", "diff", "run"}
EXPECTED_EXIT = {"sync": 0, "status": 0, "drift": 0, "previews": 0, "notes": 0, "plan": 0,
                 "diff": 0}  # fmt: skip


@dataclass(frozen=True)
class Documented:
    config: Path
    checkout: Path
    kubeconfig: Path

    def argv(self, words: list[str]) -> list[str]:
        """A documented command line with the placeholders pointing at the test bed."""
        values = {CONFIG: str(self.config), CHECKOUT: str(self.checkout),
                  "~/.kube/config": str(self.kubeconfig)}  # fmt: skip
        argv = [values.get(w, w) for w in words[1:]]
        if argv[0] in TAKES_KUBECONFIG and "--kubeconfig" not in argv:
            argv += ["--kubeconfig", str(self.kubeconfig)]
        return argv


def cluster_lines() -> list[tuple[Block, list[str]]]:
    blocks = [b for b in all_blocks() if b.kind == "sh" and b.options.get("run") == "cluster"]
    return [
        (block, words)
        for block in blocks
        for words in commands(block.text)
        if words[0] == "gitsync" and (CONFIG in words or CHECKOUT in words)
    ]


def cluster_outputs() -> list[Block]:
    return [b for b in all_blocks() if b.kind == "output" and b.options.get("cwd") == "cluster"]


def agent_lines() -> list[tuple[Block, list[str]]]:
    blocks = [b for b in all_blocks() if b.kind == "sh" and b.options.get("run") == "agent"]
    return [(b, w) for b in blocks for w in commands(b.text)]


@pytest.fixture
def documented(
    tmp_path: Path,
    namespace: str,
    api: client.ApiClient,
    sim: Simulator,
    control_plane: ControlPlane,
) -> Iterator[Documented]:
    production, previews = f"{namespace}-prod", f"{namespace}-pr"
    repo = GitOpsRepo(
        tmp_path / "gitops", namespace, production=production, create_namespace=True,
        previews={"namespace": previews, "branches": "preview/*"},
    )  # fmt: skip
    document = yaml.safe_load((ROOT / CONFIG).read_text())
    document["repository"] = {"url": repo.url, "branch": "main"}
    document["cacheDir"] = str(tmp_path / "cache")
    document["leaderElection"]["namespace"] = namespace
    document.pop("webhooks")  # its secret file is not mounted here
    document["rollout"].update(
        healthyReads=2, healthySeconds="1500ms", pollInterval="100ms", healthTimeout="30s",
        stateNamespace=namespace,
    )  # fmt: skip
    config = tmp_path / "gitsync.yaml"
    config.write_text(yaml.safe_dump(document))
    try:
        yield Documented(config, repo.work, control_plane.kubeconfig)
    finally:
        custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
        for name in (production, previews):
            try:
                custom.delete_collection_namespaced_custom_object(
                    "ray.io", "v1", name, "rayservices"
                )
                core.delete_namespace(name)
            except client.ApiException as exc:
                if exc.status != 404:
                    raise


def test_documented_cluster_commands_run(documented: Documented) -> None:
    lines = cluster_lines()
    first = [w for _, w in lines if w[1:3] == ["sync", "--once"] and len(w) == 5]
    assert first, "the docs show no plain `gitsync sync --once --config config/gitsync.yaml`"
    code, output = run_gitsync(documented.argv(first[0]), ROOT)
    assert code == 0, output
    for environment in ("staging", "production"):
        assert f"{environment}: succeeded" in output, output
    for block, words in lines:
        code, output = run_gitsync(documented.argv(words), ROOT)
        expected = EXPECTED_EXIT[words[1]]
        assert code == expected, f"{block}: `{' '.join(words)}` exited {code}:\n{output}"
        if words[1] == "status":
            assert "production: succeeded" in output, output
    for block in cluster_outputs():
        _, output = run_gitsync(documented.argv(block.options["cmd"].split()), ROOT)
        missing = missing_lines(block.text, output)
        assert not missing, f"{block}: not printed by `{block.options['cmd']}`: {missing}\n{output}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 - loopback test URL
        return str(answer.read().decode())


def test_documented_agent_starts_leads_and_stops(documented: Documented) -> None:
    [(block, words)] = agent_lines()
    port = free_port()
    argv = [f"127.0.0.1:{port}" if w.startswith("127.0.0.1:") else w
            for w in documented.argv(words)]  # fmt: skip
    assert f"127.0.0.1:{port}" in argv, f"{block}: the agent line has no loopback --listen"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    agent = subprocess.Popen(
        [sys.executable, "-m", "gitsync.cli", *argv], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline, metrics = time.monotonic() + 60, ""
        while time.monotonic() < deadline and "gitsync_leader 1.0" not in metrics:
            assert agent.poll() is None, f"{block}: the agent exited: {agent.stderr.read()}"  # type: ignore[union-attr]
            with contextlib.suppress(OSError):  # not listening yet
                metrics = get(f"http://127.0.0.1:{port}/metrics")
            time.sleep(0.3)
        assert "gitsync_leader 1.0" in metrics, f"{block}: never became leader"
        assert get(f"http://127.0.0.1:{port}/healthz")
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            _, err = agent.communicate(timeout=40)
        except subprocess.TimeoutExpired:
            agent.kill()
            raise
    assert agent.returncode == 0, f"{block}: exit {agent.returncode}: {err[-2000:]}"
    assert err.lstrip().startswith("{"), f"{block}: --log-format json, but: {err[:200]}"
