"""Crash safety: ``gitsync run`` SIGKILLed at seeded random points of a two-environment,
two-wave rollout (staging: embedder, then ranker and summarizer; production ``after:
[staging]``, the same), then started again as a fresh process, which must finish the job.

Each trial pushes a commit that changes every service in both environments — a good one, or
one whose staging ranker fails to deploy — and kills the agent at a seeded delay: before it
applies anything, or after the first apply (between applies of a wave, while it waits on
health, between environments, while it writes its state ConfigMap…). Some trials push a
newer commit while the agent is dead. Over the whole run, from a watch of every RayService
(ordered by resourceVersion, so by etcd's write order):

- no service ever goes back to an older revision;
- no service is applied at a revision before every service ahead of it — the earlier waves
  of its environment, and all of staging for production — was Healthy at that revision;
- each trial ends with every service at the newest commit and Healthy (a failing commit:
  staging at it, production untouched), and the commit's statuses (git notes, the default
  provider) final and right: success, or failure for the failing commit and production
  blocked; a commit superseded while the agent was dead is left with no pending status.

``GITSYNC_CRASH_TRIALS`` (20) and ``GITSYNC_CRASH_SEED`` (1) set the trials and their seed.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from gitsync.model import Health
from gitsync.report.gitnotes import decode
from testbed.controlplane import ControlPlane, free_port
from testbed.simulator import Delays, FailureRule, Simulator
from tests.conftest import fresh_namespace
from tests.integration.gitops import GitOpsRepo, git
from tests.reliability.cluster import Recorder, Seen, agent_process
from tests.reliability.conftest import Figures, spread

# Timing- or memory-sensitive: `make test` runs it alone, after the parallel phase.
pytestmark = pytest.mark.serial

TRIALS = int(os.environ.get("GITSYNC_CRASH_TRIALS", "20"))
SEED = int(os.environ.get("GITSYNC_CRASH_SEED", "1"))
SERVICES = ("embedder", "ranker", "summarizer")
WAVES = {"embedder": 0, "ranker": 1, "summarizer": 1}
ENVIRONMENTS = ("staging", "production")
BROKEN = "ranker.broken:app"  # the simulator fails this import path (a commit meant to fail)
DONE_TIMEOUT = 180.0
FINAL = {"success", "failure", "error"}


@dataclass
class Trial:
    number: int
    seed: int
    failing: bool
    newer: bool
    early: bool
    delay: float = 0.0
    revisions: list[str] = field(default_factory=list)  # pushed, oldest first
    stage: str = ""
    killed_at: str = ""
    recovery: float = 0.0
    problems: list[str] = field(default_factory=list)
    lost: int = 0


@pytest.fixture
def production(api: client.ApiClient) -> Iterator[str]:
    with fresh_namespace(api, "p") as name:
        yield name


class Repo:
    """The example layout in two environments; every commit changes all six services."""

    def __init__(self, root: Path, staging: str, production: str) -> None:
        self.git = GitOpsRepo(root, staging, production=production)
        self.base = {
            (env, name): (self.file(env, name)).read_text()
            for env in ENVIRONMENTS
            for name in SERVICES
        }
        self.builds = 0

    def file(self, env: str, name: str) -> Path:
        return self.git.work / "environments" / env / f"{name}.yaml"

    def commit(self, *, failing: bool) -> str:
        self.builds += 1
        build = self.builds

        def change(root: Path) -> None:
            for (env, name), base in self.base.items():
                text = re.sub(
                    r'working_dir: "[^"]*"',
                    f'working_dir: "https://example.com/artifacts/{name}-build-{build}.zip"',
                    base,
                    count=1,
                )
                if failing and env == "staging" and name == "ranker":
                    text = text.replace("import_path: ranker.serve:app", f"import_path: {BROKEN}")
                self.file(env, name).write_text(text)

        return self.git.commit(change, f"build {build}{' (broken ranker)' if failing else ''}")

    def statuses(self, sha: str) -> dict[str, str]:
        """Context → the latest state the commit's git note records."""
        try:
            note = git(
                "--git-dir", str(self.git.bare), "notes", "--ref=gitsync", "show", sha,
                cwd=self.git.work,
            )  # fmt: skip
        except AssertionError:
            return {}
        return {r.status.context: str(r.status.state) for r in decode(note)}


Before = dict[tuple[str, str], Seen]


