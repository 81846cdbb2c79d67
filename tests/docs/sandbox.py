"""The folders documented commands run in, and running ``gitsync`` in-process."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

from gitsync.cli import main

from .blocks import ROOT

EXAMPLES = ROOT / "examples" / "plain-layout"
_HEX = re.compile(r"\b[0-9a-f]{12}(?:[0-9a-f]{28})?\b")
_TIME = re.compile(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\b")
_CLUSTER = re.compile(r"\b(on [a-z0-9-]+)-[a-z0-9]{5}$")  # KubeRay's RayCluster name suffix


def git(*args: str, cwd: Path) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=Docs", "-c", "user.email=docs@example.com",
         "-c", "commit.gpgsign=false", *args],
        cwd=cwd, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, f"git {args}: {done.stderr}"
    return done.stdout.strip()


def _replace_first(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))


def make_clone(target: Path) -> Path:
    """examples/plain-layout as a Git repository: ``origin/main`` is the example as it is,
    ``HEAD`` raises ranker's num_replicas in staging and bumps its image in production."""
    shutil.copytree(EXAMPLES, target)
    git("init", "-q", "-b", "main", cwd=target)
    git("add", "-A", cwd=target)
    git("commit", "-q", "-m", "the example", cwd=target)
    git("update-ref", "refs/remotes/origin/main", "HEAD", cwd=target)
    _replace_first(
        target / "environments/staging/ranker.yaml", "num_replicas: 1", "num_replicas: 2"
    )
    prod = target / "environments/production/ranker.yaml"
    prod.write_text(prod.read_text().replace("2.49.0-py311", "2.50.0-py311"))
    git("commit", "-q", "-am", "ranker: 2 replicas in staging, Ray 2.50 in production", cwd=target)
    return target


def make_broken(target: Path) -> Path:
    """examples/plain-layout with an invalid num_replicas in staging's ranker."""
    shutil.copytree(EXAMPLES, target)
    _replace_first(
        target / "environments/staging/ranker.yaml", "num_replicas: 1", "num_replicas: many"
    )
    return target


@contextlib.contextmanager
def chdir(path: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def run_gitsync(argv: Sequence[str], cwd: Path) -> tuple[int, str]:
    """``gitsync ARGV`` in-process from ``cwd``: its exit code and stdout + stderr."""
    out, err = io.StringIO(), io.StringIO()
    with chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse
            code = int(exc.code or 0)
    return code, out.getvalue() + err.getvalue()


def normalised(text: str) -> list[str]:
    """Lines without trailing blanks; commit SHAs, times and RayCluster name suffixes as
    placeholders."""
    lines = []
    for line in text.splitlines():
        if line.strip():
            placeheld = _TIME.sub("<time>", _HEX.sub("<sha>", line.rstrip()))
            lines.append(_CLUSTER.sub(r"\1-<id>", placeheld))
    return lines


def _pattern(line: str) -> re.Pattern[str]:
    parts = []
    for token in re.split(r"(…| +)", line):
        if token == "…":
            parts.append(".*")
        elif token.isspace():
            parts.append(r"\s+")
        else:
            parts.append(re.escape(token))
    return re.compile("".join(parts))


def missing_lines(sample: str, output: str) -> list[str]:
    """The lines of ``sample`` that match no line of ``output``. Commit SHAs, times and
    cluster names match any other, ``…`` matches anything, spaces any run of spaces."""
    actual = normalised(output)
    return [
        line for line in normalised(sample) if not any(_pattern(line).fullmatch(a) for a in actual)
    ]
