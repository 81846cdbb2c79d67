"""What ``make demo`` tells its story on (testbed/demo.py): the test bed, the team's
repository on Gitea, and the agent.

All on loopback, stopped by pid: etcd + kube-apiserver with KubeRay's CRDs, the KubeRay
simulator (with one failure rule: the story's broken import path), Gitea with the repository
seeded from ``examples/plain-layout/`` and a push and pull-request webhook to the agent, and
``gitsync run`` as its own process, its log lines printed as they come. With ``--ray real``
(``make demo RAY=real``), the real KubeRay operator and real Ray heads instead of the
simulator, and a variant of the examples they can run (testbed/demo_ray.py).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml
from kubernetes import client

from testbed.controlplane import ControlPlane, _Process, free_port, spawn
from testbed.demo_ray import RealRay, real_ray, seed_variant
from testbed.demo_ray import import_path as real_import_path
from testbed.gitea import Gitea
from testbed.simulator import Delays, FailureRule, Simulator

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = REPO_ROOT / "examples" / "plain-layout"
REPOSITORY = "ray-services"
STATE_NAMESPACE = "gitsync-system"
# The broken commit of the story names a module that does not exist; the simulator fails any
# application importing it, as Ray Serve would (an import error → DEPLOY_FAILED).
BROKEN_IMPORT = "ranker.serving:app"
BROKEN_MESSAGE = (
    "Failed to import 'ranker.serving:app': ModuleNotFoundError: No module named 'ranker.serving'"
)


class DemoError(RuntimeError):
    """The story did not go as told; the message says which step and what was seen."""


@dataclass(frozen=True)
class Pace:
    """How long the simulated KubeRay takes. gitsync keeps its default health gate (Healthy
    for 5 s): KubeRay publishes stale app statuses for 2 s after a Serve PUT (the simulator
    too), and a shorter gate would let a broken deploy pass as RUNNING."""

    delays: Delays
    timeout: float  # per step of the story


PACES = {
    "normal": Pace(Delays(cluster_start=3.0, app_deploy=2.0, tick=0.2), 300.0),
    "fast": Pace(Delays(cluster_start=0.5, app_deploy=0.5, tick=0.1), 180.0),
}
# On real Ray the pace is Ray's: a head takes 10-25 s to answer (longer on a busy machine),
# and a step may start two of them.
REAL_RAY_TIMEOUT = 900.0
RAY_MODES = ("simulator", "real")


def example_namespaces() -> list[str]:
    config = yaml.safe_load((EXAMPLES / "gitsync.yaml").read_text())
    names = [env["namespace"] for env in config.get("environments", [])]
    previews = (config.get("previews") or {}).get("namespace")
    return names + ([previews] if previews else [])


def git(*args: str, cwd: Path) -> str:
    result = subprocess.run(
        ["git", "-c", "user.name=Ray Platform", "-c", "user.email=platform@example.com",
         "-c", "commit.gpgsign=false", *args],
        cwd=cwd, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise DemoError(f"git {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


class Out:
    """The story's printer: one lock, so the agent's log lines never cut a story line."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.began = time.monotonic()

    def say(self, text: str = "") -> None:
        with self.lock:
            print(text, flush=True)

    def step(self, text: str) -> None:
        self.say(f"\n━━ {text}")

    def note(self, text: str) -> None:
        self.say(f"   {text}")

    def block(self, text: str, prefix: str = "   │ ") -> None:
        self.say("\n".join(prefix + line for line in text.rstrip().splitlines()))


