"""Commit statuses end to end on a real Gitea: the repository lives there, `gitsync sync
--once` rolls it out on the test bed and posts `gitsync/<environment>` on the commit. Read
back through Gitea's API (each status calls its state `status`; the request said `state`)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from gitsync.cli import main
from gitsync.config import StatusConfig
from gitsync.errors import ForgeError, InvalidRevision
from gitsync.kube.rayservices import RayServicesClient
from gitsync.kube.state import StateStore
from gitsync.progress import Lines
from gitsync.report.factory import build_reporter
from gitsync.report.gitea import GiteaProvider, gitea_headers
from gitsync.report.http import JsonClient
from gitsync.report.reporter import Reporter
from gitsync.report.status import CommitStatus, State
from gitsync.source.config import TokenAuth
from gitsync.sync import sync_once
from testbed.binaries import Binaries
from testbed.controlplane import ControlPlane, free_port
from testbed.gitea import Gitea
from testbed.simulator import FailureRule, Simulator
from tests.conftest import fresh_namespace
from tests.report.forge import hanging_forge

from .gitops import GitOpsRepo, edit
from .kube import GROUP, PLURAL, VERSION


@pytest.fixture
def forge_repo(gitea: Gitea, tmp_path: Path, namespace: str) -> GitOpsRepo:
    name = f"ray-{uuid.uuid4().hex[:8]}"
    url = gitea.create_repo(name)
    return GitOpsRepo(tmp_path / "gitops", namespace, origin=url, push_args=gitea.git_auth_config())


def agent_file(
    repo: GitOpsRepo,
    gitea: Gitea,
    tmp_path: Path,
    *,
    token: str | None = None,
    name: str = "agent",
    extra: Mapping[str, Any] | None = None,
    **status: Any,
) -> Path:
    """An agent config file; ``token``: the Gitea token (default: the test bed's)."""
    token_file = tmp_path / f"{name}-gitea-token"
    token_file.write_text(token or gitea.token)
    document = {
        "repository": {"url": repo.url, "branch": "main", "auth": {"tokenFile": str(token_file)}},
        "cacheDir": str(tmp_path / f"{name}-cache"),
        "status": {"provider": "gitea", "tokenFile": str(token_file), **status},
        "rollout": {
            "healthyReads": 2,
            "healthySeconds": "1500ms",
            "pollInterval": "100ms",
            "healthTimeout": "30s",
            "stateNamespace": repo.namespace,
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**document, **(extra or {})}))
    return path


def statuses(gitea: Gitea, repo: GitOpsRepo, sha: str) -> list[dict[str, Any]]:
    """Every status ever set on ``sha``, oldest first."""
    path = repo.url.removeprefix(gitea.url).removesuffix(".git")
    listed = gitea.api("GET", f"/repos{path}/statuses/{sha}?limit=50")
    return sorted(listed, key=lambda s: s["id"])


def versions(api: client.ApiClient, namespace: str) -> dict[str, str]:
    """Every RayService's resourceVersion: unchanged when nothing was applied."""
    custom = client.CustomObjectsApi(api)
    items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    return {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in items}


def sync(control_plane: ControlPlane, config: Path) -> int:
    return main(
        ["sync", "--once", "--config", str(config), "--kubeconfig", str(control_plane.kubeconfig)]
    )


