"""deploy/: the RBAC manifests apply to the real API server and grant exactly what gitsync needs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from gitsync.config import load_agent_config
from gitsync.metrics import Metrics
from gitsync.server import AgentServer, Hooks
from gitsync.source.config import TokenAuth
from testbed.binaries import Binaries
from testbed.controlplane import ControlPlane, free_port, spawn

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
BASE = DEPLOY / "base"
EXAMPLE = DEPLOY / "example"
CONFIG = BASE / "gitsync.yaml"  # the configMapGenerator's file
AGENT = "system:serviceaccount:gitsync-system:gitsync"


@pytest.fixture(scope="module")
def deployed(control_plane: ControlPlane) -> ControlPlane:
    control_plane.kubectl(
        "apply",
        "--server-side",
        "--field-manager=gitsync-test",
        "-f",
        str(BASE / "namespace.yaml"),
        "-f",
        str(BASE / "rbac.yaml"),
        "-f",
        str(EXAMPLE / "managed-namespaces.yaml"),
        "-f",
        str(EXAMPLE / "previews.yaml"),
    )
    return control_plane


def can(plane: ControlPlane, verb: str, resource: str, namespace: str, who: str = AGENT) -> bool:
    """``namespace`` "*": in every namespace at once (``kubectl auth can-i -A``)."""
    where = ["-A"] if namespace == "*" else ["-n", namespace]
    result = plane.kubectl("auth", "can-i", verb, resource, *where, "--as", who, check=False)
    answer = result.stdout.strip()
    assert answer in ("yes", "no"), result.stderr
    return answer == "yes"


@pytest.mark.parametrize(
    ("verb", "resource", "namespace"),
    [
        ("patch", "rayservices.ray.io", "ray-production"),
        ("create", "rayservices.ray.io", "ray-production"),
        ("list", "rayservices.ray.io", "ray-staging"),
        ("watch", "rayservices.ray.io", "ray-staging"),
        ("delete", "rayservices.ray.io", "ray-previews"),
        ("get", "rayservices.ray.io/status", "ray-production"),
        ("create", "events", "ray-production"),
        ("create", "events.events.k8s.io", "ray-previews"),
        ("list", "events", "ray-staging"),  # the status page's Events
        ("get", "namespaces", ""),
        ("update", "leases.coordination.k8s.io/gitsync", "gitsync-system"),
        ("get", "leases.coordination.k8s.io/gitsync", "gitsync-system"),
        ("create", "leases.coordination.k8s.io", "gitsync-system"),  # no name to scope by
        ("get", "pods", "gitsync-system"),  # the Lease holder's pod, before relaying to it
        # the rollout state, in a namespace of its own
        ("patch", "configmaps", "gitsync-state"),
        ("create", "configmaps", "gitsync-state"),
        ("list", "configmaps", "gitsync-state"),
        # allowedKinds: the common kinds, in the managed namespaces only
        ("patch", "configmaps", "ray-production"),
        ("delete", "services", "ray-staging"),
        ("list", "ingresses.networking.k8s.io", "ray-staging"),
        # (HTTPRoutes and ServiceMonitors: test_agent_may_manage_every_kind_the_rbac_allows.)
        # a removed preview: its RayServices and other objects, then its state ConfigMap
        ("delete", "configmaps", "ray-previews"),
        ("delete", "services", "ray-previews"),
        ("delete", "configmaps", "gitsync-state"),
    ],
)
def test_agent_may(deployed: ControlPlane, verb: str, resource: str, namespace: str) -> None:
    assert can(deployed, verb, resource, namespace or "default")


@pytest.mark.parametrize(
    ("verb", "resource", "namespace"),
    [
        ("update", "rayservices.ray.io/status", "ray-production"),  # status belongs to KubeRay
        ("patch", "rayclusters.ray.io", "ray-production"),
        ("get", "secrets", "ray-production"),
        ("get", "secrets", "gitsync-system"),
        ("delete", "namespaces", ""),
        ("update", "leases.coordination.k8s.io", "ray-production"),
        # its own config is mounted, never rewritten; only its own Lease is updated
        ("patch", "configmaps/gitsync-config", "gitsync-system"),
        ("update", "configmaps/gitsync-config", "gitsync-system"),
        ("create", "configmaps", "gitsync-system"),
        ("patch", "configmaps/kube-root-ca.crt", "gitsync-system"),
        ("update", "leases.coordination.k8s.io/another", "gitsync-system"),
        ("delete", "leases.coordination.k8s.io/gitsync", "gitsync-system"),
        ("get", "secrets", "gitsync-state"),
        ("patch", "configmaps", "team-unmanaged"),
        ("patch", "deployments.apps", "ray-production"),  # a kind not granted: add its rule
        # RayServices only in the managed namespaces (RoleBindings), never cluster-wide.
        ("delete", "rayservices.ray.io", "default"),
        ("patch", "rayservices.ray.io", "team-unmanaged"),
        ("create", "rayservices.ray.io", "kube-system"),
        ("list", "rayservices.ray.io", "*"),
        ("create", "events", "default"),
        ("create", "namespaces", ""),  # managed namespaces come with their RoleBinding
        ("list", "namespaces", ""),
        ("get", "pods", "ray-production"),
        ("create", "pods", "gitsync-system"),
        ("list", "pods", "gitsync-system"),
        ("create", "pods/exec", "ray-production"),
        ("list", "secrets", "*"),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io", ""),
        ("create", "rolebindings.rbac.authorization.k8s.io", "ray-production"),
        ("bind", "clusterroles.rbac.authorization.k8s.io", ""),
        ("escalate", "clusterroles.rbac.authorization.k8s.io", ""),
        ("escalate", "roles.rbac.authorization.k8s.io", "gitsync-system"),
        ("impersonate", "serviceaccounts", "gitsync-system"),
        ("*", "*", ""),
        ("*", "*", "ray-production"),
        ("*", "*", "*"),
    ],
)
def test_agent_may_not(deployed: ControlPlane, verb: str, resource: str, namespace: str) -> None:
    assert not can(deployed, verb, resource, namespace or "default")


# A Gateway API HTTPRoute CRD reduced to what RBAC looks at (group, plural, scope): the test
# bed builds no Gateway API, and `kubectl auth can-i` answers "no" for a group the API server
# does not serve.
HTTPROUTE_CRD = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: httproutes.gateway.networking.k8s.io
  annotations:  # a *.k8s.io group: the API server requires it (Gateway API's CRDs carry it)
    api-approved.kubernetes.io: https://github.com/kubernetes-sigs/gateway-api/pull/2466
spec:
  group: gateway.networking.k8s.io
  scope: Namespaced
  names: {plural: httproutes, singular: httproute, kind: HTTPRoute, listKind: HTTPRouteList}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"""
