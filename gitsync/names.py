"""The labels and annotations gitsync writes and reads, named once (docs/architecture.md,
'On the objects gitsync applies'). Pure; imports nothing, so every layer may use it."""

from __future__ import annotations

PREFIX = "gitsync.ray.io/"
MANAGED_BY = "app.kubernetes.io/managed-by"
ENVIRONMENT = PREFIX + "environment"
REVISION = PREFIX + "revision"
SOURCE = PREFIX + "source"
WAVE = PREFIX + "wave"
APPLIED_HASH = PREFIX + "applied-hash"
RECONCILE = PREFIX + "reconcile"  # "disabled": gitsync leaves the live object alone
PREVIEW = PREFIX + "preview"  # a preview's pull request number
PREVIEW_UPDATED = PREFIX + "preview-updated"  # when the preview last changed (epoch seconds)
LEADER_URL = PREFIX + "leader-url"  # on the Lease: where the leader answers webhooks
FIELD_MANAGER = "gitsync"