def test_a_rollout_shows_pending_then_success(
    gitea: Gitea,
    forge_repo: GitOpsRepo,
    sim: Simulator,
    control_plane: ControlPlane,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = agent_file(
        forge_repo, gitea, tmp_path, targetUrl="https://dash.example.com/{environment}/{short}"
    )
    sha = forge_repo.revisions[-1]
    assert sync(control_plane, config) == 0
    seen = statuses(gitea, forge_repo, sha)
    assert {s["context"] for s in seen} == {"gitsync/staging"}
    asked = [
        ("pending", "applying wave 1/2: embedder create"),
        ("pending", "waiting for wave 1/2 to be Healthy: embedder"),
        ("pending", "applying wave 2/2: ranker create, summarizer create"),
        ("pending", "waiting for wave 2/2 to be Healthy: ranker, summarizer"),
        ("success", f"Healthy at {sha[:12]}: 3 service(s), every app RUNNING"),
    ]
    # The reporter posts the first at once and the last always; one that a newer status
    # replaces while an earlier post is still in flight is never posted (a slow forge sees
    # fewer), so the forge shows these in order, some perhaps left out.
    shown = [(s["status"], s["description"]) for s in seen]
    assert (shown[0], shown[-1]) == (asked[0], asked[-1]), shown
    assert shown == [status for status in asked if status in shown], shown
    assert seen[-1]["target_url"] == f"https://dash.example.com/staging/{sha[:12]}"
    assert all("state" not in s for s in seen)  # Gitea's field is `status`
    # A second pass at the same commit is up to date: nothing new is posted.
    capsys.readouterr()
    assert sync(control_plane, config) == 0
    assert len(statuses(gitea, forge_repo, sha)) == len(seen)
    # `gitsync status` reads the cluster alone (the statuses above are the forge's record):
    # the rollout it recorded at that commit, settled, so exit 0.
    args = ["--config", str(config), "--kubeconfig", str(control_plane.kubeconfig)]
    assert main(["status", *args]) == 0
    out = capsys.readouterr().out
    assert f"staging: succeeded at {sha[:12]}" in out, out


def test_deploy_failed_shows_failure_naming_the_app(
    gitea: Gitea,
    forge_repo: GitOpsRepo,
    sim: Simulator,
    control_plane: ControlPlane,
    namespace: str,
    tmp_path: Path,
) -> None:
    config = agent_file(forge_repo, gitea, tmp_path)
    assert sync(control_plane, config) == 0
    sim.add_rule(
        FailureRule(
            namespace=namespace,
            import_path="ranker.v2:app",
            message="ModuleNotFoundError: No module named 'ranker.v2'",
        )
    )
    sha = forge_repo.commit(
        lambda root: forge_repo.edit("ranker.yaml", "ranker.serve:app", "ranker.v2:app"), "break"
    )
    assert sync(control_plane, config) == 1
    last = statuses(gitea, forge_repo, sha)[-1]
    assert last["status"] == "failure"
    assert last["description"].startswith("ranker Degraded: app rank is DEPLOY_FAILED")
    assert "No module named 'ranker.v2'" in last["description"]
    assert len(last["description"]) <= 140


def test_an_invalid_manifest_shows_failure_with_file_and_line(
    api: client.ApiClient,
    gitea: Gitea,
    forge_repo: GitOpsRepo,
    sim: Simulator,
    control_plane: ControlPlane,
    namespace: str,
    tmp_path: Path,
) -> None:
    config = agent_file(forge_repo, gitea, tmp_path)
    assert sync(control_plane, config) == 0
    before = versions(api, namespace)
    sha = forge_repo.commit(
        lambda root: forge_repo.edit("summarizer.yaml", "kind: RayService", "kind: RaySrvice"),
        "typo",
    )
    assert sync(control_plane, config) == 2
    last = statuses(gitea, forge_repo, sha)[-1]
    assert last["status"] == "failure"
    assert last["description"].startswith("invalid: environments/staging/summarizer.yaml:")
    line = last["description"].split(":")[2]
    assert line.isdigit()
    assert versions(api, namespace) == before  # nothing was applied


def test_a_failed_render_shows_failure_and_applies_nothing(
    api: client.ApiClient,
    gitea: Gitea,
    sim: Simulator,
    control_plane: ControlPlane,
    binaries: Binaries,
    namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An overlay (examples/repo-layout) whose render fails at a commit: that revision's
    failure, on the forge as in the exit code, at the environment's declaration, with
    kustomize's message (naming the missing file, no path outside the repository), and
    nothing applied."""
    monkeypatch.setenv("GITSYNC_KUSTOMIZE", str(binaries.kubectl))
    repo = GitOpsRepo(
        tmp_path / "gitops",
        namespace,
        origin=gitea.create_repo(f"ray-{uuid.uuid4().hex[:8]}"),
        push_args=gitea.git_auth_config(),
        example=Path(__file__).resolve().parents[2] / "examples" / "repo-layout",
    )
    config = agent_file(repo, gitea, tmp_path)
    assert sync(control_plane, config) == 0
    before = versions(api, namespace)
    assert set(before) == {"embedder", "ranker", "summarizer"}
    sha = repo.commit(
        lambda root: edit(
            root / "overlays/staging/kustomization.yaml",
            "  - ../../base\n",
            "  - ../../base\n  - autoscaler-patch.yaml\n",
        ),
        "a resource that was never added",
    )
    capsys.readouterr()
    assert sync(control_plane, config) == 2
    last = statuses(gitea, repo, sha)[-1]
    assert last["status"] == "failure", last
    assert last["description"].startswith(
        "invalid: gitsync.yaml:2: environment 'staging': kustomize failed: "
    ), last
    printed = capsys.readouterr()
    said = printed.out + printed.err
    assert "lstat overlays/staging/autoscaler-patch.yaml: no such file or directory" in said
    assert str(tmp_path) not in said + last["description"]
    assert versions(api, namespace) == before  # nothing was applied


def test_a_manifest_the_schema_refuses_applies_nothing(
    api: client.ApiClient,
    gitea: Gitea,
    forge_repo: GitOpsRepo,
    sim: Simulator,
    control_plane: ControlPlane,
    namespace: str,
    tmp_path: Path,
) -> None:
    """A manifest the API server refuses though ``validate`` passes it (the CRD's CEL rule on
    ``rayClusterConfig.managedBy``, which validate leaves to the API server) in a wave-1
    service, next to a good change in wave 0: the dry-run apply's 422 is the manifest's
    fault, so the commit gets `failure` naming the service and the complaint at once (not
    `error` after retrying an "unreachable" server), and the good wave-0 change is not
    applied either. (A wrong type, ``replicas: "two"``, no longer gets this far: validate
    refuses it; test_controlplane.py shows the API server's 500 for it.)"""
    config = agent_file(forge_repo, gitea, tmp_path)
    assert sync(control_plane, config) == 0
    before = versions(api, namespace)

    def change(root: Path) -> None:
        forge_repo.edit("embedder.yaml", "num_replicas: 1", "num_replicas: 2")
        forge_repo.edit(
            "summarizer.yaml", "  rayClusterConfig:\n", "  rayClusterConfig:\n    managedBy: me\n"
        )

    sha = forge_repo.commit(change, "managed by someone else")
    started = time.monotonic()
    assert sync(control_plane, config) == 2  # like an invalid manifest
    last = statuses(gitea, forge_repo, sha)[-1]
    assert last["status"] == "failure", last
    assert last["description"].startswith("summarizer: dry-run apply refused (422)"), last
    assert "spec.rayClusterConfig.managedBy" in last["description"], last
    assert versions(api, namespace) == before  # nothing applied, not even wave 0's good change
    # Refused at once: not five retries of an "unreachable" server with backoff.
    assert time.monotonic() - started < 30


def test_an_unreachable_api_server_is_an_error_status(
    tmp_path: Path, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """gitsync itself failing (no API server at the kubeconfig's address) is `error`, told
    apart from a failed rollout; the default provider (git notes) needs no forge."""
    repo = GitOpsRepo(tmp_path / "gitops", namespace)
    config = repo.config_file(tmp_path / "cache", tmp_path / "agent.yaml")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "c", "cluster": {"server": f"http://127.0.0.1:{free_port()}"}}
                ],
                "users": [{"name": "u", "user": {"token": "x"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    code = main(["sync", "--once", "--config", str(config), "--kubeconfig", str(kubeconfig)])
    err = capsys.readouterr().err
    assert code == 2
    assert "the Kubernetes API server is unreachable" in err
    assert "Traceback" not in err
    assert main(["notes", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "gitsync/staging" in out
    assert "error    gitsync error: the Kubernetes API server is unreachable" in out


def test_a_hanging_forge_does_not_hold_up_a_rollout(
    api: client.ApiClient,
    sim: Simulator,
    namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before rolling out a new commit, a restarted agent reads the previous commit's statuses
    (to post a final status a crash lost). A forge that accepts and never answers costs that
    read one short attempt: the rollout goes ahead (with the agent's real client settings,
    it would otherwise wait out every retry, over a minute)."""
    repo = GitOpsRepo(tmp_path / "gitops", namespace)
    config = repo.agent_config(tmp_path / "cache")
    store = StateStore(api, namespace)
    assert sync_once(config, RayServicesClient(api), store).ok  # the previous commit, no statuses
    old = repo.revisions[-1]
    repo.commit(lambda root: repo.edit("ranker.yaml", "num_replicas: 1", "num_replicas: 2"), "2")
    monkeypatch.setenv("STATUS_TOKEN", "s3cr3t-status-token")
    lines: list[tuple[float, str]] = []
    with hanging_forge() as url:
        status = StatusConfig("gitea", url, "o/r", TokenAuth(token_env="STATUS_TOKEN"))
        reporter = build_reporter(replace(config, status=status))
        started: list[float] = []

        class Watching(Lines):
            def started(self, environment: str) -> None:
                started.append(time.monotonic())

        try:
            with caplog.at_level(logging.WARNING, logger="gitsync.sync"):
                result = sync_once(
                    config,
                    RayServicesClient(api),
                    store,
                    reporter=reporter,
                    observer=Watching(lambda line: lines.append((time.monotonic(), line))),
                )
        finally:
            reporter.close(timeout=0.1)
    assert result.ok
    texts = [text for _, text in lines]
    unread = next(i for i, text in enumerate(texts) if "cannot read the statuses of" in text)
    applied = next(i for i, text in enumerate(texts) if ": applied " in text)
    assert unread < applied  # it gave up on the read, then rolled out
    assert lines[applied][0] - started[0] < 30  # generous: the retried read took > 60 s
    [warning] = [r for r in caplog.records if r.name == "gitsync.sync"]
    assert warning.levelno == logging.WARNING
    assert old[:12] in warning.getMessage()
    assert "s3cr3t" not in caplog.text


def test_gitea_statuses_are_read_page_by_page(gitea: Gitea, tmp_path: Path) -> None:
    """More contexts on a commit than Gitea lists in a page (50 at most): the predecessor's
    newest status is found though 60 contexts were set after it."""
    url = gitea.create_repo(f"ray-{uuid.uuid4().hex[:8]}")
    repo = GitOpsRepo(tmp_path / "gitops", "unused", origin=url, push_args=gitea.git_auth_config())
    sha, path = repo.revisions[-1], url.removeprefix(gitea.url).removesuffix(".git")

    def post(context: str, state: str, description: str = "") -> None:
        body = {"context": context, "state": state, "description": description}
        gitea.api("POST", f"/repos{path}/statuses/{sha}", body)

    post("gitsync/staging", "pending", "applying wave 1/1")
    post("gitsync/staging", "success", "Healthy")
    for number in range(60):
        post(f"ci/check-{number}", "success")
    token = tmp_path / "token"
    token.write_text(gitea.token)
    client_ = JsonClient(gitea.url, lambda: gitea_headers(TokenAuth(token_file=token)))
    shown = GiteaProvider(client_, path.strip("/")).statuses(sha)
    assert shown["gitsync/staging"].state is State.SUCCESS
    assert shown["gitsync/staging"].description == "Healthy"
    assert len(shown) == 61


MINIMUM_SCOPE = "write:repository"  # docs/statuses.md, "Tokens"


def test_a_token_with_only_the_documented_scope_reports_and_gates(
    api: client.ApiClient,
    gitea: Gitea,
    sim: Simulator,
    control_plane: ControlPlane,
    namespace: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The test bed's own token has every scope; the agents here have a token with only the
    one docs/statuses.md names, on a private repository (so Gitea checks the token on every
    read too): the source is cloned with it, statuses posted and read back, and a second
    agent's promotion gate reads `gitsync/staging: success` with it. Less is refused, which
    is what makes it the minimum."""
    name = f"ray-{uuid.uuid4().hex[:8]}"
    gitea.api("POST", "/user/repos", {"name": name, "default_branch": "main", "private": True})
    with fresh_namespace(api, "p") as production:
        repo = GitOpsRepo(
            tmp_path / "gitops",
            namespace,
            production=production,
            origin=gitea.clone_url(name),
            push_args=gitea.git_auth_config(),
        )
        token = gitea.create_token(f"minimum-{name}", MINIMUM_SCOPE)
        sha = repo.revisions[-1]
        staging = agent_file(
            repo, gitea, tmp_path, token=token, name="staging", extra={"environments": ["staging"]}
        )
        assert sync(control_plane, staging) == 0
        assert [s["status"] for s in statuses(gitea, repo, sha)][-1:] == ["success"]
        # Another agent's gate: production waits for gitsync/staging: success on the commit.
        gated = {"environments": ["production"], "promotion": {"timeout": "30s"}}
        prod = agent_file(repo, gitea, tmp_path, token=token, name="production", extra=gated)
        capsys.readouterr()
        assert sync(control_plane, prod) == 0
        told = capsys.readouterr()
        assert f"production: gitsync/staging is success at {sha[:12]}" in told.out + told.err
        assert "cannot read the statuses" not in told.out + told.err
        shown = {s["context"]: s["status"] for s in statuses(gitea, repo, sha)}
        assert shown == {"gitsync/staging": "success", "gitsync/production": "success"}
        assert (
            main(["status", "--config", str(prod), "--kubeconfig", str(control_plane.kubeconfig)])
            == 0
        )
        assert f"production: succeeded at {sha[:12]}" in capsys.readouterr().out
    # One scope less: a read-only token reads but cannot post; an issues token cannot even read.
    for scopes, reads in (("read:repository", True), ("write:issue", False)):
        weak = tmp_path / scopes.replace(":", "-")
        weak.write_text(gitea.create_token(f"{scopes}-{name}", scopes))
        client_ = JsonClient(gitea.url, lambda weak=weak: gitea_headers(TokenAuth(token_file=weak)))
        provider = GiteaProvider(client_, f"{gitea.admin}/{name}")
        with pytest.raises(ForgeError) as refused:
            provider.post(sha, CommitStatus("gitsync/staging", State.ERROR, "refused"))
        assert refused.value.status == 403, scopes
        if reads:
            assert provider.statuses(sha)["gitsync/staging"].state is State.SUCCESS
        else:
            with pytest.raises(ForgeError, match="403"):
                provider.statuses(sha)


class Remembered:
    """A provider that keeps what is posted, per commit."""

    name = "memory"

    def __init__(self) -> None:
        self.shown: dict[str, dict[str, CommitStatus]] = {}

    def post(self, revision: str, status: CommitStatus) -> None:
        self.shown.setdefault(revision, {})[status.context] = status

    def statuses(self, revision: str) -> Mapping[str, CommitStatus]:
        return dict(self.shown.get(revision, {}))


@pytest.mark.parametrize(("environments", "context"), [((), "gitsync/config"),
                                                       (("staging",), "gitsync/staging")])  # fmt: skip
def test_an_invalid_gitsync_yaml_shows_failure_on_the_config_context(
    tmp_path: Path, environments: tuple[str, ...], context: str
) -> None:
    """When gitsync.yaml itself is invalid no environment is known: an agent that names its
    environments posts on each of them, otherwise on ``gitsync/config``."""
    repo = GitOpsRepo(tmp_path / "gitops", "unused")
    sha = repo.commit(lambda root: (root / "gitsync.yaml").write_text("environments: [\n"), "bad")
    config = replace(repo.agent_config(tmp_path / "cache"), environments=environments)
    memory = Remembered()
    reporter = Reporter(memory)
    nothing: Any = None  # no Kubernetes API is reached: the revision is refused first
    try:
        with pytest.raises(InvalidRevision):
            sync_once(config, nothing, nothing, reporter=reporter)
        assert reporter.flush(10)
    finally:
        reporter.close(timeout=5)
    [shown] = memory.shown[sha].values()
    assert shown.context == context
    assert shown.state is State.FAILURE
    assert shown.description.startswith("invalid: gitsync.yaml:")