# What gitsync does with an object of an allowed kind (kube/objects.py): read it, list the
# managed ones, server-side apply it (create or patch) and prune it.
OBJECT_VERBS = ("get", "list", "create", "patch", "delete")


def test_agent_may_manage_every_kind_the_rbac_allows(
    deployed: ControlPlane, binaries: Binaries, tmp_path: Path
) -> None:
    """Every kind deploy/base/rbac.yaml grants for allowedKinds (read from the file, so a
    kind added there is checked too), its CRD served: each verb gitsync uses, in every
    managed namespace; never in gitsync's own namespace, an unmanaged one or cluster-wide."""
    crds = tmp_path / "crds"
    crds.mkdir()
    (crds / "httproutes.yaml").write_text(HTTPROUTE_CRD)
    source = binaries.monitoring_crds / "monitoring.coreos.com_servicemonitors.yaml"
    (crds / source.name).write_text(source.read_text())
    deployed.install_crds(crds)
    documents = list(yaml.safe_load_all((BASE / "rbac.yaml").read_text()))
    [managed] = [d for d in documents if d["metadata"]["name"] == "gitsync-managed"]
    kinds = [
        f"{resource}.{group}".rstrip(".")
        for rule in managed["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        if group != "ray.io" and resource != "events"  # RayServices and Events: above
    ]
    assert {"httproutes.gateway.networking.k8s.io", "servicemonitors.monitoring.coreos.com",
            "configmaps", "services", "ingresses.networking.k8s.io"} <= set(kinds)  # fmt: skip
    namespaces = [
        d["metadata"]["namespace"]
        for d in yaml.safe_load_all((EXAMPLE / "managed-namespaces.yaml").read_text())
        if d and d["kind"] == "RoleBinding"
    ]
    assert namespaces, "managed-namespaces.yaml binds no namespace"
    wanted = set(OBJECT_VERBS)
    for namespace in namespaces:  # one rules review per namespace, not one can-i per verb
        granted = allowed_verbs(deployed, namespace)
        missing = {k: sorted(wanted - granted.get(k, set())) for k in kinds}
        assert {k: v for k, v in missing.items() if v} == {}, namespace
    for namespace in ("team-unmanaged", "gitsync-system"):
        granted = allowed_verbs(deployed, namespace)
        # gitsync-system holds the agent's own config: no ConfigMap access there either (its
        # rollout state lives in gitsync-state).
        assert {k: granted[k] for k in kinds if granted.get(k)} == {}, namespace
    # The authorizer itself, for the kinds whose CRDs were installed just now; cluster-wide,
    # never.
    assert can(deployed, "create", "httproutes.gateway.networking.k8s.io", namespaces[0])
    assert can(deployed, "delete", "servicemonitors.monitoring.coreos.com", namespaces[-1])
    for kind in kinds:
        assert not can(deployed, "patch", kind, "*"), kind


def allowed_verbs(plane: ControlPlane, namespace: str, who: str = AGENT) -> dict[str, set[str]]:
    """What the agent (or ``who``) may do in ``namespace``, by resource (``kubectl auth can-i
    --list``: one SelfSubjectRulesReview)."""
    result = plane.kubectl("auth", "can-i", "--list", "-n", namespace, "--as", who)
    granted: dict[str, set[str]] = {}
    for line in result.stdout.splitlines()[1:]:
        resource, _, verbs = line.partition(" ")[0], "", line.rsplit("[", 1)[-1]
        granted.setdefault(resource, set()).update(verbs.rstrip("]").split())
    return granted


# -- the kustomize base, monitoring, alerts, dashboard ------------------------------------------


def test_the_kustomize_base_applies_with_a_server_side_dry_run(deployed: ControlPlane) -> None:
    result = deployed.kubectl(
        "apply", "-k", str(BASE), "--server-side", "--dry-run=server",
        "--field-manager=gitsync-test", check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for kind in ("deployment.apps/gitsync", "service/gitsync", "poddisruptionbudget.policy/gitsync",
                 "clusterrole.rbac.authorization.k8s.io/gitsync",
                 "networkpolicy.networking.k8s.io/gitsync"):  # fmt: skip
        assert f"{kind} serverside-applied (server dry run)" in result.stdout, result.stdout
    assert re.search(r"configmap/gitsync-config-[a-z0-9]+ serverside-applied", result.stdout)
    # The agent's own namespaces only: the example's are the example overlay's.
    namespaces = {d["metadata"]["name"] for d in built(deployed, BASE) if d["kind"] == "Namespace"}
    assert namespaces == {"gitsync-system", "gitsync-state"}
    assert not [d for d in built(deployed, BASE) if d["kind"] == "RoleBinding"
                and d["roleRef"]["name"] == "gitsync-managed"]  # fmt: skip


def built(plane: ControlPlane, path: Path) -> list[dict[str, Any]]:
    """What ``kubectl apply -k path`` would apply (kubectl's own kustomize)."""
    return [d for d in yaml.safe_load_all(plane.kubectl("kustomize", str(path)).stdout) if d]


def test_the_example_overlay_adds_the_managed_namespaces(deployed: ControlPlane) -> None:
    result = deployed.kubectl(
        "apply", "-k", str(EXAMPLE), "--server-side", "--dry-run=server",
        "--field-manager=gitsync-test", check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    example = ("ray-staging", "ray-production", "ray-previews")
    for name in example:
        assert f"namespace/{name} serverside-applied" in result.stdout, result.stdout
    assert "deployment.apps/gitsync serverside-applied" in result.stdout
    bound = {d["metadata"]["namespace"] for d in built(deployed, EXAMPLE)
             if d["kind"] == "RoleBinding" and d["roleRef"]["name"] == "gitsync-managed"}  # fmt: skip
    assert bound == set(example)


def test_a_config_change_is_a_new_configmap_so_the_pods_roll(
    deployed: ControlPlane, tmp_path: Path
) -> None:
    """configMapGenerator: the ConfigMap's name carries a hash of gitsync.yaml, and the
    Deployment's pod template names it, so a changed config changes the template."""

    def mounted(base: Path) -> tuple[str, str]:
        documents = built(deployed, base)
        [configmap] = [d for d in documents if d["kind"] == "ConfigMap"]
        [deployment] = [d for d in documents if d["kind"] == "Deployment"]
        volumes = deployment["spec"]["template"]["spec"]["volumes"]
        [volume] = [v for v in volumes if v["name"] == "config"]
        assert volume["configMap"]["name"] == configmap["metadata"]["name"]
        assert "intervals" in yaml.safe_load(configmap["data"]["gitsync.yaml"])
        return configmap["metadata"]["name"], configmap["metadata"]["namespace"]

    copy = tmp_path / "base"
    shutil.copytree(BASE, copy)
    before, namespace = mounted(copy)
    assert (before, namespace) == mounted(BASE)
    config = copy / "gitsync.yaml"
    config.write_text(config.read_text().replace("poll: 30s", "poll: 45s"))
    after, _ = mounted(copy)
    assert before.startswith("gitsync-config-")
    assert after.startswith("gitsync-config-")
    assert after != before
    assert namespace == "gitsync-system"


def test_the_agents_network_policy_lets_in_only_webhooks_and_metrics() -> None:
    """Read, not enforced (the test bed has no network plugin): the policy selects the agent's
    pods; ingress only to the http and metrics ports; egress only to DNS, HTTPS/SSH (the API
    server, Git, the forge) and the leader's http port."""
    [policy] = manifests(BASE / "networkpolicy.yaml")
    deployment = next(d for d in manifests(BASE / "deployment.yaml") if d["kind"] == "Deployment")
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"].items() <= (
        deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    ingress = {port["port"] for rule in spec["ingress"] for port in rule["ports"]}
    assert ingress == {ports["http"], ports["metrics"]}
    assert ports["probes"] not in ingress
    egress = {(port["port"], port["protocol"]) for rule in spec["egress"] for port in rule["ports"]}
    assert egress == {(53, "UDP"), (53, "TCP"), (443, "TCP"), (6443, "TCP"), (22, "TCP"),
                      (ports["http"], "TCP")}  # fmt: skip


def test_the_monitoring_overlay_applies_with_the_operator_crds(
    deployed: ControlPlane, binaries: Binaries, tmp_path: Path
) -> None:
    crds = tmp_path / "crds"
    crds.mkdir()
    for name in ("servicemonitors", "prometheusrules"):
        source = binaries.monitoring_crds / f"monitoring.coreos.com_{name}.yaml"
        (crds / source.name).write_text(source.read_text())
    deployed.install_crds(crds)
    result = deployed.kubectl(
        "apply", "-k", str(DEPLOY / "monitoring"), "--server-side", "--dry-run=server",
        "--field-manager=gitsync-test", check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "servicemonitor.monitoring.coreos.com/gitsync serverside-applied" in result.stdout
    assert "prometheusrule.monitoring.coreos.com/gitsync serverside-applied" in result.stdout


def manifests(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_the_deployment_is_hardened_and_probed() -> None:
    deployment = next(d for d in manifests(BASE / "deployment.yaml") if d["kind"] == "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    [container] = spec["containers"]
    assert deployment["spec"]["replicas"] == 2
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "probes"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "probes"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    config, _ = load_agent_config(CONFIG.read_text(), str(CONFIG))
    assert config is not None
    assert config.probe_listen.endswith(f":{ports['probes']}")  # probes on their own listener
    assert container["resources"]["requests"]["memory"]
    config, _ = load_agent_config(CONFIG.read_text(), str(CONFIG))
    assert config is not None
    assert "--shutdown-timeout" not in container["args"]  # the config's grace period holds
    # Kubernetes SIGKILLs the pod at terminationGracePeriodSeconds: the agent must be done.
    assert spec["terminationGracePeriodSeconds"] > config.shutdown_grace
    secret = next(v for v in spec["volumes"] if v["name"] == "credentials")
    assert secret["secret"]["secretName"] == "gitsync-credentials"


def test_the_shipped_cluster_config_is_valid() -> None:
    config, problems = load_agent_config(CONFIG.read_text(), str(CONFIG))
    assert problems == []
    assert config is not None
    assert config.webhooks.secret is not None


def test_the_shipped_metrics_are_on_a_port_of_their_own_behind_the_secrets_token() -> None:
    """deploy/ serves /metrics only on the metrics port (never the ingress's http port), with
    the Secret's metrics-token, and the ServiceMonitor scrapes that port sending that key."""
    config, _ = load_agent_config(CONFIG.read_text(), str(CONFIG))
    assert config is not None
    deployment = next(d for d in manifests(BASE / "deployment.yaml") if d["kind"] == "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    [container] = spec["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert config.metrics.listen.endswith(f":{ports['metrics']}")
    assert config.metrics.listen != config.listen
    mount = next(m for m in container["volumeMounts"] if m["name"] == "credentials")
    assert config.metrics.bearer is not None
    token_file = config.metrics.bearer.token_file
    assert token_file is not None
    assert token_file.parent == Path(mount["mountPath"])
    [service] = manifests(BASE / "service.yaml")
    assert {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"} in (
        service["spec"]["ports"]
    )
    [monitor] = manifests(DEPLOY / "monitoring" / "servicemonitor.yaml")
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics"
    credentials = endpoint["authorization"]["credentials"]
    secret = next(v for v in spec["volumes"] if v["name"] == "credentials")
    assert credentials == {"name": secret["secret"]["secretName"], "key": token_file.name}


def test_the_shipped_rbac_names_what_the_shipped_config_uses(deployed: ControlPlane) -> None:
    """The Lease the config elects with is the one the Role lets the agent update, and its
    state namespace is where it may write ConfigMaps (not gitsync-system, where its config is)."""
    config, _ = load_agent_config(CONFIG.read_text(), str(CONFIG))
    assert config is not None
    election, state = config.leader_election, config.rollout.state_namespace
    lease = f"leases.coordination.k8s.io/{election.lease_name}"
    assert can(deployed, "update", lease, election.namespace)
    [configmap] = [d for d in built(deployed, BASE) if d["kind"] == "ConfigMap"]
    assert state != configmap["metadata"]["namespace"]
    assert can(deployed, "patch", "configmaps/gitsync-rollout-production", state)
    assert not can(
        deployed, "patch", f"configmaps/{configmap['metadata']['name']}", "gitsync-system"
    )


def rules_file(tmp_path: Path) -> Path:
    [rule] = manifests(DEPLOY / "monitoring" / "prometheusrule.yaml")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    return path


def test_alert_rules_pass_promtool(binaries: Binaries, tmp_path: Path) -> None:
    result = subprocess.run(
        [str(binaries.promtool), "check", "rules", str(rules_file(tmp_path))],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout


FAILED = {
    "summary": "gitsync: a rollout of production failed",
    "description": "The last rollout of production failed or was rolled back. `gitsync status` "
    "and the commit status gitsync/production say which service and why.",
    "runbook_url": "docs/troubleshooting.md#gitsyncrolloutfailed",
}


def test_alerts_fire_on_the_agents_metrics(binaries: Binaries, tmp_path: Path) -> None:
    """promtool's rule unit tests: a failed rollout raises its alert and holds it while the
    failure stands (past any window), on the leader's series only, until a success clears it;
    a missing leader and an hour without a successful pass raise theirs."""
    rules = rules_file(tmp_path)
    failed = {"exp_labels": {"severity": "warning", "environment": "production"},
              "exp_annotations": FAILED}  # fmt: skip
    leader = [
        {"series": 'gitsync_leader{instance="a"}', "values": "1x40"},
        {"series": 'gitsync_leader{instance="b"}', "values": "0x40"},
        # Failed at 2m, still failed at 30m, a success at 32m.
        {"series": 'gitsync_rollout_failed{environment="production",instance="a"}',
         "values": "0 0 1x29 0x9"},
        # A standby's series is what it saw while it led: not the truth now.
        {"series": 'gitsync_rollout_failed{environment="staging",instance="b"}', "values": "1x40"},
    ]  # fmt: skip
    quiet = [
        {"series": 'gitsync_leader{instance="a"}', "values": "0x10 1x90"},
        # production fell behind at 1m (a rollout started) and never caught up; staging is
        # at its revision (no new commit for the whole run: not behind); a standby's stale
        # series of staging, from when it led, does not count.
        {"series": 'gitsync_behind_since_seconds{environment="production",instance="a"}',
         "values": "0 60x100"},
        {"series": 'gitsync_behind_since_seconds{environment="staging",instance="a"}',
         "values": "0x100"},
        {"series": 'gitsync_leader{instance="b"}', "values": "0x100"},
        {"series": 'gitsync_behind_since_seconds{environment="staging",instance="b"}',
         "values": "60x100"},
    ]  # fmt: skip
    no_sync = {
        "exp_labels": {"severity": "warning", "environment": "production"},
        "exp_annotations": {
            "summary": "gitsync: no successful rollout of production for over an hour",
            "description": "A rollout of a newer revision of production started over an hour "
            "ago and none has succeeded since: it failed and is retried, or waits on health.",
            "runbook_url": "docs/troubleshooting.md#gitsyncnosuccessfulsync",
        },
    }
    tests = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": leader,
                "alert_rule_test": [
                    {"eval_time": "1m", "alertname": "GitsyncRolloutFailed", "exp_alerts": []},
                    {
                        "eval_time": "3m",
                        "alertname": "GitsyncRolloutFailed",
                        "exp_alerts": [failed],
                    },
                    {
                        "eval_time": "30m",
                        "alertname": "GitsyncRolloutFailed",
                        "exp_alerts": [failed],
                    },
                    {"eval_time": "35m", "alertname": "GitsyncRolloutFailed", "exp_alerts": []},
                ],
            },
            {
                "interval": "1m",
                "input_series": quiet,
                "alert_rule_test": [
                    {
                        "eval_time": "8m",
                        "alertname": "GitsyncNoLeader",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "critical"},
                                "exp_annotations": {
                                    "summary": "No gitsync replica holds the leader lease",
                                    "description": "Nothing is polling Git or rolling out. "
                                    "Check the gitsync pods and the Lease gitsync-system/gitsync.",
                                    "runbook_url": "docs/troubleshooting.md#gitsyncnoleader",
                                },
                            }
                        ],
                    },
                    {"eval_time": "65m", "alertname": "GitsyncNoSuccessfulSync", "exp_alerts": []},
                    {
                        "eval_time": "75m",
                        "alertname": "GitsyncNoSuccessfulSync",
                        "exp_alerts": [no_sync],
                    },
                ],
            },
        ],
    }
    test_file = tmp_path / "tests.yaml"
    test_file.write_text(yaml.safe_dump(tests))
    result = subprocess.run(
        [str(binaries.promtool), "test", "rules", str(test_file)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_runbook_in_troubleshooting() -> None:
    """Each runbook_url is a heading of docs/troubleshooting.md (GitHub's anchor of it)."""
    text = (DEPLOY.parent / "docs" / "troubleshooting.md").read_text()
    anchors = {
        re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in text.splitlines()
        if line.startswith("#")
    }
    [rule] = manifests(DEPLOY / "monitoring" / "prometheusrule.yaml")
    for alert in rule["spec"]["groups"][0]["rules"]:
        path, _, anchor = alert["annotations"]["runbook_url"].partition("#")
        assert path == "docs/troubleshooting.md", alert["alert"]
        assert anchor in anchors, alert["alert"]
        assert anchor == alert["alert"].lower()


def metric_names() -> set[str]:
    names = set()
    for metric in Metrics().registry.collect():
        names |= {metric.name, f"{metric.name}_total", f"{metric.name}_bucket"}
    return names


def test_the_dashboard_filters_every_environment_metric_by_its_variable() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "gitsync-dashboard.json").read_text())
    [variable] = [v for v in dashboard["templating"]["list"] if v["name"] == "environment"]
    assert variable["query"]["query"] == "label_values(gitsync_sync_total, environment)"
    assert variable["includeAll"] is True
    assert variable["multi"] is True
    # prometheus_client keeps a metric's label names on the metric (no public accessor).
    labelled = {
        f"{m._name}{suffix}"
        for m in vars(Metrics()).values()
        if "environment" in getattr(m, "_labelnames", ())
        for suffix in ("", "_total", "_bucket")
    }
    assert "gitsync_service_health" in labelled
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    for expr in exprs:
        for name, selector in re.findall(r"\b(gitsync_[a-z_]+)(\{[^}]*\})?", expr):
            if name in labelled:
                assert 'environment=~"$environment"' in selector, expr


def test_dashboard_and_alerts_use_only_metrics_the_agent_exports() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "gitsync-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [
        r["expr"]
        for r in manifests(DEPLOY / "monitoring" / "prometheusrule.yaml")[0]["spec"]["groups"][0][
            "rules"
        ]
    ]
    used = {name for expr in exprs for name in re.findall(r"\bgitsync_[a-z_]+", expr)}
    assert used
    assert used <= metric_names(), used - metric_names()


def test_a_real_prometheus_scrapes_the_agents_metrics(binaries: Binaries, tmp_path: Path) -> None:
    """On the metrics port of its own (metrics.listen) behind a bearer token (metrics.auth),
    as Prometheus's authorization.credentials_file sends it."""
    metrics = Metrics()
    metrics.leader.set(1)
    metrics.sync_total.labels("staging", "succeeded").inc()
    hooks = Hooks(lambda: None, "https://x/y.git", "main", lambda: None, lambda: None,
                  lambda: True, lambda: True)  # fmt: skip
    token = tmp_path / "metrics-token"
    token.write_text("scrape-token\n")
    server = AgentServer(
        "127.0.0.1",
        free_port(),
        hooks,
        metrics,
        metrics_listen=("127.0.0.1", 0),
        metrics_token=TokenAuth(token_file=token),
    ).start()
    prometheus_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "gitsync",
                        "static_configs": [{"targets": [f"127.0.0.1:{server.metrics_port}"]}],
                        "authorization": {"credentials_file": str(token)},
                    }
                ],
            }
        )
    )
    process = spawn(
        "prometheus",
        [
            str(binaries.prometheus),
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}",
        ],
        tmp_path / "prometheus.log",
    )
    try:
        deadline = time.monotonic() + 60
        found: list[Any] = []
        while time.monotonic() < deadline and not found:
            time.sleep(0.5)
            query = urllib.parse.quote('gitsync_sync_total{job="gitsync",environment="staging"}')
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{prometheus_port}/api/v1/query?query={query}", timeout=5
                ) as response:
                    found = json.loads(response.read())["data"]["result"]
            except OSError:
                continue
        assert found, (tmp_path / "prometheus.log").read_text()[-2000:]
        assert found[0]["value"][1] == "1"
        with urllib.request.urlopen(
            f"http://127.0.0.1:{prometheus_port}/api/v1/query?query=gitsync_leader", timeout=5
        ) as response:
            assert json.loads(response.read())["data"]["result"][0]["value"][1] == "1"
    finally:
        process.stop()
        server.stop()