def began(recorder: Recorder, sha: str) -> bool:
    """The rollout of ``sha`` began: some service carries it (the first apply)."""
    return any(s.revision == sha for s in recorder.latest().values())


def first_pass_done(port: int, failing: bool) -> bool:
    """The agent finished a rollout of staging (and, unless it fails, of production)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return False
    done = {
        env
        for env in ENVIRONMENTS
        for line in text.splitlines()
        if line.startswith(f'gitsync_sync_total{{environment="{env}"')
        and 'result="error"' not in line  # a pass that errored did not finish the rollout
        and float(line.rsplit(" ", 1)[1]) > 0
    }
    return "staging" in done and (failing or "production" in done)


def state(api: client.ApiClient, namespace: str, env: str) -> dict[str, str]:
    try:
        found = client.CoreV1Api(api).read_namespaced_config_map(
            f"gitsync-rollout-{env}", namespace
        )
    except client.ApiException:
        return {}
    return dict(found.data or {})


def position(namespaces: dict[str, str], s: Seen) -> tuple[int, int]:
    env = next(e for e, ns in namespaces.items() if ns == s.namespace)
    return ENVIRONMENTS.index(env), WAVES[s.name]


def order_violations(history: list[Seen], namespaces: dict[str, str]) -> list[tuple[str, str]]:
    """(revision, what) for each apply made before a service ahead of it was Healthy at its
    revision (each object's first version at a revision is its apply)."""
    latest: dict[tuple[str, str], Seen] = {}
    found = []
    for s in history:
        key = (s.namespace, s.name)
        before = latest.get(key)
        if s.revision and (before is None or before.revision != s.revision):
            mine = position(namespaces, s)
            for other_key, other in latest.items():
                if other_key == key or position(namespaces, other) >= mine:
                    continue  # the same wave, or after it
                if other.revision != s.revision or other.health is not Health.HEALTHY:
                    found.append(
                        (
                            s.revision,
                            f"{s.namespace}/{s.name} applied at {s.revision[:8]} while "
                            f"{other.namespace}/{other.name} was {other.health} at "
                            f"{other.revision[:8]}",
                        )
                    )
        latest[key] = s
    return found


def regressions(history: list[Seen], order: list[str]) -> list[tuple[str, str]]:
    """(revision, what) for every service that went back to an older revision."""
    rank = {sha: i for i, sha in enumerate(order)}
    latest: dict[tuple[str, str], Seen] = {}
    found = []
    for s in history:
        key = (s.namespace, s.name)
        before = latest.get(key)
        if before is not None and rank.get(s.revision, -1) < rank.get(before.revision, -1):
            found.append(
                (
                    before.revision,
                    f"{s.namespace}/{s.name} went from {before.revision[:8]} to {s.revision[:8]}",
                )
            )
        latest[key] = s
    return found


def killed_at(
    api: client.ApiClient, recorder: Recorder, namespaces: dict[str, str], sha: str
) -> tuple[str, str]:
    """Where the kill landed — a stage, and what the cluster and the state ConfigMaps showed
    (per environment: services applied at the commit, how many of them Healthy, the state)."""
    latest = recorder.latest()
    parts, stages = [], []
    for env, ns in namespaces.items():
        at = [
            latest[(ns, n)]
            for n in SERVICES
            if (ns, n) in latest and latest[(ns, n)].revision == sha
        ]
        healthy = [s for s in at if s.health is Health.HEALTHY]
        data = state(api, namespaces["staging"], env)  # the state namespace
        mine = data.get("revision") == sha
        phase = data.get("phase", "none") if mine else "older"
        wave = f" {data['wave']}" if mine and data.get("wave") else ""
        parts.append(f"{env} {len(at)}/{len(healthy)} {phase}{wave}")
        if mine and phase == "in-progress":
            stages.append(f"{env} wave{wave or ' not yet written'}")
        elif mine and phase == "failed":
            stages.append(f"{env} failed")
        elif mine and phase == "succeeded":
            stages.append(f"{env} done")
    stage = stages[-1] if stages else "before the first state write"
    if stage == "staging done":
        stage = "between the environments"
    elif stage == "production done":
        stage = "after the rollout"
    return stage, ", ".join(parts)


def report(figures: Figures, trials: list[Trial]) -> list[Trial]:
    """The trials' figures; the trials that failed."""
    for trial in trials:
        figures.add(
            "crash-safety",
            {
                "trial": trial.number,
                "commit": "fails" if trial.failing else "good",
                "kill": f"{'after push' if trial.early else 'after first apply'} "
                f"+{trial.delay:.1f}s",
                "where it landed": trial.stage,
                "applied/Healthy, state": trial.killed_at,
                "newer commit while dead": "yes" if trial.newer else "",
                "recovery s": round(trial.recovery, 1),
                "problems": "; ".join(trial.problems),
            },
        )
    failed = [t for t in trials if t.problems]
    for stage in sorted({t.stage for t in trials}):
        landed = [t for t in trials if t.stage == stage]
        figures.add(
            "crash-safety-stages",
            {
                "where the kill landed": stage,
                "trials": len(landed),
                "of them with a newer commit while dead": sum(t.newer for t in landed),
                "failures": sum(bool(t.problems) for t in landed),
                "recovery s": spread([t.recovery for t in landed]),
            },
        )
    figures.summary(
        "agent SIGKILLed mid-rollout (2 environments, 2 waves each)",
        trials=len(trials),
        failures=len(failed),
        data_lost=sum(t.lost for t in trials),
        recovery_s=spread([t.recovery for t in trials]),
    )
    return failed


@pytest.mark.timeout(2400)  # a hang guard: 20 trials of a rollout and a restart each
def test_sigkill_at_random_points_of_a_multi_wave_rollout(
    api: client.ApiClient,
    control_plane: ControlPlane,
    sim: Simulator,
    namespace: str,
    production: str,
    tmp_path: Path,
    figures: Figures,
) -> None:
    # Short steps: a trial is a rollout of four waves; healthySeconds > the requeue.
    sim.delays = Delays(cluster_start=0.2, app_deploy=0.3, tick=0.05, requeue=0.5)
    sim.add_rule(FailureRule(import_path=BROKEN, namespace=namespace, message="broken build"))
    namespaces = {"staging": namespace, "production": production}
    repo = Repo(tmp_path / "gitops", namespace, production)
    config: dict[str, Any] = {
        "repository": {"url": repo.git.url, "branch": "main"},
        "cacheDir": str(tmp_path / "cache"),  # one disk, as a restarted pod would find it
        "intervals": {"poll": "1s"},
        "leaderElection": {"enabled": False},
        "rollout": {
            "healthyReads": 2,
            "healthySeconds": "800ms",
            "pollInterval": "100ms",
            "healthTimeout": "60s",
            "stateNamespace": namespace,
        },
    }
    processes: list[subprocess.Popen[bytes]] = []

    def start(name: str) -> tuple[subprocess.Popen[bytes], int]:
        port = free_port()
        document = {**config, "listen": f"127.0.0.1:{port}"}
        process = agent_process(document, control_plane.kubeconfig, tmp_path, name)
        processes.append(process)
        return process, port

    rng = random.Random(SEED)  # noqa: S311 - seeded on purpose
    trials: list[Trial] = []
    pushed: list[str] = [repo.git.revisions[-1]]
    with Recorder(api, set(namespaces.values())) as recorder:

        def settled(sha: str, failing: bool, before: Before) -> bool:
            want = {"gitsync/staging": "failure" if failing else "success",
                    "gitsync/production": "failure" if failing else "success"}  # fmt: skip
            if repo.statuses(sha) != want:
                return False
            latest = recorder.latest()
            for env, ns in namespaces.items():
                for name in SERVICES:
                    s = latest.get((ns, name))
                    if failing and env == "production":
                        old = before.get((ns, name))
                        if s is None or old is None or s.revision != old.revision:
                            return False
                        continue
                    if s is None or s.revision != sha:
                        return False
                    healthy = s.health is Health.HEALTHY
                    if healthy == (failing and env == "staging" and name == "ranker"):
                        return False
            return True

        def settle(what: str, sha: str, failing: bool, before: Before, port: int) -> bool:
            """Waits until the agent's first pass is over and the trial's end state shows."""
            deadline = time.monotonic() + DONE_TIMEOUT
            while not (first_pass_done(port, failing) and settled(sha, failing, before)):
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.05)
            return True

        agent, port = start("agent-0")
        assert settle("the first rollout", pushed[0], False, {}, port), "the first rollout"
        # A trial without a kill: how long a rollout takes here, which the kills spread over.
        sha = repo.commit(failing=False)
        pushed.append(sha)
        recorder.wait("the rollout to begin", lambda: began(recorder, sha), DONE_TIMEOUT)
        began_at = time.monotonic()
        assert settle("the measured rollout", sha, False, recorder.latest(), port)
        duration = time.monotonic() - began_at
        for number in range(1, TRIALS + 1):
            trial = Trial(
                number,
                rng.randrange(1 << 30),
                failing=number % 5 == 3,
                newer=number % 3 == 1,
                early=number % 6 == 0,
            )
            trials.append(trial)
            trng = random.Random(trial.seed)  # noqa: S311
            before = recorder.latest()
            sha = repo.commit(failing=trial.failing)
            trial.revisions.append(sha)
            pushed.append(sha)
            if trial.early:  # anywhere from the poll to the first apply
                trial.delay = trng.uniform(0.0, 2.0)
            else:
                recorder.wait("the rollout to begin", lambda sha=sha: began(recorder, sha), 120)
                trial.delay = trng.uniform(0.0, duration)
            time.sleep(trial.delay)
            agent.send_signal(signal.SIGKILL)
            agent.wait(10)
            trial.stage, trial.killed_at = killed_at(api, recorder, namespaces, sha)
            failing = trial.failing
            if trial.newer:
                sha = repo.commit(failing=False)
                trial.revisions.append(sha)
                pushed.append(sha)
                failing = False
            restarted = time.monotonic()
            agent, port = start(f"agent-{number}")
            if not settle(f"trial {number}", sha, failing, before, port):
                trial.problems.append(f"did not settle at {sha[:8]} in {DONE_TIMEOUT:.0f}s")
            trial.recovery = time.monotonic() - restarted
        agent.send_signal(signal.SIGTERM)  # flushes its statuses
        assert agent.wait(30) == 0
        history = recorder.ordered()

    # The statuses as the agents left them (the last one flushed its own at SIGTERM).
    for trial in trials:
        final, *older = reversed(trial.revisions)
        failing = trial.failing and not trial.newer
        want = {f"gitsync/{env}": "failure" if failing else "success" for env in ENVIRONMENTS}
        if (got := repo.statuses(final)) != want:
            trial.problems.append(f"{final[:8]}: statuses {got}, expected {want}")
            trial.lost += 1
        for sha in older:
            pending = {c: s for c, s in repo.statuses(sha).items() if s not in FINAL}
            if pending:
                trial.problems.append(f"{sha[:8]} superseded while the agent was dead: {pending}")
                trial.lost += 1
    trial_of = {sha: t for t in trials for sha in t.revisions}
    for sha, what in order_violations(history, namespaces):
        if sha in trial_of:
            trial_of[sha].problems.append(what)
    for sha, what in regressions(history, pushed):
        if sha in trial_of:
            trial_of[sha].problems.append(what)
            trial_of[sha].lost += 1
    failed = report(figures, trials)
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert not failed, [(t.number, t.killed_at, t.problems) for t in failed]


