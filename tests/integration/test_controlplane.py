"""The real control plane: versions, KubeRay CRDs, server-side apply and schema validation."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from testbed.binaries import Binaries
from testbed.controlplane import ControlPlane

from .kube import apply, get, load

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plain-layout"


def test_api_server_reports_the_built_version(api: client.ApiClient, binaries: Binaries) -> None:
    info = client.VersionApi(api).get_code()
    assert info.git_version == binaries.kube_version == "v1.35.4"


def test_kubectl_is_the_built_client(control_plane: ControlPlane) -> None:
    out = json.loads(control_plane.kubectl("version", "-o", "json").stdout)
    assert out["clientVersion"]["gitVersion"] == "v1.35.4"
    assert out["serverVersion"]["gitVersion"] == "v1.35.4"


def test_kuberay_crds_are_established_and_served(api: client.ApiClient) -> None:
    extensions = client.ApiextensionsV1Api(api)
    for name in ("rayservices.ray.io", "rayclusters.ray.io"):
        crd = extensions.read_custom_resource_definition(name)
        assert {c.type: c.status for c in crd.status.conditions}["Established"] == "True"
        managers = {m.manager: m.operation for m in crd.metadata.managed_fields}
        assert managers.get("gitsync-testbed") == "Apply"  # server-side, never client-side
    resources = client.CustomObjectsApi(api).get_api_resources("ray.io", "v1")
    names = {r.name for r in resources.resources}
    assert {"rayservices", "rayservices/status", "rayclusters"} <= names


@pytest.mark.parametrize(
    "path",
    sorted(EXAMPLES.glob("environments/*/*.yaml")),
    ids=lambda p: str(p.relative_to(EXAMPLES)),
)
def test_examples_apply_server_side_as_gitsync(
    api: client.ApiClient, namespace: str, path: Path
) -> None:
    created = apply(api, namespace, load(path))
    managers = {(m["manager"], m["operation"]) for m in created["metadata"]["managedFields"]}
    assert ("gitsync", "Apply") in managers
    stored = get(api, namespace, created["metadata"]["name"])
    # The CRD schema defaults fields Git never wrote (the diff noise gitsync must ignore).
    workers = stored["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert all(w["numOfHosts"] == 1 for w in workers)


INVALID = [
    pytest.param(
        lambda s: s["spec"].pop("rayClusterConfig"),
        422,
        "spec.rayClusterConfig: Required value",
        id="missing-rayClusterConfig",
    ),
    # The seed document writes serveConfigV2 as a mapping; the v1 schema wants a string.
    # Server-side apply converts to the typed object before validating, so a wrong type
    # fails there with a 500 and the schema's expectation in the message.
    pytest.param(
        lambda s: s["spec"].__setitem__("serveConfigV2", {"applications": []}),
        500,
        ".spec.serveConfigV2: expected string",
        id="serveConfigV2-not-a-string",
    ),
    pytest.param(
        lambda s: s["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].__setitem__(
            "replicas", "three"
        ),
        500,
        "expected numeric",
        id="replicas-not-an-integer",
    ),
    pytest.param(
        lambda s: s["spec"]["rayClusterConfig"].pop("headGroupSpec"),
        422,
        "spec.rayClusterConfig.headGroupSpec: Required value",
        id="missing-headGroupSpec",
    ),
]


@pytest.mark.parametrize(("mutate", "status", "message"), INVALID)
def test_invalid_rayservices_are_rejected_by_the_api_server(
    api: client.ApiClient,
    namespace: str,
    mutate: Callable[[dict[str, Any]], object],
    status: int,
    message: str,
) -> None:
    body = load(EXAMPLES / "environments/staging/ranker.yaml")
    mutate(body)
    with pytest.raises(client.ApiException) as caught:
        apply(api, namespace, body)
    assert caught.value.status == status
    assert message in json.loads(caught.value.body)["message"]
    with pytest.raises(client.ApiException) as missing:
        get(api, namespace, "ranker")
    assert missing.value.status == 404


def test_wrong_types_are_422_on_create(api: client.ApiClient, namespace: str) -> None:
    body = load(EXAMPLES / "environments/staging/ranker.yaml")
    body["spec"]["serveConfigV2"] = {"applications": []}
    with pytest.raises(client.ApiException) as caught:
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            "ray.io", "v1", namespace, "rayservices", body
        )
    assert caught.value.status == 422
    assert (
        'spec.serveConfigV2: Invalid value: "object": '
        "spec.serveConfigV2 in body must be of type string"
        in (json.loads(caught.value.body)["message"])
    )


def test_schema_leaves_upgrade_strategy_to_kuberay(api: client.ApiClient, namespace: str) -> None:
    """The CRD has no enum for upgradeStrategy.type: only KubeRay's ValidateRayServiceSpec
    rejects an unknown one, after it was stored. Local validation has to catch it."""
    body = load(EXAMPLES / "environments/staging/ranker.yaml")
    body["spec"]["upgradeStrategy"]["type"] = "Sometimes"
    assert apply(api, namespace, body)["spec"]["upgradeStrategy"]["type"] == "Sometimes"