# -- the preview namespace's fences -------------------------------------------------------------

POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ray-head", "namespace": "ray-previews"},
       "spec": {"containers": [{"name": "ray-head", "image": "rayproject/ray:2.49.0-py311"}]}}  # fmt: skip


def create(
    plane: ControlPlane, obj: dict[str, Any], *, dry_run: bool = True
) -> subprocess.CompletedProcess[str]:
    """Creates ``obj`` as the API server would (admission included), by default without
    keeping it."""
    return plane.kubectl(
        "create", *(["--dry-run=server"] if dry_run else []), "-o", "json", "-f", "-",
        input_text=json.dumps(obj), check=False,
    )  # fmt: skip


def pod_with(**spec: Any) -> dict[str, Any]:
    pod = json.loads(json.dumps(POD))
    for key, value in spec.items():
        if key == "container":
            pod["spec"]["containers"][0].update(value)
        else:
            pod["spec"][key] = value
    return pod


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ({"container": {"securityContext": {"privileged": True}}}, "privileged"),
        ({"hostNetwork": True}, "host namespaces"),
        ({"hostPID": True}, "host namespaces"),
        ({"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}, "hostPath volumes"),
        ({"container": {"ports": [{"containerPort": 8265, "hostPort": 8265}]}}, "hostPort"),
        ({"container": {"securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}},
         "non-default capabilities"),
    ],
    ids=["privileged", "hostNetwork", "hostPID", "hostPath", "hostPort", "SYS_ADMIN"],
)  # fmt: skip
def test_the_preview_namespace_refuses_pods_that_take_the_node(
    deployed: ControlPlane, spec: dict[str, Any], why: str
) -> None:
    """Pod Security admission, built into the real kube-apiserver, is the fence that holds
    whatever gitsync's own policy lets through (or if previews.policy is turned off)."""
    result = create(deployed, pod_with(**spec))
    assert result.returncode != 0
    assert 'violates PodSecurity "baseline:latest"' in result.stderr, result.stderr
    assert why in result.stderr, result.stderr


def test_a_ray_pod_as_kuberay_makes_it_is_admitted_with_defaults(deployed: ControlPlane) -> None:
    result = create(deployed, POD)
    assert result.returncode == 0, result.stderr
    # "restricted" is warned about (and audited), not enforced: see managed-namespaces.yaml.
    assert 'would violate PodSecurity "restricted:latest"' in result.stderr
    [container] = json.loads(result.stdout)["spec"]["containers"]
    assert container["resources"] == {  # the LimitRange's, so the quota can count it
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"cpu": "1", "memory": "2Gi"},
    }


def test_the_preview_quota_refuses_gpus_exposure_and_huge_pods(deployed: ControlPlane) -> None:
    """The API server's ResourceQuota admission counts against the quota's status, which
    kube-controller-manager's quota controller fills in; the test bed runs none, so the test
    writes the status that controller would (nothing used yet). The requests are real
    creates, refused: nothing of them is kept."""
    [quota] = [q for q in manifests(EXAMPLE / "previews.yaml") if q["kind"] == "ResourceQuota"]
    hard = quota["spec"]["hard"]
    status = {"status": {"hard": hard, "used": dict.fromkeys(hard, "0")}}
    deployed.kubectl(
        "patch", "resourcequota", "previews", "-n", "ray-previews", "--subresource=status",
        "--type=merge", "-p", json.dumps(status),
    )  # fmt: skip
    gpu = pod_with(container={"resources": {"limits": {"nvidia.com/gpu": "1"}}})
    result = create(deployed, gpu, dry_run=False)
    assert result.returncode != 0
    assert "exceeded quota: previews" in result.stderr, result.stderr
    huge = pod_with(container={"resources": {"limits": {"cpu": "64", "memory": "2Gi"}}})
    result = create(deployed, huge, dry_run=False)
    assert result.returncode != 0
    assert "maximum cpu usage per Container is 4" in result.stderr, result.stderr
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "exposed", "namespace": "ray-previews"},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 8265}]},
    }  # fmt: skip
    result = create(deployed, service, dry_run=False)
    assert result.returncode != 0
    assert "exceeded quota: previews" in result.stderr, result.stderr


