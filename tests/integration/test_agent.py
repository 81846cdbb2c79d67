"""`gitsync run`: push webhooks from a real Gitea, rejected forgeries, leader election with a
SIGKILLed leader, graceful SIGTERM — against the test bed's API server and simulator."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from gitsync.agent import Agent
from gitsync.config import LeaderElection, StatusConfig, Webhooks
from gitsync.kube.rayservices import RayServicesClient
from gitsync.metrics import Metrics
from gitsync.names import REVISION, SOURCE
from gitsync.notify import verify
from gitsync.report.factory import build_reporter
from gitsync.server import AgentServer, Hooks
from gitsync.source.config import TokenAuth
from testbed.binaries import Binaries
from testbed.controlplane import ControlPlane, free_port
from testbed.gitea import Gitea
from testbed.simulator import Delays, FailureRule, Simulator
from tests.conftest import fresh_namespace

from .gitops import KUSTOMIZE, GitOpsRepo, counting_tool, edit, runs
from .kube import GROUP, PLURAL, VERSION
from .test_notifications import Receiver

SECRET = "whsec-0123456789abcdef"


class TimedServices(RayServicesClient):
    """The real RayServices, stamping when each (non-dry-run) apply request is made."""

    def __init__(self, api: client.ApiClient) -> None:
        super().__init__(api)
        self.applied: list[tuple[float, str]] = []

    def apply(
        self, obj: dict[str, Any], *, dry_run: bool = False, force: bool = False
    ) -> dict[str, Any]:
        if not dry_run:
            self.applied.append((time.monotonic(), obj["metadata"]["name"]))
        return super().apply(obj, dry_run=dry_run, force=force)


def wait_for(predicate: Any, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def forge_repo(gitea: Gitea, tmp_path: Path, namespace: str) -> GitOpsRepo:
    url = gitea.create_repo(f"agent-{uuid.uuid4().hex[:8]}")
    return GitOpsRepo(tmp_path / "gitops", namespace, origin=url, push_args=gitea.git_auth_config())


@pytest.fixture
def agent_with_server(
    api: client.ApiClient, forge_repo: GitOpsRepo, gitea: Gitea, tmp_path: Path
) -> Iterator[tuple[Agent, AgentServer, TimedServices]]:
    token = tmp_path / "gitea-token"
    token.write_text(gitea.token)
    config = replace(
        forge_repo.agent_config(tmp_path / "cache"),
        poll_seconds=3600.0,  # only webhooks (and the start) trigger passes
        status=StatusConfig("gitea", token=TokenAuth(token_file=token)),
        leader_election=LeaderElection(enabled=False),
        webhooks=Webhooks(TokenAuth(token_env="WEBHOOK_SECRET")),
    )
    metrics = Metrics()
    agent = Agent(
        config, api, "test-agent", metrics=metrics, reporter=build_reporter(config, metrics)
    )
    services = TimedServices(api)
    agent.services = services
    polls: list[float] = []

    def poll() -> None:
        polls.append(time.monotonic())
        agent.trigger()

    hooks = Hooks(
        SECRET.encode,
        config.repository.url,
        "main",
        poll,
        lambda: None,
        lambda: True,
        agent.ready.is_set,
    )
    server = AgentServer("127.0.0.1", free_port(), hooks, metrics).start()
    agent.start()
    try:
        yield agent, server, services
    finally:
        agent.shutdown(timeout=10)
        server.stop()


def test_a_gitea_push_webhook_triggers_the_rollout(
    agent_with_server: tuple[Agent, AgentServer, TimedServices],
    forge_repo: GitOpsRepo,
    gitea: Gitea,
    sim: Simulator,
    namespace: str,
) -> None:
    agent, server, services = agent_with_server
    wait_for(lambda: agent.passes >= 1 and not agent._lock.locked(), what="the first pass")
    assert agent.last_ok
    owner_repo = forge_repo.url.removeprefix(gitea.url + "/").removesuffix(".git")
    gitea.add_webhook(owner_repo, f"http://127.0.0.1:{server.port}/webhooks", SECRET)
    before = len(services.applied)
    sha = forge_repo.commit(
        lambda root: forge_repo.edit("ranker.yaml", "num_replicas: 1", "num_replicas: 2"), "scale"
    )
    wait_for(lambda: server.received, timeout=30, what="Gitea's webhook")
    wait_for(lambda: len(services.applied) > before, timeout=30, what="the apply")
    # How fast is bench.webhook_poll's to measure (docs/benchmarks.md), not a test's.
    assert services.applied[before][0] >= server.received[0]
    assert services.applied[before][1] == "ranker"

    def succeeded() -> bool:
        combined = gitea.api("GET", f"/repos/{owner_repo}/commits/{sha}/status")
        return any(
            s["context"] == "gitsync/staging" and s["status"] == "success"
            for s in combined.get("statuses") or ()
        )

    wait_for(succeeded, timeout=60, what="gitsync/staging: success on the commit")
    assert (
        agent.metrics.registry.get_sample_value(
            "gitsync_webhook_requests_total",
            {"provider": "gitea", "event": "push", "result": "poll"},
        )
        == 1
    )


def test_a_health_change_outside_a_rollout_is_an_event_kubectl_describe_shows(
    agent_with_server: tuple[Agent, AgentServer, TimedServices],
    api: client.ApiClient,
    control_plane: ControlPlane,
    sim: Simulator,
    namespace: str,
) -> None:
    agent, _, _ = agent_with_server
    wait_for(lambda: agent.passes >= 1 and not agent._lock.locked(), what="the first pass")
    assert agent.last_ok
    agent.poll()  # nothing new: the health gauge is refreshed, every service Healthy
    # Someone edits the Serve config by hand and the new config fails to deploy.
    sim.add_rule(FailureRule(namespace=namespace, service="ranker", message="bad edit"))
    custom = client.CustomObjectsApi(api)
    live = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "ranker")
    serve = live["spec"]["serveConfigV2"].replace("num_replicas: 1", "num_replicas: 3")
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "ranker", {"spec": {"serveConfigV2": serve}}
    )

    def failed() -> bool:
        obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "ranker")
        apps = (obj.get("status") or {}).get("activeServiceStatus", {}).get("applicationStatuses")
        return any(a.get("status") == "DEPLOY_FAILED" for a in (apps or {}).values())

    wait_for(failed, timeout=30, what="the edited ranker to fail")
    agent.poll()
    assert agent.recorder.flush(10)
    described = control_plane.kubectl("describe", "rayservice", "ranker", "-n", namespace).stdout
    assert "health changed from Healthy to Degraded" in described
    assert any(line.split()[:2] == ["Warning", "Degraded"] for line in described.splitlines())


def samples(metrics: Metrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample of one metric family: sorted labels → value."""
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name == name
    }


