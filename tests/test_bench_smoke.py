"""The benchmark harness in miniature (``make bench`` runs it at full size), so it cannot rot:
it must start the test bed, measure gitsync and kubectl side by side and write the report."""

from __future__ import annotations

from pathlib import Path

from bench import suite
from testbed.binaries import Binaries


def test_the_benchmark_suite_runs_and_writes_its_report(binaries: Binaries, tmp_path: Path) -> None:
    # binaries: the suite builds or finds them itself; asking for them marks the test ``testbed``.
    suite.main(["--smoke", "--out", str(tmp_path)])
    report = (tmp_path / "benchmarks.md").read_text()
    assert "| 10 | gitsync sync --once (no-op) |" in report
    assert "| 10 | kubectl diff --server-side |" in report
    assert "| 10 | gitsync pass, warm process (direct lists) |" in report
    assert "serial kubectl apply --server-side" in report
    assert "gitsync sync --once, wave concurrency 32" in report
    assert "0 fetches" in report  # a poll with nothing new only asks for the refs
    assert "Webhook → first apply request" in report
    assert "`(whole process)`" in report  # py-spy's profile of the no-op pass
    assert "Where one pass at wave concurrency 16" in report
    assert "MiB RSS" in report
    # Rendering: gitsync's render against kustomize alone, and a cache hit renders nothing.
    assert "| rendered / kustomize alone |" in report
    render = [line for line in report.splitlines() if line.startswith("| 10 | one ")]
    assert len(render) == 2
    assert all(line.rstrip(" |").endswith("| 0") for line in render), render
    png = (tmp_path / "benchmarks.png").read_bytes()
    assert png.startswith(b"\x89PNG")