def test_preview_network_policies_deny_by_default_and_allow_no_way_out() -> None:
    """Read, not enforced: the test bed has no network plugin. Every pod is covered by a
    default deny both ways; egress goes only to the namespace itself and to cluster DNS on 53;
    ingress only from the namespace, the KubeRay operator (8265) and the labelled ingress
    namespaces (8000)."""
    policies = {p["metadata"]["name"]: p for p in manifests(EXAMPLE / "previews.yaml")
                if p["kind"] == "NetworkPolicy"}  # fmt: skip
    assert all(p["metadata"]["namespace"] == "ray-previews" for p in policies.values())
    deny = policies["default-deny"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    egress = [rule for p in policies.values() for rule in p["spec"].get("egress", ())]
    for rule in egress:
        for peer in rule["to"]:
            assert "ipBlock" not in peer
            if "namespaceSelector" in peer:  # only cluster DNS, only port 53
                assert peer == {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                }  # fmt: skip
                assert {p["port"] for p in rule["ports"]} == {53}
    ingress = {(name, port["port"]) for name, p in policies.items()
               for rule in p["spec"].get("ingress", ()) for port in rule.get("ports", ())}  # fmt: skip
    assert ingress == {("kuberay-operator", 8265), ("serve-from-ingress", 8000)}


# -- the Helm chart -------------------------------------------------------------------------

CHART = DEPLOY / "helm" / "gitsync"
CHART_NAME, CHART_NS, CHART_STATE = "gitsync-chart", "gitsync-chart-system", "gitsync-chart-state"
CHART_PREVIEWS = "ray-previews-chart"
CHART_AGENT = f"system:serviceaccount:{CHART_NS}:{CHART_NAME}"
CHART_VALUES = {
    "name": CHART_NAME,
    "config": {"repository": {"url": "https://git.example.com/platform/ray-services.git"}},
    "stateNamespace": {"name": CHART_STATE, "create": True},
    "managedNamespaces": [{"name": "ray-staging"}, {"name": "ray-production"}],
    "previews": {"enabled": True, "namespace": CHART_PREVIEWS, "create": True},
    "monitoring": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}},
}