def test_the_metrics_of_a_real_pass(
    agent_with_server: tuple[Agent, AgentServer, TimedServices],
    forge_repo: GitOpsRepo,
    sim: Simulator,
) -> None:
    agent, _, _ = agent_with_server
    wait_for(lambda: agent.passes >= 1 and not agent._lock.locked(), what="the first pass")
    assert agent.last_ok
    metrics, head = agent.metrics, forge_repo.revisions[-1]
    staging = (("environment", "staging"),)
    assert samples(metrics, "gitsync_sync_total") == {(*staging, ("result", "succeeded")): 1}
    assert samples(metrics, "gitsync_sync_duration_seconds_count") == {staging: 1}
    assert samples(metrics, "gitsync_sync_duration_seconds_sum")[staging] > 0
    assert samples(metrics, "gitsync_rollout_in_progress") == {staging: 0}
    assert samples(metrics, "gitsync_applied_revision_info") == {(*staging, ("revision", head)): 1}
    assert samples(metrics, "gitsync_git_poll_total") == {(("result", "new"),): 1}
    assert samples(metrics, "gitsync_git_poll_duration_seconds_count") == {(): 1}
    health = samples(metrics, "gitsync_service_health")
    assert {dict(labels)["name"]: dict(labels)["health"] for labels in health} == {
        "embedder": "Healthy",
        "ranker": "Healthy",
        "summarizer": "Healthy",
    }


