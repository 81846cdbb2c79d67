"""requirements.lock: gitsync's runtime dependencies pinned with hashes, for the image.

``python -m testbed.lockfile`` resolves pyproject.toml's ``[project] dependencies`` with pip
itself (``pip install --dry-run --report``, wheels only, for the image's platform: CPython
3.11 on manylinux x86_64) and writes every package of the resolution as ``name==version`` with
the sha256 of the wheel pip chose. The Dockerfile installs from it with ``--require-hashes``.

The header records a digest of the dependency list it was resolved from:
tests/test_lockfile.py fails when pyproject.toml's dependencies change and the lock was not
written again, or when a locked version falls outside a declared range.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
PLATFORM = (
    "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
    "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_28_x86_64",
)  # fmt: skip
DIGEST_LINE = "# pyproject dependencies sha256: "


def declared() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return list(project["dependencies"])


def digest(requirements: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(requirements)).encode()).hexdigest()


def resolve(requirements: list[str]) -> list[dict[str, Any]]:
    """pip's resolution for the image's platform: one entry per package to install."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
             "--only-binary", ":all:", *PLATFORM, "--target", str(Path(scratch) / "target"),
             "--report", str(report), *requirements],
            check=True,
        )  # fmt: skip
        installs: list[dict[str, Any]] = json.loads(report.read_text())["install"]
        return installs


def render(requirements: list[str], installs: list[dict[str, Any]]) -> str:
    lines = [
        "# gitsync's runtime dependencies for the image (CPython 3.11, manylinux x86_64), each",
        "# wheel's sha256 as pip chose it. Written by `python -m testbed.lockfile`; checked",
        "# against pyproject.toml by tests/test_lockfile.py; installed by the Dockerfile.",
        f"{DIGEST_LINE}{digest(requirements)}",
    ]
    for item in sorted(installs, key=lambda i: i["metadata"]["name"].lower()):
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        sha = item["download_info"]["archive_info"]["hashes"]["sha256"]
        lines += [f"{name}=={version} \\", f"    --hash=sha256:{sha}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    requirements = declared()
    LOCK.write_text(render(requirements, resolve(requirements)))
    print(f"wrote {LOCK.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