def test_the_checks_see_an_early_apply_and_a_step_back() -> None:
    """The watch's verdicts themselves (no test bed): the ranker applied while the embedder
    still deploys, production while staging is not Healthy, a service going back."""
    spaces = {"staging": "s", "production": "p"}
    ok, starting = Health.HEALTHY, Health.PROGRESSING

    def at(rv: int, ns: str, name: str, sha: str, health: Health) -> Seen:
        return Seen(rv, 0.0, ns, name, sha, 1, health)

    history = [
        at(1, "s", "embedder", "a", ok),
        at(2, "s", "ranker", "a", ok),
        at(3, "s", "summarizer", "a", ok),
        at(4, "s", "embedder", "b", starting),
        at(5, "s", "ranker", "b", starting),  # early: the embedder is still starting
        at(6, "s", "embedder", "b", ok),
        at(7, "s", "summarizer", "b", ok),  # in order
        at(8, "p", "embedder", "b", starting),  # early: the staging ranker is not Healthy
        at(9, "s", "ranker", "a", ok),  # back
    ]
    early = order_violations(history, spaces)
    # (the step back is an apply too: at "a", while the embedder is at "b")
    assert [what.split(" applied")[0] for _, what in early] == [
        "s/ranker",
        "p/embedder",
        "s/ranker",
    ]
    assert regressions(history, ["a", "b"]) == [("b", "s/ranker went from b to a")]