def test_a_commit_to_a_kustomize_base_rolls_out_to_every_overlay_rendering_only_what_changed(
    gitea: Gitea,
    api: client.ApiClient,
    sim: Simulator,
    namespace: str,
    tmp_path: Path,
    binaries: Binaries,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The polling agent on examples/repo-layout's overlays: each rendered once per revision
    that changes what it reads (the previews job, with nothing to preview, renders nothing)."""
    kustomize, renders = counting_tool(binaries.kubectl, tmp_path)
    monkeypatch.setenv("GITSYNC_KUSTOMIZE", str(kustomize))
    with fresh_namespace(api) as production:
        url = gitea.create_repo(f"render-{uuid.uuid4().hex[:8]}")
        repo = GitOpsRepo(
            tmp_path / "gitops", namespace, production=production, origin=url,
            push_args=gitea.git_auth_config(), example=KUSTOMIZE,
        )  # fmt: skip
        owner_repo = url.removeprefix(gitea.url + "/").removesuffix(".git")
        token = tmp_path / "gitea-token"
        token.write_text(gitea.token)
        config = replace(
            repo.agent_config(tmp_path / "cache"),
            poll_seconds=0.3,
            status=StatusConfig("gitea", token=TokenAuth(token_file=token)),
            leader_election=LeaderElection(enabled=False),
        )
        metrics = Metrics()
        agent = Agent(
            config, api, "render-agent", metrics=metrics, reporter=build_reporter(config, metrics)
        )

        def succeeded(sha: str) -> bool:
            combined = gitea.api("GET", f"/repos/{owner_repo}/commits/{sha}/status")
            found = {s["context"]: s["status"] for s in combined.get("statuses") or ()}
            return found == {"gitsync/staging": "success", "gitsync/production": "success"}

        def ranker(where: str) -> dict[str, Any]:
            return client.CustomObjectsApi(api).get_namespaced_custom_object(
                GROUP, VERSION, where, PLURAL, "ranker"
            )

        agent.start()
        try:
            first = repo.revisions[0]
            wait_for(lambda: succeeded(first), timeout=90, what="both overlays rolled out")
            assert runs(renders) == 2  # staging and production, once each
            sha = repo.commit(
                lambda root: edit(
                    root / "base/ranker.yaml",
                    'model_version: "2026-11-01"',
                    'model_version: "2026-12-01"',
                ),
                "a new ranker model, in the base only",
            )
            wait_for(lambda: succeeded(sha), timeout=90, what="the base change in both")
            for where in (namespace, production):
                live = ranker(where)
                assert 'model_version: "2026-12-01"' in live["spec"]["serveConfigV2"]
                assert live["metadata"]["annotations"][REVISION] == sha
                assert live["metadata"]["annotations"][SOURCE] == "base/ranker.yaml"
            group = ranker(production)["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
            assert group["replicas"] == 3  # the overlay's patch, still applied
            assert group["template"]["spec"]["containers"][0]["image"].endswith(":2.49.1-py311")
            assert runs(renders) == 4
            # A revision that changes nothing a render reads: statuses, and no render.
            docs = repo.commit(lambda root: (root / "NOTES.md").write_text("notes\n"), "notes")
            wait_for(lambda: succeeded(docs), timeout=90, what="the statuses of a no-op revision")
            wait_for(lambda: agent.last_revision == docs and not agent._lock.locked())
            agent.poll()  # and a poll with nothing new
            assert runs(renders) == 4
            assert ranker(production)["metadata"]["annotations"][REVISION] == sha
        finally:
            agent.shutdown(timeout=10)


def test_a_replica_that_loses_the_lease_drops_its_environment_series(
    api: client.ApiClient, sim: Simulator, namespace: str, tmp_path: Path
) -> None:
    """Otherwise the old leader keeps exporting health, applied revisions and rollouts in
    progress next to the new leader's, and dashboards count every service twice."""
    repo = GitOpsRepo(tmp_path / "gitops", namespace)
    config = replace(
        repo.agent_config(tmp_path / "cache"),
        poll_seconds=3600.0,
        leader_election=LeaderElection(True, namespace, "gitsync-metrics", 4.0, 3.0, 0.5),
    )
    agent = Agent(config, api, "agent-x", metrics=Metrics())
    agent.start()
    try:
        wait_for(lambda: agent.passes >= 1 and not agent._lock.locked(), what="the first pass")
        metrics = agent.metrics
        for name in ("gitsync_service_health", "gitsync_applied_revision_info"):
            assert samples(metrics, name), name
        # Another holder takes the Lease (as after a partition): this replica cannot renew.
        # Like a real contender, it retries when agent-x's renewal wrote first (409).
        coordination = client.CoordinationV1Api(api)
        for _ in range(20):
            lease = coordination.read_namespaced_lease("gitsync-metrics", namespace)
            lease.spec.holder_identity = "agent-y"
            lease.spec.lease_duration_seconds = 60
            lease.spec.renew_time = datetime.datetime.now(datetime.UTC)
            try:
                coordination.replace_namespaced_lease("gitsync-metrics", namespace, lease)
                break
            except client.ApiException as exc:
                if exc.status != 409:
                    raise
        else:
            pytest.fail("agent-x's renewals won every write of the Lease")
        wait_for(
            lambda: samples(metrics, "gitsync_leader") == {(): 0},
            timeout=10,
            what="agent-x to step down",
        )
        assert not agent.leading
        for name in (
            "gitsync_service_health",
            "gitsync_applied_revision_info",
            "gitsync_rollout_in_progress",
        ):
            assert samples(metrics, name) == {}, name
        assert samples(metrics, "gitsync_sync_total")  # counters stay: rates need them
    finally:
        agent.shutdown(timeout=10)


def healthz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_healthz_fails_when_the_poll_job_stalls_or_the_scheduler_dies(
    api: client.ApiClient, sim: Simulator, namespace: str, tmp_path: Path
) -> None:
    repo = GitOpsRepo(tmp_path / "gitops", namespace)
    config = replace(
        repo.agent_config(tmp_path / "cache"),
        poll_seconds=0.5,
        leader_election=LeaderElection(enabled=False),
    )
    agent = Agent(config, api, "agent-h", metrics=Metrics(), stale_after=3.0)
    hooks = Hooks(lambda: None, config.repository.url, "main", agent.trigger, lambda: None,
                  agent.healthy, agent.ready.is_set)  # fmt: skip
    server = AgentServer("127.0.0.1", free_port(), hooks, agent.metrics).start()
    agent.start()
    try:
        wait_for(lambda: agent.passes >= 1 and not agent._lock.locked(), what="the first pass")
        time.sleep(4.0)  # longer than stale_after: polls keep running, so still healthy
        assert healthz(server.port) == 200
        agent.scheduler.pause_job("poll")  # the poll job stops being run
        wait_for(lambda: healthz(server.port) == 503, timeout=10, what="/healthz to fail")
        agent.scheduler.resume_job("poll")
        wait_for(lambda: healthz(server.port) == 200, timeout=10, what="/healthz to recover")
        agent.scheduler.shutdown(wait=True)  # the scheduler's thread ends
        assert healthz(server.port) == 503
    finally:
        agent.shutdown(timeout=10)
        server.stop()


def refuse_state_writes(api: client.ApiClient, namespace: str, name: str) -> Iterator[None]:
    """A ValidatingAdmissionPolicy (evaluated by the API server itself) refusing writes of
    the ConfigMap ``name`` in ``namespace``: the rollout's state write fails, as with an
    admission webhook or a quota in a real cluster."""
    admission = client.AdmissionregistrationV1Api(api)
    policy = f"refuse-{namespace}"
    admission.create_validating_admission_policy(
        {
            "metadata": {"name": policy},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE", "UPDATE"],
                            "resources": ["configmaps"],
                        }
                    ]
                },
                "validations": [
                    {
                        "expression": f"object.metadata.name != '{name}'",
                        "message": "refused by the test's policy",
                    }
                ],
            },
        }
    )
    admission.create_validating_admission_policy_binding(
        {
            "metadata": {"name": policy},
            "spec": {
                "policyName": policy,
                "validationActions": ["Deny"],
                "matchResources": {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
                },
            },
        }
    )
    core = client.CoreV1Api(api)

    def refused() -> bool:
        try:
            core.patch_namespaced_config_map(
                name, namespace, {"data": {"probe": "1"}}, dry_run="All"
            )
        except client.ApiException:
            return True
        return False

    try:
        wait_for(refused, timeout=30, what="the admission policy to take effect")
        yield
    finally:
        admission.delete_validating_admission_policy_binding(policy)
        admission.delete_validating_admission_policy(policy)


