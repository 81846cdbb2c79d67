"""Event-driven drift in a real ``gitsync run``: another writer's edit to a managed RayService
is a Drift Event, a metric and a status-page finding within 2 s, and with ``selfHeal`` it is
corrected within 5 s, while the scheduled check (an hour away) has not run."""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

from kubernetes import client

from testbed.controlplane import ControlPlane, free_port
from testbed.simulator import Simulator

from .gitops import GitOpsRepo
from .kube import GROUP, PLURAL, VERSION, get
from .test_agent import agent_config_file, scrape, start_agent

EDIT_BOUND, HEAL_BOUND = 2.0, 5.0


def until(predicate: Any, timeout: float, what: str) -> float:
    began = time.monotonic()
    while not predicate():
        assert time.monotonic() - began < timeout, f"not within {timeout}s: {what}"
        time.sleep(0.05)
    return time.monotonic() - began


def drift_events(api: client.ApiClient, namespace: str, name: str) -> list[Any]:
    return [
        e
        for e in client.CoreV1Api(api).list_namespaced_event(namespace).items
        if e.reason == "Drift" and e.involved_object.name == name
    ]


def status_page(port: int) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/api/v1/environments/staging"
    with urllib.request.urlopen(url, timeout=5) as response:
        found: dict[str, Any] = json.loads(response.read())
        return found


def replicas(api: client.ApiClient, namespace: str) -> str:
    found = re.search(
        r"num_replicas: (\d+)", get(api, namespace, "ranker")["spec"]["serveConfigV2"]
    )
    assert found is not None
    return found.group(1)


def test_a_kubectl_edit_is_drift_in_seconds_and_healed(
    api: client.ApiClient,
    control_plane: ControlPlane,
    sim: Simulator,
    namespace: str,
    tmp_path: Path,
) -> None:
    repo = GitOpsRepo(tmp_path / "gitops", namespace, self_heal=True)
    port = free_port()
    config = agent_config_file(
        repo,
        tmp_path,
        "agent",
        port,
        namespace,
        intervals={"poll": "1s", "drift": "1h"},
        drift={"correctionLimit": 1, "correctionWindow": "1h"},
    )
    log = tmp_path / "agent.log"
    agent = start_agent(config, control_plane.kubeconfig, "agent-0", log)
    try:
        until(
            lambda: "succeeded: 3 applied" in log.read_text(),
            90,
            "the first rollout",
        )
        time.sleep(2.0)  # the first health refresh and the simulator's status writes settle
        wanted = replicas(api, namespace)
        edited = edit(api, namespace)
        seen = until(lambda: drift_events(api, namespace, "ranker"), EDIT_BOUND, "the Drift Event")
        until(
            lambda: 'gitsync_drift_detected_total{environment="staging"}' in scrape(port),
            EDIT_BOUND - seen,
            "the drift metric",
        )
        until(lambda: "kubectl-edit" in json.dumps(status_page(port)), 1.0, "the status page")
        found = time.monotonic() - edited
        until(lambda: replicas(api, namespace) == wanted, HEAL_BOUND, "the correction")
        healed = time.monotonic() - edited
        print(f"edit → Drift Event {seen:.2f}s, metric and page {found:.2f}s, healed {healed:.2f}s")
        assert found < EDIT_BOUND
        assert healed < HEAL_BOUND
        assert "changed by another writer: checking staging for drift" in log.read_text()
        until(lambda: "DriftCorrected" in reasons(api, namespace), 10, "DriftCorrected")
        # The anti-fight limit (1 correction an hour here) still holds: the next edit is
        # reported as a fight and left alone.
        until(lambda: "succeeded: 1 applied" in log.read_text(), 10, "the heal's rollout")
        edit(api, namespace)
        until(lambda: "DriftFight" in reasons(api, namespace), EDIT_BOUND, "the DriftFight Event")
        # The first check on events after the pass was whole; this one, of the ranker only.
        assert f"drift check of {namespace}/ranker only" in log.read_text()
        time.sleep(HEAL_BOUND)
        assert replicas(api, namespace) != wanted, "corrected past the limit"
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)
        print(log.read_text()[-3000:])


def edit(api: client.ApiClient, namespace: str) -> float:
    """kubectl edit of the ranker's first num_replicas (+3) as another field manager."""
    live = get(api, namespace, "ranker")
    text = re.sub(
        r"num_replicas: (\d+)",
        lambda m: f"num_replicas: {int(m.group(1)) + 3}",
        live["spec"]["serveConfigV2"],
        count=1,
    )
    edited = time.monotonic()
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "ranker", {"spec": {"serveConfigV2": text}},
        field_manager="kubectl-edit",
    )  # fmt: skip
    return edited


def reasons(api: client.ApiClient, namespace: str) -> set[str]:
    return {e.reason for e in client.CoreV1Api(api).list_namespaced_event(namespace).items}
