"""``gitsync suspend``/``resume`` and ``pin``/``unpin`` end to end: the repository on a real
Gitea, `gitsync sync --once` against the test bed's API server and simulator, the holds
written by the CLI into the state ConfigMap and read back by every pass, drift check and
`gitsync status`; commit statuses read back through Gitea's API."""

from __future__ import annotations

import datetime
import json
import re
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from gitsync.cli import _agent_config, main
from gitsync.kube.rayservices import RayServicesClient
from gitsync.kube.state import StateStore
from gitsync.model import Outcome
from gitsync.names import REVISION
from gitsync.report.factory import build_reporter
from gitsync.sync import PassResult, sync_once
from testbed.controlplane import ControlPlane, free_port
from testbed.gitea import Gitea
from testbed.simulator import Simulator

from .gitops import GitOpsRepo
from .kube import get
from .test_agent import agent_config_file, scrape, start_agent, wait_for
from .test_commit_status import agent_file, forge_repo, statuses, sync, versions
from .test_drift import checker, edit_serve_config

__all__ = ["forge_repo"]  # the fixture, shared with test_commit_status


def scale(repo: GitOpsRepo, replicas: int) -> str:
    """A commit scaling the ranker's first deployment to ``replicas``."""
    text = repo.path("ranker.yaml").read_text()
    old = re.search(r"num_replicas: \d+", text)
    assert old is not None
    return repo.commit(
        lambda root: repo.edit("ranker.yaml", old.group(0), f"num_replicas: {replicas}"),
        f"ranker: {replicas} replicas",
    )


def agent(repo: GitOpsRepo, gitea: Gitea, tmp_path: Path) -> Path:
    """An agent config reporting to Gitea; a hand edit the drift check finds is overwritten
    by the next rollout (rollout.forceConflicts), as after an incident."""
    rollout = {
        "healthyReads": 2, "healthySeconds": "1500ms", "pollInterval": "100ms",
        "healthTimeout": "30s", "stateNamespace": repo.namespace, "forceConflicts": True,
    }  # fmt: skip
    return agent_file(repo, gitea, tmp_path, extra={"rollout": rollout})


def applied(api: client.ApiClient, namespace: str) -> str:
    return str(get(api, namespace, "ranker")["metadata"]["annotations"][REVISION])