@dataclass
class Bed:
    """Everything the story drives, running."""

    out: Out
    pace: Pace
    workdir: Path
    plane: ControlPlane
    api: client.ApiClient
    simulator: Simulator | None  # None on real Ray
    gitea: Gitea
    work: Path  # the team's clone of the repository
    config: Path  # the agent's config file
    agent_port: int
    agent: _Process | None = None
    ray: RealRay | None = None  # the real operator and Ray heads (--ray real)

    @property
    def owner_repo(self) -> str:
        return f"{self.gitea.admin}/{REPOSITORY}"

    def import_path(self, path: str) -> str:
        """An import path of the examples as this bed's repository names it."""
        return real_import_path(path) if self.ray else path

    @property
    def preview_service(self) -> str:
        """The service the pull-request chapter changes (the summarizer needs a GPU)."""
        return "embedder" if self.ray else "summarizer"

    @property
    def drift_replicas(self) -> int:
        """What the hand edit sets num_replicas to: on real Ray each is a worker process."""
        return 2 if self.ray else 6

    def check(self) -> None:
        """Stops the story at once when a Ray head could not start or died."""
        errors = self.ray.errors() if self.ray else []
        if errors:
            raise DemoError(f"real Ray failed: {errors[0]}")

    def record_pids(self) -> None:
        """``<workdir>/pids``: every process the demo started, one ``name pid`` per line (the
        Ray heads: ``<workdir>/ray-heads.txt``, written when they are stopped)."""
        pids = {**self.plane.pids, "gitea": self.gitea.pid}
        if self.ray is not None:
            pids.update(self.ray.pids())
        if self.agent is not None:
            pids["gitsync"] = self.agent.popen.pid
        (self.workdir / "pids").write_text("".join(f"{k} {v}\n" for k, v in pids.items()))

    def gitsync(self, *args: str) -> tuple[int, str]:
        """Runs the gitsync CLI as a user would; returns its exit code and output."""
        result = subprocess.run(
            [sys.executable, "-m", "gitsync", *args],
            cwd=self.work,
            capture_output=True,
            text=True,
            timeout=self.pace.timeout,
            check=False,
            env={**os.environ, "KUBECONFIG": str(self.plane.kubeconfig)},
        )
        return result.returncode, (result.stdout + result.stderr).rstrip()

    def push(self, message: str, branch: str = "main") -> str:
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "-m", message, cwd=self.work)
        git(*self.gitea.git_auth_config(), "push", "-q", "origin", branch, cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)


def write_agent_config(bed_dir: Path, gitea: Gitea, port: int, health_timeout: str = "2m") -> Path:
    secrets_dir = bed_dir / "secrets"
    secrets_dir.mkdir(mode=0o700)
    token, hook = secrets_dir / "gitea-token", secrets_dir / "webhook-secret"
    token.write_text(gitea.token)
    hook.write_text(secrets.token_hex(20))
    for path in (token, hook):
        path.chmod(0o600)
    config = {
        "repository": {
            "url": gitea.clone_url(REPOSITORY),
            "branch": "main",
            "auth": {"tokenFile": str(token)},
        },
        "cacheDir": str(bed_dir / "cache"),
        # The drift check runs every 15 s here so the story need not wait; in a cluster the
        # default is every 5 minutes.
        "intervals": {"poll": "30s", "drift": "15s"},
        "status": {
            "provider": "gitea",
            "tokenFile": str(token),
            "targetUrl": f"http://127.0.0.1:{port}/environments/{{environment}}",
        },
        "leaderElection": {"enabled": True, "namespace": STATE_NAMESPACE},
        "webhooks": {"secretFile": str(hook)},
        "listen": f"127.0.0.1:{port}",
        "rollout": {"healthTimeout": health_timeout, "stateNamespace": STATE_NAMESPACE},
    }
    path = bed_dir / "gitsync.yaml"
    path.write_text(
        "# The demo agent's config (testbed/demo.py wrote it): gitsync run --config <this file>\n"
        + yaml.safe_dump(config, sort_keys=False)
    )
    return path


def seed_repository(gitea: Gitea, work: Path, *, real: bool = False) -> list[str]:
    """The team's repository: examples/plain-layout/ as its first commit, pushed to Gitea (on
    real Ray, its variant: testbed/demo_ray.py); returns the example files left out."""
    url = gitea.create_repo(REPOSITORY)
    shutil.copytree(EXAMPLES, work)
    left_out = seed_variant(work) if real else []
    git("init", "-q", "-b", "main", cwd=work)
    git("remote", "add", "origin", url, cwd=work)
    return left_out


def add_webhook(gitea: Gitea, owner_repo: str, port: int, secret_file: Path) -> None:
    gitea.add_webhook(
        owner_repo,
        f"http://127.0.0.1:{port}/webhooks",
        secret_file.read_text(),
        events=("push", "pull_request"),
        branch=None,
    )


