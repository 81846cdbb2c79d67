"""The status page of two `gitsync run` replicas (leader election on, the real API server):
both show the same environments, rollout and history, read from the cluster — the standby
included, which ran nothing — and a restarted agent still shows the rollouts before it."""

from __future__ import annotations

import datetime
import json
import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from kubernetes import client

from testbed.controlplane import ControlPlane, free_port
from testbed.simulator import Simulator

from .gitops import GitOpsRepo
from .test_agent import agent_config_file, annotations, lease_holder, start_agent, wait_for


def get(port: int, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            body = response.read().decode()
            status = response.status
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, None
    return status, json.loads(body) if path.startswith("/api/") else body


def shown(port: int) -> dict[str, Any]:
    """What a replica's page says about staging, without what depends on the clock."""
    _, overview = get(port, "/api/v1/environments")
    _, env = get(port, "/api/v1/environments/staging")
    summary = env["summary"]
    return {
        "environments": [e["name"] for e in overview["environments"]],
        "applied": summary["applied"]["sha"],
        "state": summary["state"],
        "health": summary["health"],
        "services": [s["name"] for w in env["waves"] for s in w["services"]],
        "last_actions": {s["name"]: s["last_action"] for w in env["waves"] for s in w["services"]},
        "rollout": (
            env["rollout"]["revision"]["sha"],
            env["rollout"]["outcome"],
            [(c["service"], c["action"]) for c in env["rollout"]["changes"]],
            [step["kind"] for step in env["rollout"]["timeline"]],
        ),
        "history": [(h["revision"]["sha"], h["outcome"], h["changes"]) for h in env["history"]],
    }


def warning(api: client.ApiClient, namespace: str, name: str, reason: str) -> None:
    """A Warning Event about the RayService ``name``, as the KubeRay operator writes one."""
    now = datetime.datetime.now(datetime.UTC)
    client.CoreV1Api(api).create_namespaced_event(
        namespace,
        client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{name}."),
            involved_object=client.V1ObjectReference(
                api_version="ray.io/v1", kind="RayService", name=name, namespace=namespace
            ),
            type="Warning",
            reason=reason,
            message=f"{reason}: the head service could not be updated",
            source=client.V1EventSource(component="kuberay-operator"),
            first_timestamp=now,
            last_timestamp=now,
            count=1,
        ),
    )


def succeeded(api: client.ApiClient, namespace: str, sha: str) -> bool:
    try:
        configmap = client.CoreV1Api(api).read_namespaced_config_map(
            "gitsync-rollout-staging", namespace
        )
    except client.ApiException as exc:
        if exc.status == 404:  # no pass has recorded anything yet
            return False
        raise
    data = configmap.data
    return bool(data) and data.get("phase") == "succeeded" and data.get("revision") == sha


def test_both_replicas_show_the_same_page_and_history_survives_a_restart(
    api: client.ApiClient,
    control_plane: ControlPlane,
    sim: Simulator,
    namespace: str,
    tmp_path: Path,
) -> None:
    repo = GitOpsRepo(tmp_path / "gitops", namespace)
    first = repo.revisions[-1]
    ports, agents = {}, {}
    for name in ("agent-a", "agent-b"):
        ports[name] = free_port()
        config = agent_config_file(repo, tmp_path, name, ports[name], namespace)
        agents[name] = start_agent(config, control_plane.kubeconfig, name, tmp_path / f"{name}.log")
    try:
        wait_for(lambda: lease_holder(api, namespace) in agents, timeout=30, what="a leader")
        leader = lease_holder(api, namespace)
        standby = next(n for n in agents if n != leader)
        wait_for(lambda: succeeded(api, namespace, first), timeout=120, what="the first rollout")
        second = repo.commit(
            lambda root: repo.edit("ranker.yaml", "num_replicas: 1", "num_replicas: 2"), "scale"
        )
        wait_for(lambda: succeeded(api, namespace, second), timeout=120, what="the second")
        assert set(annotations(api, namespace)) == {"embedder", "ranker", "summarizer"}
        # Past ui.refreshInterval (2 s): both replicas read the cluster afresh.
        wait_for(
            lambda: (
                (get(ports[standby], "/api/v1/environments/staging")[0] == 200)
                and shown(ports[standby])["history"][:1] == [(second, "succeeded", 1)]
            ),
            timeout=15,
            what="the standby's page to show the second rollout",
        )
        on_leader, on_standby = shown(ports[leader]), shown(ports[standby])
        assert on_standby == on_leader
        assert on_standby["environments"] == ["staging"]
        assert on_standby["applied"] == second
        assert on_standby["rollout"][:3] == (
            second,
            "succeeded",
            [(f"{namespace}/ranker", "serve-update")],
        )
        assert on_standby["history"] == [(second, "succeeded", 1), (first, "succeeded", 3)]
        assert on_standby["last_actions"]["ranker"] == "serve-update"
        _, page = get(ports[standby], "/")
        assert "No environment rolled out yet" not in page
        assert second[:12] in page
        assert ": applied " not in (tmp_path / f"{standby}.log").read_text()  # it ran nothing

        # The Events about the managed RayServices, read from the API: warnings first (one as
        # KubeRay writes them), then gitsync's own; none about a RayService it does not manage.
        for name, reason in (("ranker", "FailedToUpdateService"), ("stranger", "Unrelated")):
            warning(api, namespace, name, reason)

        def shown_events() -> list[dict[str, Any]]:
            code, env = get(ports[standby], "/api/v1/environments/staging")
            return list(env["events"]) if code == 200 else []

        wait_for(
            lambda: [e["reason"] for e in shown_events()[:1]] == ["FailedToUpdateService"],
            timeout=15,
            what="the standby's page to show the warning",
        )
        events = shown_events()
        first_event = events[0]
        assert (first_event["service"], first_event["type"], first_event["source"]) == (
            "ranker",
            "Warning",
            "kuberay-operator",
        )
        assert all(e["type"] == "Normal" for e in events[1:])
        assert any(e["source"] == "gitsync" for e in events[1:]), events
        assert "stranger" not in {e["service"] for e in events}
        _, page = get(ports[standby], "/environments/staging")
        assert "FailedToUpdateService" in page

        for process in agents.values():
            process.send_signal(signal.SIGTERM)
        for process in agents.values():
            assert process.wait(20) == 0
        # A new agent (a fresh cache, nothing in memory) shows the same rollout and history.
        port = free_port()
        config = agent_config_file(repo, tmp_path, "agent-c", port, namespace)
        agents["agent-c"] = start_agent(
            config, control_plane.kubeconfig, "agent-c", tmp_path / "agent-c.log"
        )
        wait_for(
            lambda: get(port, "/api/v1/environments/staging")[0] == 200,
            timeout=30,
            what="the restarted agent's page",
        )
        after = shown(port)
        assert after["history"] == on_leader["history"]
        assert after["rollout"] == on_leader["rollout"]
        assert after["applied"] == second
    finally:
        for process in agents.values():
            if process.poll() is None:
                process.kill()
                process.wait(10)