def helm(binaries: Binaries, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The test bed's helm, with no kubeconfig and no home it could read a cluster from."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), "HELM_CACHE_HOME": str(cwd / "cache")}
    return subprocess.run(
        [str(binaries.helm), *args],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=120, check=False,
    )  # fmt: skip


def chart(binaries: Binaries, tmp: Path, values: dict[str, Any]) -> list[dict[str, Any]]:
    (tmp / "values.yaml").write_text(yaml.safe_dump(values))
    run = helm(
        binaries, "template", "gitsync", str(CHART), "--namespace", CHART_NS,
        "-f", str(tmp / "values.yaml"), cwd=tmp,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return [d for d in yaml.safe_load_all(run.stdout) if d]


@pytest.fixture(scope="module")
def charted(
    deployed: ControlPlane, binaries: Binaries, tmp_path_factory: pytest.TempPathFactory
) -> ControlPlane:
    """The chart rendered by the real helm and applied to the API server beside deploy/base
    (other names, other namespaces), its monitoring objects with the Prometheus Operator's
    CRDs."""
    tmp = tmp_path_factory.mktemp("helm")
    lint = helm(
        binaries, "lint", "--strict", str(CHART), "--set", "config.repository.url=https://x/y.git",
        cwd=tmp,
    )  # fmt: skip
    assert lint.returncode == 0, lint.stdout + lint.stderr
    crds = tmp / "crds"
    crds.mkdir()
    for name in ("servicemonitors", "prometheusrules"):
        source = binaries.monitoring_crds / f"monitoring.coreos.com_{name}.yaml"
        (crds / source.name).write_text(source.read_text())
    deployed.install_crds(crds)
    deployed.kubectl("create", "namespace", CHART_NS)
    rendered = tmp / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(chart(binaries, tmp, CHART_VALUES)))
    applied = deployed.kubectl(
        "apply", "--server-side", "--field-manager=gitsync-test", "-f", str(rendered),
        check=False,
    )  # fmt: skip
    assert applied.returncode == 0, applied.stderr
    return deployed


def test_the_helm_chart_needs_the_repository_and_renders_every_object(
    binaries: Binaries, tmp_path: Path
) -> None:
    refused = helm(binaries, "template", "gitsync", str(CHART), cwd=tmp_path)
    assert refused.returncode != 0
    assert "config.repository.url is required" in refused.stderr
    kinds = {(d["kind"], d["metadata"]["name"]) for d in chart(binaries, tmp_path, CHART_VALUES)}
    for wanted in (
        ("Deployment", CHART_NAME), ("Service", CHART_NAME), ("PodDisruptionBudget", CHART_NAME),
        ("ConfigMap", f"{CHART_NAME}-config"), ("ServiceMonitor", CHART_NAME),
        ("PrometheusRule", CHART_NAME), ("Namespace", CHART_STATE), ("Namespace", CHART_PREVIEWS),
        ("NetworkPolicy", "default-deny"), ("ResourceQuota", "previews"),
    ):  # fmt: skip
        assert wanted in kinds, wanted
    assert not any(kind == "ClusterRole" and "capacity" in name for kind, name in kinds)
    with_capacity = chart(binaries, tmp_path, {**CHART_VALUES, "capacity": {"enabled": True}})
    bound = {d["metadata"].get("namespace") for d in with_capacity
             if d["kind"] == "RoleBinding" and d["metadata"]["name"] == f"{CHART_NAME}-capacity"}  # fmt: skip
    assert bound == {"ray-staging", "ray-production", CHART_PREVIEWS}


def test_the_helm_charts_agent_may_do_exactly_what_the_kustomize_bases_may(
    charted: ControlPlane,
) -> None:
    """Namespace by namespace, one rules review each for both ServiceAccounts."""
    pairs = [
        ("ray-staging", "ray-staging"),
        ("ray-production", "ray-production"),
        ("ray-previews", CHART_PREVIEWS),
        ("gitsync-system", CHART_NS),
        ("gitsync-state", CHART_STATE),
        ("team-unmanaged", "team-unmanaged"),
    ]
    for base, ours in pairs:
        assert allowed_verbs(charted, ours, CHART_AGENT) == allowed_verbs(charted, base), (
            base,
            ours,
        )
    # And the lease it may update is its own name's, which its config names.
    assert can(charted, "update", f"leases.coordination.k8s.io/{CHART_NAME}", CHART_NS, CHART_AGENT)
    assert not can(charted, "update", "leases.coordination.k8s.io/gitsync", CHART_NS, CHART_AGENT)


def test_the_helm_charts_config_is_valid_and_a_change_rolls_the_pods(
    binaries: Binaries, tmp_path: Path
) -> None:
    def rendered(values: dict[str, Any]) -> tuple[str, str]:
        docs = chart(binaries, tmp_path, values)
        [config] = [d for d in docs if d["kind"] == "ConfigMap"]
        [deployment] = [d for d in docs if d["kind"] == "Deployment"]
        checksum = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        return config["data"]["gitsync.yaml"], checksum

    text, before = rendered(CHART_VALUES)
    config, problems = load_agent_config(text)
    assert config is not None, problems
    assert config.leader_election.namespace == CHART_NS
    assert config.leader_election.lease_name == CHART_NAME
    assert config.rollout.state_namespace == CHART_STATE
    faster = {**CHART_VALUES, "config": {**CHART_VALUES["config"], "intervals": {"poll": "10s"}}}
    _, after = rendered(faster)
    assert after != before


def test_the_helm_charts_alerts_are_deploy_monitorings(binaries: Binaries, tmp_path: Path) -> None:
    [rule] = [d for d in chart(binaries, tmp_path, CHART_VALUES) if d["kind"] == "PrometheusRule"]
    [shipped] = manifests(DEPLOY / "monitoring" / "prometheusrule.yaml")
    assert rule["spec"] == shipped["spec"]
