"""Session fixtures for the real test bed: kube-apiserver + etcd built from Go modules, the
KubeRay CRDs, and the KubeRay simulator.

A test that asks for these fixtures fails when the test bed cannot be built or started; it
never skips.
"""

from __future__ import annotations

import contextlib
import json
import os
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
EXAMPLES = REPO_ROOT / "examples" / "plain-layout"


class _Record:
    """One JSON line per test (node id, outcome, seconds of setup + call + teardown) appended
    to $GITSYNC_TEST_RECORD at the end of the session: testbed/ci.py's phase table, slowest
    tests and its check that every collected test ran. Registered in the controlling process
    only (xdist workers forward their reports to it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tests: dict[str, dict[str, object]] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        row = self.tests.setdefault(report.nodeid, {"outcome": "passed", "seconds": 0.0})
        row["seconds"] = float(row["seconds"]) + report.duration  # type: ignore[arg-type]
        if report.failed:
            row["outcome"] = "failed"
        elif report.skipped and row["outcome"] != "failed":
            row["outcome"] = "skipped"

    def pytest_sessionfinish(self) -> None:
        with self.path.open("a") as out:
            for nodeid, row in self.tests.items():
                out.write(json.dumps({"nodeid": nodeid, **row}) + "\n")


def pytest_configure(config: pytest.Config) -> None:
    record = os.environ.get("GITSYNC_TEST_RECORD")
    if record and not hasattr(config, "workerinput"):
        config.pluginmanager.register(_Record(Path(record)), "gitsync-test-record")


DURATIONS = REPO_ROOT / "tests" / "durations.json"


def _module(item: pytest.Item) -> str:
    return item.nodeid.split("::", maxsplit=1)[0]


def _module_seconds() -> dict[str, float]:
    """Each module's seconds in a recent `make test` (tests/durations.json, written by
    `make durations` from the last run's records): only an order, never a bound."""
    try:
        data = json.loads(DURATIONS.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): float(v) for k, v in data.items()} if isinstance(data, dict) else {}


@pytest.hookimpl(tryfirst=True)  # before -m deselects by these markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks ``testbed`` every test of a module where one test needs the test bed's binaries
    (through any fixture), so `make test` can run the others while the binaries build, and
    these in parallel after, a module on one worker (testbed/ci.py): a module is one unit, its
    tests may share module state (test_differential's table reads what the others recorded).
    A test that starts the test bed another way must ask for ``binaries``."""
    needs = {item.path for item in items if "binaries" in getattr(item, "fixturenames", ())}
    for item in items:
        if item.path in needs:
            item.add_marker(pytest.mark.testbed)
    # Longest modules first: parallel workers take whole modules in this order, so the long
    # ones start early instead of finishing last alone. Unknown modules count as long.
    seconds = _module_seconds()
    items.sort(key=lambda item: -seconds.get(_module(item), float("inf")))


@pytest.fixture(scope="session")
def binaries() -> Binaries:
    return ensure_binaries()


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
    simulator.retime(delays)
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
