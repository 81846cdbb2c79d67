"""An app that cannot be imported: Serve reports it DEPLOY_FAILED with this message."""

from __future__ import annotations

raise ImportError("testbed.serve_apps.broken fails to import on purpose")
