"""bench.watch_cache in miniature, on the session's test bed: the harness runs every row, a
warm watch-backed cache makes no request in a steady-state pass where direct lists make some,
and the section it writes into docs/benchmarks.md replaces the earlier one."""

from __future__ import annotations

from pathlib import Path

from bench import watch_cache
from testbed.controlplane import ControlPlane


def test_the_watch_cache_benchmark_measures_every_row(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    report = watch_cache.measure_all([8], 2, edits=2, idle=1.0, poll="1s", plane=control_plane)
    rows = report["requests"][8]
    direct, cached = rows[watch_cache.DIRECT], rows[watch_cache.CACHE]
    assert direct[watch_cache.NOOP][0] > 0
    assert direct[watch_cache.REFRESH][0] == 2  # a list per namespace
    assert cached[watch_cache.NOOP][0] == 0
    assert cached[watch_cache.REFRESH][0] == 0
    assert report["drift"]["runs"] == 2
    assert report["rest"][watch_cache.CACHE]["rss"] > 0
    page = tmp_path / "benchmarks.md"
    page.write_text("# Benchmarks\n\nthe suite's part\n")
    watch_cache.splice(page, watch_cache.section(report))
    first = page.read_text()
    watch_cache.splice(page, watch_cache.section(report))
    assert page.read_text() == first
    assert first.startswith("# Benchmarks\n\nthe suite's part\n\n<!-- bench.watch_cache -->")
    assert "| 8 | no-op sync pass |" in first
