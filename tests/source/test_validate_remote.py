"""``gitsync validate URL [--rev]``: fetch one revision over a real transport and validate it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gitsync.cli import main
from testbed.gitserver import GitDaemon

from .repos import Upstream

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plain-layout"


def example_files() -> dict[str, str]:
    return {str(p.relative_to(EXAMPLES)): p.read_text() for p in EXAMPLES.rglob("*") if p.is_file()}


def test_validate_a_url_at_a_branch_and_at_an_older_sha(
    served: Path, daemon: GitDaemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    upstream = Upstream(served, "validate-remote", tmp_path)
    good = upstream.commit(example_files(), "examples")
    broken = example_files()["environments/staging/ranker.yaml"].replace(
        "name: ranker", "name: Ranker"
    )
    upstream.commit({"environments/staging/ranker.yaml": broken}, "break the ranker")
    url = daemon.url(upstream.name)

    assert main(["validate", url]) == 1
    out = capsys.readouterr().out
    assert out.startswith(
        "environments/staging/ranker.yaml:5: metadata.name 'Ranker' is not a DNS-1035 label"
    )

    assert main(["validate", url, "--rev", good]) == 0
    assert "ok (staging: 3 RayServices, production: 3 RayServices)" in capsys.readouterr().err


def test_validate_a_url_that_does_not_answer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", "git://127.0.0.1:9/nothing.git"]) == 2
    assert "gitsync validate:" in capsys.readouterr().err


def test_rev_needs_a_url(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLES, tmp_path / "repo")
    with pytest.raises(SystemExit) as exited:
        main(["validate", str(tmp_path / "repo"), "--rev", "main"])
    assert exited.value.code == 2
