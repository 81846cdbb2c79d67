"""bench.watch_cache in miniature, on the session's test bed: the harness runs, and a warm
watch-backed cache makes no request in a steady-state pass where direct lists make some."""

from __future__ import annotations

from bench import watch_cache
from testbed.controlplane import ControlPlane


def test_the_watch_cache_benchmark_counts_requests_of_both_paths(
    control_plane: ControlPlane,
) -> None:
    results = watch_cache.run(6, 2, plane=control_plane)
    direct, cached = results["direct lists"], results["watch-backed cache"]
    assert direct["no-op sync pass"][0] > 0
    assert direct["health refresh (a poll, head unchanged)"][0] == 2  # a list per namespace
    assert cached["no-op sync pass"][0] == 0
    assert cached["health refresh (a poll, head unchanged)"][0] == 0
