"""deploy/: the RBAC manifests apply to the real API server and grant exactly what gitsync needs."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed.controlplane import ControlPlane

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
AGENT = "system:serviceaccount:gitsync-system:gitsync"


@pytest.fixture(scope="module")
def deployed(control_plane: ControlPlane) -> ControlPlane:
    control_plane.kubectl(
        "apply",
        "--server-side",
        "--field-manager=gitsync-test",
        "-f",
        str(DEPLOY / "namespace.yaml"),
        "-f",
        str(DEPLOY / "rbac.yaml"),
    )
    return control_plane


def can(plane: ControlPlane, verb: str, resource: str, namespace: str) -> bool:
    result = plane.kubectl(
        "auth", "can-i", verb, resource, "-n", namespace, "--as", AGENT, check=False
    )
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
        ("create", "namespaces", ""),
        ("update", "leases.coordination.k8s.io", "gitsync-system"),
        ("patch", "configmaps", "gitsync-system"),
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
        ("patch", "configmaps", "ray-production"),
    ],
)
def test_agent_may_not(deployed: ControlPlane, verb: str, resource: str, namespace: str) -> None:
    assert not can(deployed, verb, resource, namespace or "default")
