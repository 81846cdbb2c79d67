"""The offline schema check agrees with the CRD and with the real API server.

gitsync/manifests/crd_schema.py must be what ``testbed.gen_schema`` derives from the CRD in
the module cache; and every manifest tests/unit/test_crd_schema.py expects ``validate`` to
refuse is refused by the API server's own server-side dry-run apply too, unless it is one the
API server stores and only KubeRay refuses.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from kubernetes import client

from gitsync.manifests import crd_schema
from testbed.binaries import Binaries
from testbed.gen_schema import compact, spec_schema
from tests.unit.test_crd_schema import BASE, CASES, KUBERAY_CASES, mutated

from .kube import GROUP, PLURAL, VERSION

# The CRD declares no enum for upgradeStrategy.type: the API server stores any string and
# KubeRay's ValidateRayServiceSpec refuses it (test_controlplane.py shows the store); the
# KUBERAY_CASES are what ValidateRayClusterSpec refuses.
# kube-apiserver 1.35 does not check the int32 format: it stores maxReplicas 3000000000, which
# KubeRay's Go types (int32) then cannot decode.
KUBERAY_ONLY = {"unknown-upgrade-type", "int32-range", *(c[0] for c in KUBERAY_CASES)}


def test_schema_table_matches_the_crd(binaries: Binaries) -> None:
    nodes, root = compact(spec_schema(binaries.kuberay_crds / "ray.io_rayservices.yaml"))
    assert (nodes, root) == (crd_schema.NODES, crd_schema.SPEC), (
        "run: python -m testbed.gen_schema > gitsync/manifests/crd_schema.py "
        "&& ruff format gitsync/manifests/crd_schema.py"
    )
    assert binaries.kuberay_version == crd_schema.KUBERAY_VERSION


def _dry_run(api: client.ApiClient, namespace: str, text: str) -> None:
    body: dict[str, Any] = yaml.safe_load(text)
    body["metadata"]["namespace"] = namespace
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        body["metadata"]["name"],
        body,
        field_manager="gitsync",
        force=True,
        dry_run="All",
        _content_type="application/apply-patch+yaml",
        _preload_content=False,
    )


def test_the_base_manifest_is_accepted(api: client.ApiClient, namespace: str) -> None:
    _dry_run(api, namespace, BASE)


@pytest.mark.parametrize(("case", "good", "bad"), [c[:3] for c in CASES], ids=[c[0] for c in CASES])
def test_what_validate_refuses_the_api_server_refuses(
    api: client.ApiClient, namespace: str, case: str, good: str, bad: str
) -> None:
    text = mutated(good, bad)
    if case in KUBERAY_ONLY:
        _dry_run(api, namespace, text)
        return
    with pytest.raises(client.ApiException) as caught:
        _dry_run(api, namespace, text)
    # 422 from the schema's validation; 500 when server-side apply cannot even convert the
    # body to the typed object ("expected numeric"), as test_controlplane.py shows.
    assert caught.value.status in (422, 500), caught.value.body
    assert json.loads(caught.value.body)["message"]
