"""The layering contract: the pure core does no I/O.

Core modules may import the standard library minus anything that reaches the network, other
processes, the clock or the environment; PyYAML and deepdiff; and other core modules. Git,
the Kubernetes client and HTTP live at the edges (source/, kube/, report/, server, agent, cli).
An allowlist, so a module added to the edges later is forbidden to the core without edits here.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gitsync"
CORE = (
    "gitsync.model",
    "gitsync.errors",
    "gitsync.kuberay",
    "gitsync.plan",
    "gitsync.health",
    "gitsync.manifests",
    "gitsync.diff",
    "gitsync.mask",
    "gitsync.report.status",
    "gitsync.stamp",
    "gitsync.names",
    "gitsync.progress",
    "gitsync.web.facts",
    "gitsync.web.view",
    "gitsync.web.render",
)
CORE_THIRD_PARTY = {"yaml", "deepdiff"}
FORBIDDEN_STDLIB = {
    "socket",
    "ssl",
    "http",
    "urllib",
    "subprocess",
    "asyncio",
    "threading",
    "multiprocessing",
    "time",
    "os",
    "shutil",
    "select",
    "selectors",
    "signal",
}


def is_core(module: str) -> bool:
    return any(module == c or module.startswith(c + ".") for c in CORE)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(source: str, module: str) -> list[str]:
    names: list[str] = []
    package = module if module.endswith("__init__") else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            # `from gitsync import cli` imports a module: judge gitsync.cli, not gitsync.
            submodules = [
                a.name
                for a in node.names
                if base.startswith("gitsync") and is_module(f"{base}.{a.name}")
            ]
            names.extend(f"{base}.{name}" for name in submodules)
            if not submodules:
                names.append(base)
    return names


def is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def violations(module: str, source: str) -> list[str]:
    found = []
    for name in imported(source, module):
        top = name.split(".")[0]
        if name.startswith("gitsync"):
            ok = name == "gitsync" or is_core(name)
        elif top in sys.stdlib_module_names or top == "__future__":
            ok = top not in FORBIDDEN_STDLIB
        else:
            ok = top in CORE_THIRD_PARTY
        if not ok:
            found.append(f"{module} imports {name}")
    return found


def core_modules() -> list[tuple[str, Path]]:
    modules = [(module_name(p), p) for p in sorted(PACKAGE.rglob("*.py"))]
    return [(name, path) for name, path in modules if is_core(name)]


def test_every_core_module_exists() -> None:
    names = {name for name, _ in core_modules()}
    assert set(CORE) <= names


@pytest.mark.parametrize(
    ("module", "path"), core_modules(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_core_module_does_no_io(module: str, path: Path) -> None:
    assert violations(module, path.read_text()) == []


@pytest.mark.parametrize(
    "line",
    [
        "import kubernetes",
        "from kubernetes import client",
        "import git",
        "from git import Repo",
        "import urllib.request",
        "import http.client",
        "import requests",
        "import subprocess",
        "from gitsync.kube import apply",
        "from gitsync import cli",
        "from ..source import poll",
        "import time",
    ],
)
def test_contract_catches_io_in_the_core(line: str) -> None:
    assert violations("gitsync.diff.serve", line + "\n")


@pytest.mark.parametrize(
    "line",
    [
        "import yaml",
        "from deepdiff import DeepDiff",
        "from gitsync.model import ServiceKey",
        "from . import rules",
        "import json",
        "from gitsync import kuberay",
    ],
)
def test_contract_allows_pure_imports(line: str) -> None:
    assert violations("gitsync.diff.serve", line + "\n") == []


# The test bed's KubeRay simulator is the yardstick gitsync's predictions are measured against:
# it must decide with its own reading of KubeRay (testbed/kuberay_rules.py), never with
# gitsync's, or every test of a prediction would check the predictor against itself.
TESTBED = PACKAGE.parent / "testbed"
INDEPENDENT = ("testbed.simulator", "testbed.kuberay_rules")


def all_imports(source: str, module: str) -> list[str]:
    """Every module ``source`` imports, at any depth of the file (functions included)."""
    names: list[str] = []
    package = module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            names.append(base)
            names.extend(f"{base}.{alias.name}" for alias in node.names)
    return names


def gitsync_imports(module: str, seen: set[str] | None = None) -> list[str]:
    """The gitsync modules ``module`` imports, directly or through other testbed modules."""
    seen = seen if seen is not None else set()
    if module in seen:
        return []
    seen.add(module)
    path = TESTBED.parent.joinpath(*module.split(".")).with_suffix(".py")
    found = []
    for name in all_imports(path.read_text(), module):
        if name == "gitsync" or name.startswith("gitsync."):
            found.append(f"{module} imports {name}")
        elif (
            name.startswith("testbed.")
            and TESTBED.parent.joinpath(*name.split(".")).with_suffix(".py").exists()
        ):
            found.extend(gitsync_imports(name, seen))
    return found


@pytest.mark.parametrize("module", INDEPENDENT)
def test_the_simulator_imports_nothing_from_gitsync(module: str) -> None:
    assert gitsync_imports(module) == []


@pytest.mark.parametrize(
    "line",
    [
        "from gitsync import kuberay",
        "from gitsync.model import ServiceKey",
        "import gitsync.kuberay",
        "def f():\n    from gitsync.diff import classify\n",
    ],
)
def test_the_independence_check_catches_gitsync_imports(line: str) -> None:
    assert any(name.startswith("gitsync") for name in all_imports(line + "\n", "testbed.x"))


def test_the_independence_check_follows_testbed_imports() -> None:
    # The demo drives gitsync through testbed/story.py: the check sees through that import.
    assert any(
        f.startswith("testbed.story imports gitsync") for f in gitsync_imports("testbed.demo")
    )
