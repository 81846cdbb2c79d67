"""Health per KubeRay status state: one YAML fixture per state in tests/unit/health/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gitsync.health import Assessment, HealthGate, assess, starting_cluster
from gitsync.model import Health

FIXTURES = sorted((Path(__file__).parent / "health").glob("*.yaml"))


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.stem)
def test_fixture(fixture: Path) -> None:
    case = yaml.safe_load(fixture.read_text())
    result = assess(case["object"], tuple(case["expectedApps"]))
    assert result.health is Health(case["expect"]["health"]), result
    assert case["expect"]["message"] in result.message


def test_every_health_has_a_fixture() -> None:
    seen = {yaml.safe_load(f.read_text())["expect"]["health"] for f in FIXTURES}
    assert seen == {h.value for h in Health}


def test_gate_needs_consecutive_healthy_reads() -> None:
    healthy, progressing = Assessment(Health.HEALTHY, "ok"), Assessment(Health.PROGRESSING, "wait")
    gate = HealthGate(required=3, settle=0.0)
    seen = []
    for read in (healthy, healthy, progressing, healthy, healthy, healthy):
        gate, result = gate.observe(read, 0.0)
        seen.append(result.health)
    assert seen == [Health.PROGRESSING] * 5 + [Health.HEALTHY]


def test_gate_needs_the_verdict_to_outlast_kuberays_requeue() -> None:
    """Against the real operator a stale RUNNING is read many times until its 2 s requeue."""
    healthy = Assessment(Health.HEALTHY, "ok")
    gate = HealthGate(required=2, settle=5.0)
    results = []
    for now in (10.0, 10.3, 10.6, 12.0, 14.9, 15.0):
        gate, result = gate.observe(healthy, now)
        results.append(result.health)
    assert results == [Health.PROGRESSING] * 5 + [Health.HEALTHY]


def test_gate_needs_consecutive_degraded_reads_too() -> None:
    """A stale DEPLOY_FAILED published with the new generation is no failure."""
    degraded, healthy = Assessment(Health.DEGRADED, "bad"), Assessment(Health.HEALTHY, "ok")
    gate = HealthGate(required=2, settle=1.0)
    gate, first = gate.observe(degraded, 0.0)
    assert first.health is Health.PROGRESSING
    assert "degraded for 0s, 1 read(s)" in first.message
    gate, _ = gate.observe(healthy, 0.5)  # a change of verdict restarts the clock and count
    gate, result = gate.observe(degraded, 0.6)
    assert result.health is Health.PROGRESSING
    gate, result = gate.observe(degraded, 1.2)
    assert result.health is Health.PROGRESSING  # 2 reads, but only 0.6 s
    gate, result = gate.observe(degraded, 1.7)
    assert result.health is Health.DEGRADED


def test_the_cluster_a_service_waits_for_is_the_pending_one_else_the_active_one() -> None:
    def status(**sides: str) -> dict[str, Any]:
        return {"status": {f"{s}ServiceStatus": {"rayClusterName": n} for s, n in sides.items()}}

    assert starting_cluster(status(pending="svc-new", active="svc-old")) == "svc-new"
    assert starting_cluster(status(active="svc-old")) == "svc-old"
    assert starting_cluster({"status": {}}) is None
    assert starting_cluster(None) is None
