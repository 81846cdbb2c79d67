"""The agent's Prometheus metrics, on a registry passed in (never the global one).

One :class:`Metrics` per agent, built at the edge and handed to what reports into it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.status_posts = Counter(
            "gitsync_status_posts",
            "Commit statuses handled, by provider, state and result (posted, skipped as "
            "identical to the last post, failed after retries, dropped as superseded)",
            ["provider", "state", "result"],
            registry=self.registry,
        )
        self.status_retries = Counter(
            "gitsync_status_post_retries",
            "Commit status requests retried (5xx, rate limits, connection errors)",
            ["provider"],
            registry=self.registry,
        )
        self.status_latency = Histogram(
            "gitsync_status_post_latency_seconds",
            "From the event a status reports to the forge accepting it",
            ["provider"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=self.registry,
        )
