"""Promotion gates across agents: staging and production in two clusters (two API servers,
a simulator each), one agent per cluster. Production (`after: [staging]`) starts only once
the commit carries `gitsync/staging: success`; a failing staging leaves production untouched.
The commit is the only coordination point: read back through Gitea, or through git notes."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from gitsync.config import AgentConfig, PromotionGate, StatusConfig
from gitsync.kube.rayservices import RayServicesClient
from gitsync.kube.state import StateStore
from gitsync.model import Outcome
from gitsync.progress import Lines
from gitsync.report.factory import build_reporter
from gitsync.report.status import State
from gitsync.source.config import TokenAuth
from gitsync.sync import PassResult, sync_once
from testbed.binaries import Binaries
from testbed.controlplane import ControlPlane
from testbed.gitea import Gitea
from testbed.simulator import Delays, FailureRule, Simulator

from .gitops import GitOpsRepo
from .kube import GROUP, PLURAL, VERSION


@pytest.fixture(scope="module")
def production_plane(
    binaries: Binaries, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ControlPlane]:
    """The second cluster: its own etcd, kube-apiserver and KubeRay simulator."""
    plane = ControlPlane(binaries=binaries, workdir=tmp_path_factory.mktemp("production-plane"))
    plane.start()
    try:
        with plane.api_client() as sim_api:
            sim = Simulator(
                sim_api, Delays(cluster_start=0.3, app_deploy=0.4, tick=0.05, requeue=1.0), seed=11
            )
            sim.start()
            try:
                yield plane
            finally:
                sim.stop()
    finally:
        plane.stop()


@pytest.fixture
def production_api(production_plane: ControlPlane) -> Iterator[client.ApiClient]:
    with production_plane.api_client() as api:
        yield api


def make_repo(provider: str, gitea: Gitea, tmp_path: Path, namespace: str) -> GitOpsRepo:
    production = f"p-{uuid.uuid4().hex[:10]}"
    if provider == "gitea":
        url = gitea.create_repo(f"promo-{uuid.uuid4().hex[:8]}")
        return GitOpsRepo(
            tmp_path / "gitops",
            namespace,
            production=production,
            create_namespace=True,
            origin=url,
            push_args=gitea.git_auth_config(),
        )
    return GitOpsRepo(tmp_path / "gitops", namespace, production=production, create_namespace=True)


def agent(
    repo: GitOpsRepo, provider: str, gitea: Gitea, tmp_path: Path, name: str, namespace: str
) -> AgentConfig:
    config = repo.agent_config(tmp_path / f"cache-{name}", state_namespace=namespace)
    status = StatusConfig()
    if provider == "gitea":
        token = tmp_path / "gitea-token"
        token.write_text(gitea.token)
        status = StatusConfig("gitea", token=TokenAuth(token_file=token))
    return replace(
        config,
        environments=(name,),
        status=status,
        promotion=PromotionGate(timeout=60.0, poll_interval=0.2),
    )


def rayservices(api: client.ApiClient, namespace: str) -> list[dict[str, Any]]:
    try:
        listed = client.CustomObjectsApi(api).list_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL
        )
    except client.ApiException as exc:
        if exc.status == 404:
            return []
        raise
    return list(listed["items"])


class Agent(threading.Thread):
    def __init__(self, config: AgentConfig, api: client.ApiClient, namespace: str) -> None:
        super().__init__(daemon=True)
        self.config, self.api, self.namespace = config, api, namespace
        self.lines: list[tuple[float, str]] = []
        self.result: PassResult | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        reporter = build_reporter(self.config)
        try:
            self.result = sync_once(
                self.config,
                RayServicesClient(self.api),
                StateStore(self.api, self.namespace),
                observer=Lines(lambda line: self.lines.append((time.monotonic(), line))),
                reporter=reporter,
            )
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            reporter.close(timeout=30)

    def saw(self, text: str) -> bool:
        return any(text in line for _, line in self.lines)


@pytest.fixture(params=["gitea", "gitnotes"])
def provider(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def ensure_namespace(api: client.ApiClient, name: str) -> None:
    try:
        client.CoreV1Api(api).create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=name))
        )
    except client.ApiException as exc:
        if exc.status != 409:
            raise


def wait_for(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_production_waits_for_staging_success_on_the_commit(
    provider: str,
    gitea: Gitea,
    api: client.ApiClient,
    production_api: client.ApiClient,
    sim: Simulator,
    namespace: str,
    tmp_path: Path,
) -> None:
    repo = make_repo(provider, gitea, tmp_path, namespace)
    prod_ns = f"state-{uuid.uuid4().hex[:8]}"
    ensure_namespace(production_api, prod_ns)
    staging = agent(repo, provider, gitea, tmp_path, "staging", namespace)
    production = agent(repo, provider, gitea, tmp_path, "production", prod_ns)
    prod_target = production_ns(repo)

    waiting = Agent(production, production_api, prod_ns)
    waiting.start()
    wait_for(lambda: waiting.saw("waiting for gitsync/staging: success"))
    time.sleep(1.0)  # several gate reads: still nothing in production
    assert rayservices(production_api, prod_target) == []

    first = Agent(staging, api, namespace)
    first.run()  # in this thread: staging rolls out, then its reporter flushes
    assert first.error is None
    assert first.result is not None
    assert first.result.ok
    staging_done = time.monotonic()

    waiting.join(120)
    assert waiting.error is None, waiting.error
    assert waiting.result is not None
    assert [r.outcome for r in waiting.result.results] == [Outcome.SUCCEEDED]
    applied = [t for t, line in waiting.lines if ": applied " in line]
    assert applied
    assert min(applied) > staging_done - 1.0  # nothing applied before staging's success
    assert min(applied) > max(
        t for t, line in waiting.lines if "waiting for gitsync/staging" in line
    )
    assert {o["metadata"]["name"] for o in rayservices(production_api, prod_target)} == {
        "embedder",
        "ranker",
        "summarizer",
    }
    shown = build_reporter(production).statuses(repo.revisions[-1])
    assert shown["gitsync/staging"].state is State.SUCCESS
    assert shown["gitsync/production"].state is State.SUCCESS


def test_a_failing_staging_keeps_production_untouched(
    provider: str,
    gitea: Gitea,
    api: client.ApiClient,
    production_api: client.ApiClient,
    sim: Simulator,
    namespace: str,
    tmp_path: Path,
) -> None:
    repo = make_repo(provider, gitea, tmp_path, namespace)
    prod_ns = f"state-{uuid.uuid4().hex[:8]}"
    ensure_namespace(production_api, prod_ns)
    sim.add_rule(FailureRule(namespace=namespace, service="ranker", message="import failed"))
    staging = agent(repo, provider, gitea, tmp_path, "staging", namespace)
    production = agent(repo, provider, gitea, tmp_path, "production", prod_ns)

    waiting = Agent(production, production_api, prod_ns)
    waiting.start()
    wait_for(lambda: waiting.saw("waiting for gitsync/staging: success"))

    first = Agent(staging, api, namespace)
    first.run()
    assert first.result is not None
    assert [r.outcome for r in first.result.results] == [Outcome.FAILED]

    waiting.join(120)
    assert waiting.error is None, waiting.error
    assert waiting.result is not None
    [blocked] = waiting.result.results
    assert blocked.outcome is Outcome.BLOCKED
    assert "gitsync/staging is failure" in blocked.message
    assert rayservices(production_api, production_ns(repo)) == []
    shown = build_reporter(production).statuses(repo.revisions[-1])
    assert shown["gitsync/production"].state is State.FAILURE
    assert shown["gitsync/production"].description.startswith(
        "not rolled out: gitsync/staging is failure"
    )


def production_ns(repo: GitOpsRepo) -> str:
    config = yaml.safe_load((repo.work / "gitsync.yaml").read_text())
    return str(config["environments"][1]["namespace"])
