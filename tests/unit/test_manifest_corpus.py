"""A corpus of bad manifests: each file names the line and the message it must produce.

Every file in corpus/ starts with ``# expect: LINE: MESSAGE``; it is placed alone in the
staging environment of a minimal repository and validated. The problem must name that file,
that line, and contain that message; and nothing may be loaded from the environment.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from gitsync.checkout import read_tree

CORPUS = Path(__file__).parent / "corpus"
CONFIG = """environments:
  - name: staging
    path: environments/staging
    namespace: ray-staging
"""
CASES = sorted(CORPUS.glob("*.yaml"))


def expectation(path: Path) -> tuple[int, str]:
    match = re.match(r"# expect: (\d+): (.+)\n", path.read_text())
    assert match, f"{path.name} has no '# expect: LINE: MESSAGE' header"
    return int(match.group(1)), match.group(2)


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_bad_manifest_is_reported_at_its_line(case: Path, tmp_path: Path) -> None:
    line, message = expectation(case)
    (tmp_path / "gitsync.yaml").write_text(CONFIG)
    env = tmp_path / "environments" / "staging"
    env.mkdir(parents=True)
    shutil.copy(case, env / case.name)
    report = read_tree(tmp_path)
    assert not report.ok
    where = f"environments/staging/{case.name}"
    found = [(p.file, p.line, p.message) for p in report.problems]
    assert any(f == where and ln == line and message in m for f, ln, m in found), found
    staging = report.environments[0]
    assert staging.services == ()


def test_the_valid_base_of_the_corpus_is_valid(tmp_path: Path) -> None:
    """The corpus mutates one valid manifest; that manifest itself must pass."""
    base = (CORPUS / "status-in-git.yaml").read_text().split("status:\n")[0]
    (tmp_path / "gitsync.yaml").write_text(CONFIG)
    env = tmp_path / "environments" / "staging"
    env.mkdir(parents=True)
    (env / "svc.yaml").write_text(base)
    report = read_tree(tmp_path)
    assert report.problems == ()
    assert [str(s.key) for s in report.environments[0].services] == ["ray-staging/svc"]
