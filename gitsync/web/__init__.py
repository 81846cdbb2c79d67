"""The status page: a read-only view of environments, rollouts, health and drift.

``facts`` (what the agent remembers) and ``view`` (facts → view model) and ``render``
(view model → HTML) are pure; ``history`` keeps the agent's in-memory rollout records,
``site`` answers the HTTP requests :mod:`gitsync.server` routes to it.
"""
