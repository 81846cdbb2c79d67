"""Health per KubeRay status state: one YAML fixture per state in tests/unit/health/."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gitsync.health import Assessment, HealthGate, assess
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
    gate = HealthGate(required=3)
    seen = []
    for read in (healthy, healthy, progressing, healthy, healthy, healthy):
        gate, result = gate.observe(read)
        seen.append(result.health)
    assert seen == [Health.PROGRESSING] * 5 + [Health.HEALTHY]


def test_gate_needs_consecutive_degraded_reads_too() -> None:
    """A stale DEPLOY_FAILED published once with the new generation is no failure."""
    degraded, healthy = Assessment(Health.DEGRADED, "bad"), Assessment(Health.HEALTHY, "ok")
    gate = HealthGate(required=2)
    gate, first = gate.observe(degraded)
    assert first.health is Health.PROGRESSING
    assert "degraded 1 of 2" in first.message
    gate, _ = gate.observe(healthy)  # a change of verdict restarts the count
    gate, result = gate.observe(degraded)
    assert result.health is Health.PROGRESSING
    gate, result = gate.observe(degraded)
    assert result.health is Health.DEGRADED