def test_suspend_applies_nothing_heals_nothing_until_resume(
    api: client.ApiClient,
    gitea: Gitea,
    forge_repo: GitOpsRepo,
    sim: Simulator,
    control_plane: ControlPlane,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = agent(forge_repo, gitea, tmp_path)
    kube = ["--config", str(config), "--kubeconfig", str(control_plane.kubeconfig)]
    assert sync(control_plane, config) == 0
    first = forge_repo.revisions[-1]
    assert main(["suspend", "staging", *kube, "--reason", "incident 42"]) == 0
    out = capsys.readouterr().out
    assert "staging: suspended by " in out
    assert "(incident 42)" in out
    # A new commit: nothing applied, the commit's status pending and saying why.
    head = scale(forge_repo, 2)
    before = versions(api, forge_repo.namespace)
    assert sync(control_plane, config) == 0  # held is not a failure
    out = capsys.readouterr().out
    assert f"staging: held at {head[:12]}: suspended by " in out
    assert versions(api, forge_repo.namespace) == before
    [status] = statuses(gitea, forge_repo, head)
    assert status["status"] == "pending"
    assert status["description"].startswith("not rolled out: staging is suspended by ")
    assert status["description"].endswith("(incident 42); rolls out after gitsync resume")
    # Drift is still found and reported, never healed while suspended.
    edit_serve_config(api, forge_repo.namespace, "ranker", "kubectl-edit")
    drift = checker(api, forge_repo, tmp_path)
    [report] = drift.check(heal=True)
    assert [d.key.name for d in report.drifts] == ["ranker"]
    assert report.healed is None
    assert report.held.startswith("suspended by ")
    # `gitsync status` shows it; an environment suspended is not settled (exit 1).
    assert main(["status", *kube]) == 1
    out = capsys.readouterr().out
    assert "  SUSPENDED by " in out, out
    # Resumed: the next pass rolls out the head, and the status says Healthy.
    assert main(["resume", "staging", *kube]) == 0
    assert "staging: not held" in capsys.readouterr().out
    assert sync(control_plane, config) == 0
    assert applied(api, forge_repo.namespace) == head != first
    assert statuses(gitea, forge_repo, head)[-1]["status"] == "success"


def test_pin_rolls_back_and_holds_until_unpin(
    api: client.ApiClient,
    gitea: Gitea,
    forge_repo: GitOpsRepo,
    sim: Simulator,
    control_plane: ControlPlane,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = agent(forge_repo, gitea, tmp_path)
    kube = ["--config", str(config), "--kubeconfig", str(control_plane.kubeconfig)]
    good = forge_repo.revisions[-1]
    assert sync(control_plane, config) == 0
    bad = scale(forge_repo, 2)
    assert sync(control_plane, config) == 0
    assert applied(api, forge_repo.namespace) == bad
    # Not a commit of the branch: refused, nothing recorded.
    assert main(["pin", "staging", "0123456789abcdef", *kube]) == 2
    assert "is not a commit of branch 'main'" in capsys.readouterr().err
    assert StateStore(api, forge_repo.namespace).hold("staging").pinned == ""
    # An abbreviated SHA of an earlier commit: pinned to its full SHA, rolled back to it.
    assert main(["pin", "staging", good[:10], *kube, "--reason", "ranker OOM"]) == 0
    assert f"pinned to {good[:12]} by " in capsys.readouterr().out
    assert sync(control_plane, config) == 0
    assert applied(api, forge_repo.namespace) == good
    assert statuses(gitea, forge_repo, good)[-1]["status"] == "success"
    # A newer head is held back, its status says the environment is pinned.
    newer = scale(forge_repo, 3)
    assert sync(control_plane, config) == 0
    assert applied(api, forge_repo.namespace) == good
    [status] = statuses(gitea, forge_repo, newer)
    assert status["status"] == "pending"
    assert status["description"].startswith(f"not rolled out: staging is pinned to {good[:12]}")
    assert main(["status", *kube]) == 1
    assert f"PINNED to {good[:12]}" in capsys.readouterr().out
    # Self-heal heals toward the pin, not the head.
    edit_serve_config(api, forge_repo.namespace, "ranker", "kubectl-edit")
    [report] = checker(api, forge_repo, tmp_path).check(heal=False)
    assert report.revision == good
    assert not report.held
    # Unpinned: the head rolls out.
    assert main(["unpin", "staging", *kube]) == 0
    assert sync(control_plane, config) == 0
    assert applied(api, forge_repo.namespace) == newer
    assert statuses(gitea, forge_repo, newer)[-1]["status"] == "success"


def overview(port: int) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/api/v1/environments"
    with urllib.request.urlopen(url, timeout=5) as response:
        return dict(json.loads(response.read()))


def test_the_agent_acts_on_a_hold_at_its_next_poll_without_a_new_commit(
    api: client.ApiClient,
    control_plane: ControlPlane,
    sim: Simulator,
    namespace: str,
    tmp_path: Path,
) -> None:
    """`gitsync run`: a suspension shows on /metrics and the status page; the commit that
    arrived while suspended rolls out at the poll after `gitsync resume`, no push needed."""
    repo = GitOpsRepo(tmp_path / "gitops", namespace)
    port = free_port()
    config = agent_config_file(repo, tmp_path, "solo", port, namespace)
    cli = ["--config", str(config), "--kubeconfig", str(control_plane.kubeconfig)]
    process = start_agent(config, control_plane.kubeconfig, "solo", tmp_path / "solo.log")
    try:
        first = repo.revisions[-1]
        wait_for(lambda: applied_or_none(api, namespace) == first, what="the first rollout")
        assert main(["suspend", "staging", *cli, "--reason", "incident"]) == 0
        suspended = 'gitsync_environment_suspended{environment="staging"} 1.0'
        wait_for(lambda: suspended in scrape(port), timeout=30, what="the suspended gauge")
        [env] = overview(port)["environments"]
        assert env["hold"].startswith("suspended by ")
        assert env["hold"].endswith("(incident)")
        head = scale(repo, 2)
        wait_for(
            lambda: f"{head[:12]} not rolled out" in (tmp_path / "solo.log").read_text(),
            timeout=30,
            what="the held pass",
        )
        assert applied_or_none(api, namespace) == first
        assert main(["resume", "staging", *cli]) == 0
        wait_for(lambda: applied_or_none(api, namespace) == head, what="the rollout on resume")
        unsuspended = 'gitsync_environment_suspended{environment="staging"} 0.0'
        assert unsuspended in scrape(port)
        assert overview(port)["environments"][0]["hold"] == ""
    finally:
        process.terminate()
        process.wait(30)


def applied_or_none(api: client.ApiClient, namespace: str) -> str | None:
    try:
        return applied(api, namespace)
    except client.ApiException:
        return None


def test_environments_after_a_suspended_one_wait_with_it(
    api: client.ApiClient,
    gitea: Gitea,
    sim: Simulator,
    control_plane: ControlPlane,
    namespace: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Suspended before its first rollout: staging gets nothing, production (after staging)
    waits with it — pending, not failed — and both roll out once staging is resumed."""
    production = f"p-{uuid.uuid4().hex[:10]}"
    repo = GitOpsRepo(
        tmp_path / "gitops", namespace, production=production, create_namespace=True,
        origin=gitea.create_repo(f"held-{uuid.uuid4().hex[:8]}"),
        push_args=gitea.git_auth_config(),
    )  # fmt: skip
    config = agent(repo, gitea, tmp_path)
    kube = ["--config", str(config), "--kubeconfig", str(control_plane.kubeconfig)]
    assert main(["suspend", "staging", *kube]) == 0
    assert sync(control_plane, config) == 0
    sha = repo.revisions[-1]
    seen = {s["context"]: s for s in statuses(gitea, repo, sha)}
    assert {c: s["status"] for c, s in seen.items()} == dict.fromkeys(
        ("gitsync/staging", "gitsync/production"), "pending"
    )
    assert seen["gitsync/production"]["description"].startswith(
        "not rolled out: waiting for staging, which is suspended by "
    )
    assert versions(api, namespace) == versions(api, production) == {}
    assert main(["resume", "staging", *kube]) == 0
    capsys.readouterr()
    assert sync(control_plane, config) == 0
    assert set(versions(api, production)) == {"embedder", "ranker", "summarizer"}
    assert statuses(gitea, repo, sha)[-1]["status"] == "success"


def with_windows(repo: GitOpsRepo, windows: list[dict[str, str]]) -> str:
    def change(root: Path) -> None:
        config = yaml.safe_load((root / "gitsync.yaml").read_text())
        config["environments"][0]["windows"] = windows
        (root / "gitsync.yaml").write_text(yaml.safe_dump(config))

    return repo.commit(change, "change windows")


def test_a_commit_outside_its_change_window_waits_then_rolls_out_or_is_let_through(
    api: client.ApiClient,
    gitea: Gitea,
    forge_repo: GitOpsRepo,
    sim: Simulator,
    control_plane: ControlPlane,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The pass's clock is injected: Friday 17:00 UTC is inside `deny 0 16 * * 5 for 64h`,
    Monday 09:00 is not. Outside the window the commit's status is pending and says when it
    rolls out; `gitsync open-window` lets it through at once."""
    config_path = agent(forge_repo, gitea, tmp_path)
    kube = ["--config", str(config_path), "--kubeconfig", str(control_plane.kubeconfig)]
    assert sync(control_plane, config_path) == 0
    with_windows(forge_repo, [{"kind": "deny", "schedule": "0 16 * * 5", "duration": "64h"}])
    friday = datetime.datetime(2026, 12, 4, 17, 0, tzinfo=datetime.UTC)
    monday = datetime.datetime(2026, 12, 7, 9, 0, tzinfo=datetime.UTC)
    config = _agent_config(config_path)

    def run(now: datetime.datetime) -> PassResult:
        reporter = build_reporter(config)
        try:
            return sync_once(
                config, RayServicesClient(api), StateStore(api, forge_repo.namespace),
                reporter=reporter, clock=lambda: now,
            )  # fmt: skip
        finally:
            assert reporter is not None
            reporter.close(timeout=30)

    head = scale(forge_repo, 2)
    before = versions(api, forge_repo.namespace)
    held = run(friday)
    assert held.waiting
    [result] = held.results
    assert result.outcome is Outcome.HELD
    assert versions(api, forge_repo.namespace) == before
    drift = checker(api, forge_repo, tmp_path)
    drift.clock = friday.timestamp  # self-heal waits for the window too
    edit_serve_config(api, forge_repo.namespace, "embedder", "kubectl-edit")
    [report] = drift.check(heal=True)
    assert report.held.startswith("outside its change window (deny window deny 0 16 * * 5")
    [status] = statuses(gitea, forge_repo, head)
    assert status["status"] == "pending"
    assert status["description"] == (
        "waiting for its change window: rolls out at 2026-12-07 08:00 UTC "
        "(deny window deny 0 16 * * 5 for 64h UTC)"
    )
    # Monday 09:00: open, the waiting commit rolls out.
    assert run(monday).ok
    assert applied(api, forge_repo.namespace) == head
    # An emergency on a Friday: the override lets the next commit through at once.
    fix = scale(forge_repo, 3)
    assert run(friday).waiting
    assert main(["open-window", "staging", *kube, "--for", "1h", "--reason", "hotfix"]) == 0
    assert "change windows set aside until " in capsys.readouterr().out
    main(["status", *kube])
    assert "  change windows set aside until " in capsys.readouterr().out
    assert run(datetime.datetime.now(datetime.UTC)).ok  # the override's expiry is real time
    assert applied(api, forge_repo.namespace) == fix