def test_a_pass_that_errors_mid_rollout_is_counted_for_its_environment(
    agent_with_server: tuple[Agent, AgentServer, TimedServices],
    api: client.ApiClient,
    forge_repo: GitOpsRepo,
    namespace: str,
    sim: Simulator,
) -> None:
    agent, _, _ = agent_with_server
    wait_for(lambda: agent.passes >= 1 and not agent._lock.locked(), what="the first pass")
    assert agent.last_ok
    for _ in refuse_state_writes(api, namespace, "gitsync-rollout-staging"):
        forge_repo.commit(
            lambda root: forge_repo.edit("ranker.yaml", "num_replicas: 1", "num_replicas: 2"),
            "scale",
        )
        agent.trigger()
        wait_for(lambda: agent.passes >= 2 and not agent._lock.locked(), what="the second pass")
    assert not agent.last_ok
    metrics, staging = agent.metrics, (("environment", "staging"),)
    assert samples(metrics, "gitsync_sync_total") == {
        (*staging, ("result", "succeeded")): 1,
        (*staging, ("result", "error")): 1,
    }
    assert samples(metrics, "gitsync_rollout_in_progress") == {staging: 0}


def post(port: int, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/webhooks", data=body, method="POST", headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_forged_webhooks_trigger_nothing(
    agent_with_server: tuple[Agent, AgentServer, TimedServices], forge_repo: GitOpsRepo
) -> None:
    agent, server, _ = agent_with_server
    wait_for(lambda: agent.passes >= 1 and not agent._lock.locked(), what="the first pass")
    body = json.dumps(
        {"ref": "refs/heads/main", "repository": {"clone_url": forge_repo.url}}
    ).encode()
    good = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    altered = body.replace(b"refs/heads/main", b"refs/heads/main ")
    cases = [
        ({"X-Gitea-Event": "push"}, body, 401),  # missing signature
        ({"X-Gitea-Event": "push", "X-Gitea-Signature": "0" * 64}, body, 401),  # forged
        ({"X-Gitea-Event": "push", "X-Gitea-Signature": good}, altered, 401),  # replay, altered
        ({"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + "1" * 64}, body, 401),
        ({"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": "nope"}, body, 401),
        ({"X-Gitea-Event": "push", "X-Gitea-Signature": good}, b"x" * (2 << 20), 413),
        (
            {
                "X-Gitea-Event": "push",
                "X-Gitea-Signature": hmac.new(
                    SECRET.encode(), b"{oops", hashlib.sha256
                ).hexdigest(),
            },
            b"{oops",
            400,
        ),
    ]

    def polls() -> float:
        return sum(samples(agent.metrics, "gitsync_git_poll_total").values())

    polls_before, passes_before = polls(), agent.passes
    for headers, payload, status in cases:
        got, _ = post(server.port, {**headers, "Content-Type": "application/json"}, payload)
        assert got == status, (headers, got)
    # An authentic but unknown event is accepted and ignored; a genuine replay is a duplicate.
    signed = {"X-Gitea-Event": "push", "X-Gitea-Signature": good, "X-Gitea-Delivery": "abc"}
    assert post(server.port, {**signed, "X-Gitea-Event": "release"}, body)[0] == 202
    # The effect, not only the answers: no poll ran and no pass started. A webhook's poll runs
    # on the scheduler's thread within milliseconds; a second is ample to see one.
    time.sleep(1.0)
    assert (polls(), agent.passes) == (polls_before, passes_before)
    assert post(server.port, signed, body)[1]["result"] == "poll"
    assert post(server.port, signed, body)[1]["result"] == "duplicate"
    # The authentic push did poll, once (the replay did not): the counter above was live.
    wait_for(lambda: polls() == polls_before + 1, timeout=10, what="the authentic push's poll")
    time.sleep(0.5)
    assert polls() == polls_before + 1
    counted: dict[str, float] = {}
    for metric in agent.metrics.registry.collect():
        for sample in metric.samples:
            if metric.name == "gitsync_webhook_requests" and sample.name.endswith("_total"):
                result = sample.labels["result"]
                counted[result] = counted.get(result, 0) + sample.value
    assert counted.get("poll") == 1  # only the one authentic push
    assert sum(v for k, v in counted.items() if k.startswith("rejected-")) == len(cases)
    assert len(server.received) == 1


# -- the agent as a process -------------------------------------------------------------------


def agent_config_file(
    repo: GitOpsRepo, tmp_path: Path, name: str, port: int, lease_namespace: str, **extra: Any
) -> Path:
    path = tmp_path / f"{name}.yaml"
    document: dict[str, Any] = {
        "repository": {"url": repo.url, "branch": "main"},
        "cacheDir": str(tmp_path / f"cache-{name}"),
        "intervals": {"poll": "1s"},
        "listen": f"127.0.0.1:{port}",
        "leaderElection": {
            "namespace": lease_namespace,
            "leaseName": "gitsync-test",
            "leaseDuration": "4s",
            "renewDeadline": "3s",
            "retryPeriod": "500ms",
        },
        "rollout": {
            "healthyReads": 2,
            "healthySeconds": "1500ms",
            "pollInterval": "200ms",
            "healthTimeout": "60s",
            "stateNamespace": repo.namespace,
        },
        **extra,
    }
    path.write_text(yaml.safe_dump(document))
    return path


def start_agent(
    config: Path, kubeconfig: Path, name: str, log: Path, *args: str
) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "gitsync.cli", "run", "--config", str(config), *args]
    with log.open("wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            [*argv, "--kubeconfig", str(kubeconfig)],
            env={**os.environ, "POD_NAME": name},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def lease_holder(api: client.ApiClient, namespace: str) -> str:
    try:
        lease = client.CoordinationV1Api(api).read_namespaced_lease("gitsync-test", namespace)
    except client.ApiException:
        return ""
    return str(lease.spec.holder_identity or "")


def lease_annotation(api: client.ApiClient, namespace: str, key: str) -> str:
    try:
        lease = client.CoordinationV1Api(api).read_namespaced_lease("gitsync-test", namespace)
    except client.ApiException:
        return ""
    return str((lease.metadata.annotations or {}).get(key, ""))


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def annotations(api: client.ApiClient, namespace: str) -> dict[str, dict[str, str]]:
    items = client.CustomObjectsApi(api).list_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL
    )["items"]
    return {o["metadata"]["name"]: o["metadata"].get("annotations") or {} for o in items}


def test_the_standby_takes_over_a_sigkilled_leader_mid_rollout(
    api: client.ApiClient,
    control_plane: ControlPlane,
    sim: Simulator,
    namespace: str,
    tmp_path: Path,
) -> None:
    sim.delays = Delays(cluster_start=2.0, app_deploy=2.0, tick=0.05, requeue=1.0)
    repo = GitOpsRepo(tmp_path / "gitops", namespace)
    sha = repo.revisions[-1]
    agents = {}
    for name in ("agent-a", "agent-b"):
        config = agent_config_file(repo, tmp_path, name, free_port(), namespace)
        agents[name] = start_agent(config, control_plane.kubeconfig, name, tmp_path / f"{name}.log")
    try:
        wait_for(lambda: lease_holder(api, namespace) in agents, timeout=30, what="a leader")
        leader = lease_holder(api, namespace)
        standby = next(n for n in agents if n != leader)
        # Mid-rollout: wave 0 (embedder) applied, the later wave not yet.
        wait_for(lambda: "embedder" in annotations(api, namespace), timeout=60, what="wave 0")
        assert "ranker" not in annotations(api, namespace)
        # Exactly one applies: the standby has not written anything.
        assert ": applied " not in (tmp_path / f"{standby}.log").read_text()
        # (its log line follows the apply's answer: the annotation can be read first)
        wait_for(
            lambda: ": applied " in (tmp_path / f"{leader}.log").read_text(),
            timeout=10,
            what="the leader's apply in its log",
        )
        agents[leader].send_signal(signal.SIGKILL)
        agents[leader].wait(10)
        wait_for(lambda: lease_holder(api, namespace) == standby, timeout=30, what="takeover")

        def done() -> bool:
            found = annotations(api, namespace)
            return set(found) == {"embedder", "ranker", "summarizer"} and all(
                a.get("gitsync.ray.io/revision") == sha for a in found.values()
            )

        wait_for(done, timeout=120, what="the standby to finish the rollout")
        state = client.CoreV1Api(api).read_namespaced_config_map(
            "gitsync-rollout-staging", namespace
        )
        wait_for(
            lambda: (
                client.CoreV1Api(api)
                .read_namespaced_config_map("gitsync-rollout-staging", namespace)
                .data["phase"]
                == "succeeded"
            ),
            timeout=60,
            what="the rollout state to say succeeded",
        )
        assert state.data["revision"] == sha
        # Every object was written by the field manager gitsync, at the one revision.
        items = client.CustomObjectsApi(api).list_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL
        )["items"]
        for obj in items:
            managers = {
                m["manager"] for m in obj["metadata"]["managedFields"] if m["operation"] == "Apply"
            }
            assert managers == {"gitsync"}
        log = (tmp_path / f"{standby}.log").read_text()
        assert "leads" in log
    finally:
        for process in agents.values():
            if process.poll() is None:
                process.kill()
                process.wait(10)


