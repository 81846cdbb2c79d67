"""Session fixtures for the real test bed: kube-apiserver + etcd built from Go modules, the
KubeRay CRDs, and the KubeRay simulator.

A test that asks for these fixtures fails when the test bed cannot be built or started; it
never skips.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from testbed.binaries import Binaries, ensure_binaries
from testbed.controlplane import ControlPlane
from testbed.gitea import Gitea
from testbed.simulator import Delays, Simulator

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = REPO_ROOT / "examples" / "repo-layout"


@pytest.fixture(scope="session")
def binaries() -> Binaries:
    return ensure_binaries()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that reaches the built binaries (all test-bed fixtures start from
    ``binaries``) is marked ``testbed``, so ``-m 'not testbed'`` selects the tests that run
    without Go or a build, as ``make test-min-deps`` does."""
    for item in items:
        if "binaries" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.testbed)


@pytest.fixture(scope="session")
def control_plane(
    binaries: Binaries, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ControlPlane]:
    plane = ControlPlane(binaries=binaries, workdir=tmp_path_factory.mktemp("controlplane"))
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def gitea(binaries: Binaries, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gitea]:
    """A real Gitea (SQLite, loopback) with an admin and a scoped token."""
    with Gitea(binaries, tmp_path_factory.mktemp("gitea")) as forge:
        yield forge


@pytest.fixture(scope="session")
def api(control_plane: ControlPlane) -> Iterator[client.ApiClient]:
    with control_plane.api_client() as api_client:
        yield api_client


@pytest.fixture(scope="session")
def simulator(api: client.ApiClient, control_plane: ControlPlane) -> Iterator[Simulator]:
    with control_plane.api_client() as sim_api:
        sim = Simulator(
            sim_api, Delays(cluster_start=0.3, app_deploy=0.4, tick=0.05, requeue=1.0), seed=7
        )
        sim.start()
        try:
            yield sim
        finally:
            sim.stop()


@pytest.fixture
def sim(simulator: Simulator) -> Iterator[Simulator]:
    """The session simulator with this test's failure rules removed afterwards."""
    simulator.clear_rules()
    simulator.zero_downtime_env = True
    simulator.errors.clear()
    delays = simulator.delays
    yield simulator
    simulator.delays = delays
    simulator.clear_rules()
    simulator.zero_downtime_env = True
    assert not simulator.errors, simulator.errors


@contextlib.contextmanager
def fresh_namespace(api: client.ApiClient, prefix: str = "t") -> Iterator[str]:
    """A new namespace with a random name, deleted afterwards with its RayServices."""
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    # No namespace controller runs in the test bed: delete the RayServices explicitly, or
    # they would outlive the test in a namespace stuck Terminating.
    client.CustomObjectsApi(api).delete_collection_namespaced_custom_object(
        "ray.io", "v1", name, "rayservices"
    )
    core.delete_namespace(name)


@pytest.fixture
def namespace(api: client.ApiClient) -> Iterator[str]:
    with fresh_namespace(api) as name:
        yield name
