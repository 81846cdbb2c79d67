"""Every hostile repository of the corpus, committed to a real repository and read through
gitsync's Git source, as a pass reads it (and as ``gitsync validate PATH`` reads the work
tree): a clear problem naming the file (and line), nothing loaded from the environment, in
bounded time and memory. Each case runs in its own process so its peak RSS is its own.

The bounds are generous functional limits (a case that hangs or balloons), not timings.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import Figures
from .corpus import CASES, Case
from .probe import build

# Timing- or memory-sensitive: `make test` runs it alone, after the parallel phase.
pytestmark = pytest.mark.serial

PROBE = Path(__file__).with_name("probe.py")
EXAMPLE_SERVICES = ["ray-staging/embedder", "ray-staging/ranker", "ray-staging/summarizer"]
MAX_SECONDS = 60
MAX_RSS_GROWTH_MIB = 500
MAX_PROBLEMS = 102  # the environment's cap (100), its "stopped here", one config problem


def test_the_corpus_is_large_and_named_uniquely() -> None:
    assert len(CASES) >= 50
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_hostile_tree_is_refused_clearly_in_bounded_time_and_memory(
    case: Case, tmp_path: Path, figures: Figures
) -> None:
    build(case.name, tmp_path)
    run = subprocess.run(
        [sys.executable, str(PROBE), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=MAX_SECONDS * 3,
        check=False,
    )
    for made in tmp_path.iterdir():  # up to 200 MB (the case, its checkout): free it now
        shutil.rmtree(made, ignore_errors=True)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)
    problems = result["git"]["problems"]
    first = next((p for p in problems if case.expect and case.expect in p), problems[:1])
    figures.add(
        "hostile-trees",
        {
            "case": case.name,
            "outcome": "refused" if problems else "accepted",
            "problems": len(problems),
            "seconds": result["seconds"],
            "rss growth MiB": result["rss_growth_mib"],
            "error": first if isinstance(first, str) else "".join(first),
        },
    )
    for path in ("git", "local"):
        found = result[path]
        if case.expect is None:  # harmless by design: the examples load, each once
            assert found == {"problems": [], "services": EXAMPLE_SERVICES}, path
            continue
        assert any(p.startswith(case.where) and case.expect in p for p in found["problems"]), (
            path,
            found["problems"][:5],
        )
        assert found["services"] == [], path  # all or nothing: no service of a bad tree
        assert len(found["problems"]) <= MAX_PROBLEMS, path
    assert result["seconds"] < MAX_SECONDS
    assert result["rss_growth_mib"] < MAX_RSS_GROWTH_MIB
