"""gitsync/diff/crd_defaults.py is exactly what the CRD in the module cache declares."""

from __future__ import annotations

from gitsync.diff import crd_defaults
from testbed import crds
from testbed.binaries import Binaries
from testbed.gen_defaults import defaults


def test_defaults_table_matches_the_crd(binaries: Binaries) -> None:
    crd = crds.crd(binaries.kuberay_crds / "ray.io_rayservices.yaml")
    schema = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"][
        "openAPIV3Schema"
    ]
    expected = tuple(defaults(schema["properties"]["spec"], ("spec",)))
    assert expected == crd_defaults.RAYSERVICE_DEFAULTS, (
        "run: python -m testbed.gen_defaults > gitsync/diff/crd_defaults.py"
    )
    assert binaries.kuberay_version == crd_defaults.KUBERAY_VERSION
    assert (
        ("spec", "rayClusterConfig", "workerGroupSpecs", "[]", "maxReplicas"),
        2147483647,
    ) in expected
