"""requirements.lock matches pyproject.toml, the Dockerfile installs from it, and
``gitsync --version`` names it (testbed/lockfile.py writes it)."""

from __future__ import annotations

import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from gitsync.cli import lock_text, version_text
from testbed.lockfile import DIGEST_LINE, LOCK, ROOT, declared, digest

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+) \\$")


def pins() -> dict[str, str]:
    return {
        canonicalize_name(m.group(1)): m.group(2)
        for line in LOCK.read_text().splitlines()
        if (m := _PIN.match(line))
    }


def test_the_lock_was_written_from_the_declared_dependencies() -> None:
    """A dependency added, removed or re-bounded in pyproject.toml without
    `python -m testbed.lockfile` fails here."""
    [line] = [x for x in LOCK.read_text().splitlines() if x.startswith(DIGEST_LINE)]
    assert line.removeprefix(DIGEST_LINE) == digest(declared()), (
        "pyproject.toml's dependencies changed: run `python -m testbed.lockfile`"
    )


def test_every_declared_dependency_is_locked_within_its_range() -> None:
    locked = pins()
    for text in declared():
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement.name} is not in requirements.lock"
        assert requirement.specifier.contains(locked[name]), (text, locked[name])


def test_every_pin_has_its_hash() -> None:
    lines = LOCK.read_text().splitlines()
    for index, line in enumerate(lines):
        if _PIN.match(line):
            assert re.fullmatch(r"    --hash=sha256:[0-9a-f]{64}", lines[index + 1]), line
    assert len(pins()) == sum(1 for line in lines if "--hash=sha256:" in line)


def test_the_image_installs_from_the_lock_and_keeps_it_for_version() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "--require-hashes" in dockerfile
    assert "-r requirements.lock" in dockerfile
    assert "--no-deps ." in dockerfile  # gitsync itself adds nothing unlocked
    assert "COPY requirements.lock /usr/local/share/gitsync/requirements.lock" in dockerfile
    froms = re.findall(r"^FROM (\S+)(?: AS (\S+))?", dockerfile, re.MULTILINE)
    assert froms
    # Every stage whose files reach the image is the pinned base; the renderers' stage builds
    # two Go binaries at pinned module versions (the Go checksum database verifies them).
    assert all(image.startswith("${BASE}") for image, stage in froms if stage != "renderers")
    assert "COPY --from=renderers /out/kustomize /out/helm /usr/local/bin/" in dockerfile
    assert re.search(r"^ARG BASE=python:3\.11-slim\S*@sha256:[0-9a-f]{64}$", dockerfile, re.M)


def test_version_names_the_lock(tmp_path: Path) -> None:
    copy = tmp_path / "requirements.lock"
    copy.write_bytes(LOCK.read_bytes())
    said = version_text(copy).splitlines()[-1]
    assert said == lock_text(copy)
    assert re.fullmatch(rf"requirements\.lock: sha256 [0-9a-f]{{16}}, {len(pins())} packages", said)
    assert (
        lock_text(tmp_path / "missing") == "requirements.lock: none (not installed from the lock)"
    )