def test_sigterm_stops_cleanly_and_releases_the_lease(
    api: client.ApiClient,
    control_plane: ControlPlane,
    sim: Simulator,
    namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = GitOpsRepo(tmp_path / "gitops", namespace)
    port = free_port()
    # The config's notifications reach a real receiver (docs/notifications.md), its URL and
    # signing secret read from a file and the environment.
    receiver = Receiver()
    hook = "/hooks/tok-cli-9f3e"
    (tmp_path / "notify-url").write_text(receiver.url(hook))
    monkeypatch.setenv("GITSYNC_NOTIFY_SECRET", "whsec-cli-61d0")
    notifications = [{
        "type": "webhook", "urlFrom": {"secretFile": str(tmp_path / "notify-url")},
        "secret": {"secretEnv": "GITSYNC_NOTIFY_SECRET"}, "events": ["rollout.succeeded"],
    }]  # fmt: skip
    config = agent_config_file(repo, tmp_path, "solo", port, namespace, notifications=notifications)
    log = tmp_path / "solo.log"
    process = start_agent(config, control_plane.kubeconfig, "solo", log, "--log-format", "json")
    try:
        wait_for(lambda: lease_holder(api, namespace) == "solo", timeout=30, what="leadership")

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_for(ready, timeout=30, what="/readyz")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
        assert "gitsync_leader 1.0" in text

        def lines() -> list[dict[str, Any]]:
            return [json.loads(line) for line in log.read_text().splitlines() if line]

        # JSON logs carry what a line is about as keys, from the call site: an apply names the
        # environment, the service, the full revision, its wave and its action.
        wait_for(
            lambda: any("succeeded" in entry["message"] for entry in lines()),
            timeout=60,
            what="the rollout to succeed",
        )
        applied = [entry for entry in lines() if ": applied " in entry["message"]]
        assert applied
        for entry in applied:
            assert entry["environment"] == "staging"
            assert entry["revision"] == repo.revisions[-1]
            assert entry["service"] in entry["message"]
            assert entry["service"].startswith(f"{namespace}/")
            assert f"wave {entry['wave']}: " in entry["message"]
            assert isinstance(entry["wave"], int)
            assert f"({entry['action']})" in entry["message"]
        done = [entry for entry in lines() if " succeeded: " in entry["message"]]
        assert [(e["environment"], e["revision"]) for e in done] == [
            ("staging", repo.revisions[-1])
        ]
        # The alerts' gauges: no failure standing, and not behind once the rollout succeeded
        # (set when the rollout's result is recorded, just after its "succeeded" line).
        settled = (
            'gitsync_rollout_failed{environment="staging"} 0.0',
            'gitsync_behind_since_seconds{environment="staging"} 0.0',
        )
        wait_for(
            lambda: all(line in scrape(port) for line in settled),
            timeout=30,
            what="the alerts' gauges",
        )
        began = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        sys.stderr.write(f"SIGTERM → exit: {time.monotonic() - began:.1f} s\n")
        assert lease_holder(api, namespace) == ""
        # Delivered (by shutdown at the latest), signed, and neither secret in the logs.
        [told] = receiver.at(hook)
        assert (told.json["event"], told.json["revision"]) == (
            "rollout.succeeded",
            repo.revisions[-1],
        )
        timestamp, signature = (
            told.headers["X-Gitsync-Timestamp"],
            told.headers["X-Gitsync-Signature"],
        )
        assert verify(b"whsec-cli-61d0", timestamp, signature, told.body, time.time())
        assert "tok-cli-9f3e" not in log.read_text()
        assert "whsec-cli-61d0" not in log.read_text()
    finally:
        receiver.close()
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_a_push_webhook_reaching_the_standby_is_relayed_to_the_leader(
    api: client.ApiClient,
    control_plane: ControlPlane,
    sim: Simulator,
    namespace: str,
    forge_repo: GitOpsRepo,
    gitea: Gitea,
    tmp_path: Path,
) -> None:
    """Two replicas behind one Service: Gitea's real push webhook goes to the standby, which
    relays it to the URL the leader published on the Lease; the leader polls and applies."""
    secret = tmp_path / "webhook-secret"
    secret.write_text(SECRET)
    ports, agents = {}, {}
    for name in ("agent-a", "agent-b"):
        ports[name] = free_port()
        config = agent_config_file(
            forge_repo, tmp_path, name, ports[name], namespace,
            intervals={"poll": "1h"},  # only the start and webhooks trigger passes
            webhooks={"secretFile": str(secret)},
        )  # fmt: skip
        agents[name] = start_agent(config, control_plane.kubeconfig, name, tmp_path / f"{name}.log")
    try:
        # Two processes start at once (imports, first list, lease): generous on a busy machine.
        wait_for(lambda: lease_holder(api, namespace) in agents, timeout=90, what="a leader")
        leader = lease_holder(api, namespace)
        standby = next(n for n in agents if n != leader)
        published = f"http://127.0.0.1:{ports[leader]}"
        assert lease_annotation(api, namespace, "gitsync.ray.io/leader-url") == published
        wait_for(
            lambda: set(annotations(api, namespace)) == {"embedder", "ranker", "summarizer"},
            timeout=120,
            what="the first rollout",
        )
        time.sleep(1.5)  # the standby reads the Lease every retryPeriod (500 ms)
        owner_repo = forge_repo.url.removeprefix(gitea.url + "/").removesuffix(".git")
        gitea.add_webhook(owner_repo, f"http://127.0.0.1:{ports[standby]}/webhooks", SECRET)
        sha = forge_repo.commit(
            lambda root: forge_repo.edit("ranker.yaml", "num_replicas: 1", "num_replicas: 2"),
            "scale",
        )
        wait_for(
            lambda: annotations(api, namespace)["ranker"].get("gitsync.ray.io/revision") == sha,
            timeout=60,
            what="the leader to apply the pushed revision",
        )
        relayed = 'gitsync_webhook_requests_total{event="push",provider="gitea",result="relayed"}'
        polled = 'gitsync_webhook_requests_total{event="push",provider="gitea",result="poll"}'
        # Gitea delivers from a queue: on a busy machine the revision may already be applied
        # (the leader's own retry after a slow first pass) before the delivery is counted.
        wait_for(
            lambda: f"{relayed} 1.0" in scrape(ports[standby]),
            timeout=60,
            what="the standby to relay the push",
        )
        wait_for(
            lambda: f"{polled} 1.0" in scrape(ports[leader]),
            timeout=60,
            what="the leader to answer the relayed push with a poll",
        )
        assert ": applied " not in (tmp_path / f"{standby}.log").read_text()
    finally:
        for process in agents.values():
            if process.poll() is None:
                process.kill()
                process.wait(10)
