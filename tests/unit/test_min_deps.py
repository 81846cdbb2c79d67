"""tests/constraints-minimum.txt pins exactly the lower bounds pyproject.toml declares.

`make test-min-deps` installs gitsync with those pins and runs the tests that need no test
bed, so a declared minimum is one the tests have passed on. A bound raised in pyproject.toml
and not in the constraints (or the other way round) would prove nothing; this keeps them
equal.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CONSTRAINTS = REPO_ROOT / "tests" / "constraints-minimum.txt"
# What make test-min-deps installs beside gitsync (the rest of the test extra is tooling for
# lint, benchmarks and the browser tests).
TEST_TOOLS = {"pytest", "pytest-timeout", "hypothesis", "setuptools", "import-linter"}
_REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(.*)$")


def normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lower_bound(requirement: str) -> tuple[str, str | None]:
    """``"APScheduler>=3.10,<4"`` → ``("apscheduler", "3.10")``; no ``>=``: None."""
    match = _REQUIREMENT.match(requirement.split(";", maxsplit=1)[0].strip())
    assert match, requirement
    floors = [s.strip()[2:].strip() for s in match.group(2).split(",") if s.strip()[:2] == ">="]
    return normalised(match.group(1)), floors[0] if floors else None


def pins() -> dict[str, str]:
    found: dict[str, str] = {}
    for raw in CONSTRAINTS.read_text().splitlines():
        line = raw.split("#", maxsplit=1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"{CONSTRAINTS.name}: {line!r} is not pinned with =="
            found[normalised(name.strip())] = version.strip()
    return found


def declared() -> dict[str, str | None]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    requirements = [
        *project["project"]["dependencies"],
        *project["build-system"]["requires"],
        *project["project"]["optional-dependencies"]["test"],
    ]
    return dict(lower_bound(r) for r in requirements)


def same_version(a: str, b: str) -> bool:
    """``3.10`` and ``3.10.0`` name the same release."""

    def parts(v: str) -> list[str]:
        items = v.split(".")
        while len(items) > 1 and items[-1] == "0":
            items.pop()
        return items

    return parts(a) == parts(b)


def test_every_runtime_dependency_has_a_lower_bound_pinned_in_the_constraints() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    runtime = dict(lower_bound(r) for r in project["project"]["dependencies"])
    missing_floor = sorted(name for name, floor in runtime.items() if floor is None)
    assert not missing_floor, f"no >= lower bound in pyproject.toml: {missing_floor}"
    assert set(runtime) <= set(pins()), sorted(set(runtime) - set(pins()))


def test_each_pin_is_the_declared_lower_bound() -> None:
    bounds = declared()
    for name, version in pins().items():
        assert name in bounds, f"{name} is pinned but not a dependency in pyproject.toml"
        floor = bounds[name]
        assert floor is not None, f"{name} has no >= lower bound in pyproject.toml"
        assert same_version(floor, version), (
            f"pyproject.toml says {name}>={floor}; {CONSTRAINTS.name} pins {name}=={version}"
        )
    assert set(TEST_TOOLS) <= set(pins())