def start_agent(bed: Bed) -> _Process:
    """``gitsync run`` as its own process; a thread prints its log lines as they come."""
    log = bed.workdir / "gitsync.log"
    process = spawn(
        "gitsync",
        [sys.executable, "-m", "gitsync", "run", "--config", str(bed.config),
         "--kubeconfig", str(bed.plane.kubeconfig)],
        log,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    threading.Thread(
        target=_follow, args=(log, process, bed.out), name="demo-agent-log", daemon=True
    ).start()
    return process


def _follow(log: Path, process: _Process, out: Out) -> None:
    deadline = time.monotonic() + 10
    while not log.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    with log.open(errors="replace") as lines:
        while True:
            line = lines.readline()
            if line:
                out.say(f"   gitsync │ {line.rstrip()}")
            elif process.popen.poll() is not None:
                return
            else:
                time.sleep(0.1)


@contextlib.contextmanager
def running_bed(workdir: Path, pace: Pace, out: Out, ray: str = "simulator") -> Iterator[Bed]:
    real = ray == "real"
    shutil.rmtree(workdir, ignore_errors=True)  # a fresh etcd, PKI and Gitea every run
    workdir.mkdir(parents=True)
    if real:
        pace = Pace(pace.delays, max(pace.timeout, REAL_RAY_TIMEOUT))
        out.step(
            "Starting the local test bed (kube-apiserver + etcd, the KubeRay operator with "
            "real Ray heads, Gitea)"
        )
    else:
        out.step("Starting the local test bed (kube-apiserver + etcd, KubeRay simulator, Gitea)")
    with contextlib.ExitStack() as stack:
        plane = stack.enter_context(ControlPlane(workdir=workdir / "cluster", verbose=False))
        api = stack.enter_context(plane.api_client())
        core = client.CoreV1Api(api)
        for name in [*example_namespaces(), STATE_NAMESPACE]:
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        assert plane.binaries is not None
        simulator, real_ray_bed = None, None
        if real:
            real_ray_bed = stack.enter_context(
                real_ray(
                    stack.enter_context(plane.api_client()),
                    plane.binaries,
                    plane.kubeconfig,
                    example_namespaces(),
                    workdir,
                )
            )
        else:
            sim_api = stack.enter_context(plane.api_client())
            simulator = Simulator(sim_api, pace.delays)
            simulator.add_rule(FailureRule(import_path=BROKEN_IMPORT, message=BROKEN_MESSAGE))
            stack.enter_context(simulator)
        gitea = stack.enter_context(Gitea(plane.binaries, workdir / "gitea"))
        port = free_port()
        work = workdir / REPOSITORY
        left_out = seed_repository(gitea, work, real=real)
        config = write_agent_config(workdir, gitea, port, "10m" if real else "2m")
        bed = Bed(out, pace, workdir, plane, api, simulator, gitea, work, config, port)
        bed.ray = real_ray_bed
        add_webhook(gitea, bed.owner_repo, port, workdir / "secrets" / "webhook-secret")
        bed.record_pids()
        out.note(f"kube-apiserver {plane.binaries.kube_version} at {plane.api_url}")
        out.note(f"KubeRay CRDs from ray-operator {plane.binaries.kuberay_version}")
        if real:
            out.note(
                f"the KubeRay operator {plane.binaries.kuberay_version}; a real Ray "
                f"{plane.binaries.ray_version} head (ray start --head) for every head pod it "
                "creates; a kube-proxy stand-in for each <service>-serve-svc"
            )
            out.note(
                "the repository is examples/plain-layout/ made runnable on real Ray here: "
                "import paths under testbed.serve_apps.demo, no remote working_dir, 0.1 CPU "
                "and one replica per deployment"
            )
            out.note(
                f"left out: {', '.join(left_out)} (the summarizer asks Serve for a GPU; "
                "there is none)"
            )
        out.note(f"Gitea at {gitea.url}/{bed.owner_repo} (push and pull-request webhook)")
        out.note(f"namespaces {', '.join(example_namespaces())}")
        try:
            yield bed
        finally:
            if bed.agent is not None:
                bed.agent.stop(timeout=30)
