"""The layering contracts, run by pytest as `make lint` runs them (lint-imports).

pyproject.toml's [tool.importlinter] holds the contracts (docs/architecture.md, Layers): the
wiring's layer order, the edges below it, only kube/ importing ``kubernetes``, only source/
running git, only the HTTP server importing uvicorn and Starlette, and the pure core importing only an allowlist (testbed/import_contracts.py).
Each contract is also run on a copy of the package with one import that breaks it, so a
contract that no longer checks anything fails here.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "gitsync"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(root: Path, contract: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = [str(LINT_IMPORTS), "--no-cache"]
    argv += ["--contract", contract] if contract else []
    # lint-imports puts its working directory first on sys.path: `gitsync` is the one in root.
    env = {**os.environ, "PYTHONPATH": str(root), "NO_COLOR": "1"}
    return subprocess.run(
        argv, cwd=root, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_package_keeps_every_contract() -> None:
    run = lint_imports(ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


# One import per contract that breaks it: (contract id, module file, line appended).
BREAKS = [
    ("wiring", "planning.py", "from gitsync import sync"),
    ("wiring", "rollout.py", "from gitsync.planning import live_plans"),
    ("edges", "kube/lease.py", "import gitsync.rollout"),
    ("kubernetes", "agent.py", "from kubernetes import client"),
    ("git", "report/http.py", "import git"),
    ("git", "planning.py", "import subprocess"),
    ("http", "web/site.py", "from starlette.responses import Response"),
    ("http", "agent.py", "import uvicorn"),
    ("core", "mask.py", "import socket"),
    ("core", "diff/serve.py", "def _later():\n    import time"),
    ("core", "model.py", "from gitsync.kube import client"),
    ("core", "stamp.py", "import urllib3"),
]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the package with the contracts and their config, which keeps every one."""
    root = tmp_path_factory.mktemp("layering")
    shutil.copytree(PACKAGE, root / "gitsync", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "testbed").mkdir()
    for name in ("__init__.py", "import_contracts.py"):
        shutil.copy(ROOT / "testbed" / name, root / "testbed" / name)
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    run = lint_imports(root)
    assert run.returncode == 0, run.stdout + run.stderr
    return root


@pytest.mark.parametrize(("contract", "module", "line"), BREAKS)
def test_a_contract_catches_an_import_that_breaks_it(
    pristine: Path, tmp_path: Path, contract: str, module: str, line: str
) -> None:
    root = tmp_path / "copy"
    shutil.copytree(pristine, root)
    with (root / "gitsync" / module).open("a") as f:
        f.write(f"\n{line}\n")
    run = lint_imports(root, contract)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "1 broken" in run.stdout


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
