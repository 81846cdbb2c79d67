"""The agent's Prometheus metrics, on a registry passed in (never the global one).

One :class:`Metrics` per agent, built at the edge and handed to what reports into it. Names
and labels are the agent's public interface (dashboards and alerts in ``deploy/`` use them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gitsync.names import RECONCILE


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        # In this order on /metrics.
        self._rollout_metrics(self.registry)
        self._drift_metrics(self.registry)
        self._hold_metrics(self.registry)
        self._poll_and_status_metrics(self.registry)
        self._replica_metrics(self.registry)

    def _rollout_metrics(self, r: CollectorRegistry) -> None:
        """Rollout passes and the health and revision they leave."""
        self.sync_total = Counter(
            "gitsync_sync",
            "Rollout passes per environment, by result (succeeded, failed, rolled-back, "
            "superseded, blocked, interrupted, error; an error before any rollout started is "
            'counted as environment="*")',
            ["environment", "result"],
            registry=r,
        )
        self.sync_duration = Histogram(
            "gitsync_sync_duration_seconds",
            "Duration of one environment's rollout, apply to Healthy",
            ["environment"],
            buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
            registry=r,
        )
        self.rollout_in_progress = Gauge(
            "gitsync_rollout_in_progress",
            "1 while a rollout of the environment runs",
            ["environment"],
            registry=r,
        )
        self.service_health = Gauge(
            "gitsync_service_health",
            "1 per managed RayService, labelled with its current health (Healthy, Progressing, "
            "Degraded, Missing, Suspended, Unknown); one series per service",
            ["environment", "namespace", "name", "health"],
            registry=r,
        )
        self.applied_revision = Gauge(
            "gitsync_applied_revision_info",
            "1 for the revision last rolled out successfully in each environment",
            ["environment", "revision"],
            registry=r,
        )
        self.behind_since = Gauge(
            "gitsync_behind_since_seconds",
            "When (Unix time) the environment fell behind Git: a rollout of a newer revision "
            "started and none has succeeded since; 0 while it is at the revision it rolled out "
            "(a quiet repository is not behind); set by the leader",
            ["environment"],
            registry=r,
        )
        self.rollout_failed = Gauge(
            "gitsync_rollout_failed",
            "1 while the environment's last finished rollout failed or was rolled back, 0 once "
            "one succeeds (superseded, blocked and interrupted passes leave it as it was)",
            ["environment"],
            registry=r,
        )

    def _drift_metrics(self, r: CollectorRegistry) -> None:
        """Drift checks and what they find."""
        self.drift_detected = Counter(
            "gitsync_drift_detected",
            "Drifted RayServices found by drift checks",
            ["environment"],
            registry=r,
        )
        self.drifted_services = Gauge(
            "gitsync_drifted_services",
            "RayServices drifted now, per kind (modified, deleted, unexpected), as the last "
            "drift check of the environment left them (healed ones not counted)",
            ["environment", "kind"],
            registry=r,
        )
        self.drift_check_errors = Counter(
            "gitsync_drift_check_errors",
            "Drift checks of an environment that failed (API errors, a rejected dry run); the "
            "other environments are still checked",
            ["environment"],
            registry=r,
        )
        self.drift_fighting = Gauge(
            "gitsync_drift_fighting",
            "1 while gitsync has stopped correcting a RayService that another controller keeps "
            "changing back",
            ["environment", "namespace", "name"],
            registry=r,
        )
        self.reconcile_disabled = Gauge(
            "gitsync_reconcile_disabled_services",
            f"RayServices whose live object says {RECONCILE}: disabled, which "
            "gitsync leaves alone, as the last drift check of the environment saw them",
            ["environment"],
            registry=r,
        )

    def _hold_metrics(self, r: CollectorRegistry) -> None:
        """What the person on call holds: suspensions and pins (gitsync suspend, pin)."""
        self.suspended = Gauge(
            "gitsync_environment_suspended",
            "1 while the environment is suspended (gitsync suspend): nothing applied, no "
            "self-heal, drift still reported",
            ["environment"],
            registry=r,
        )
        self.pinned = Gauge(
            "gitsync_environment_pinned",
            "1 while the environment is pinned to this revision (gitsync pin) instead of the "
            "branch head",
            ["environment", "revision"],
            registry=r,
        )

    def _poll_and_status_metrics(self, r: CollectorRegistry) -> None:
        """Polls of the branch, commit statuses posted to the forge, notifications sent."""
        self.git_poll = Counter(
            "gitsync_git_poll", "Polls of the branch, by result (unchanged, new, error)",
            ["result"], registry=r,
        )  # fmt: skip
        self.git_poll_duration = Histogram(
            "gitsync_git_poll_duration_seconds",
            "One poll: ls-remote of the branch",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.status_posts = Counter(
            "gitsync_status_post",
            "Commit statuses handled, by provider, result (posted, skipped as identical to the "
            "last post, dropped as superseded by a newer one, failed after retries, rejected "
            "for good by the forge) and state",
            ["provider", "result", "state"],
            registry=r,
        )
        self.status_retries = Counter(
            "gitsync_status_post_retries",
            "Commit status requests retried (5xx, rate limits, connection errors)",
            ["provider"],
            registry=r,
        )
        self.status_latency = Histogram(
            "gitsync_status_post_latency_seconds",
            "From the event a status reports to the forge accepting it",
            ["provider"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=r,
        )

        self.notifications = Counter(
            "gitsync_notifications",
            "Notifications handled, by target and result (delivered; failed after retries; "
            "rejected for good by the receiver (a 4xx other than 408 and 429); dropped: the "
            "target's queue was full (the oldest goes) or the agent stopped before delivery)",
            ["target", "result"],
            registry=r,
        )

    def _replica_metrics(self, r: CollectorRegistry) -> None:
        """This replica's lease and the webhooks it receives."""
        self.leader = Gauge(
            "gitsync_leader", "1 while this replica holds the leader lease", registry=r
        )
        self.webhooks = Counter(
            "gitsync_webhook_requests",
            "Webhook requests, by provider, event and result (poll, previews, ignore, relayed to "
            "the leader, relay-failed (no leader reachable: 503), "
            "rejected-401, rejected-413, rejected-400, duplicate)",
            ["provider", "event", "result"],
            registry=r,
        )
