"""An app whose replica can be crashed on demand: ``GET <route>/crash`` writes a marker file
and kills the replica's process; while the marker exists every new replica fails its
constructor and the health check, so Serve reports the deployment UNHEALTHY. The marker lives
in the head's temp dir (``GITSYNC_RAY_MARKERS``); removing it lets Serve heal the app."""

from __future__ import annotations

import os
from pathlib import Path

from ray import serve
from starlette.requests import Request

from testbed.serve_apps import ACTOR_OPTIONS, cluster


def _marker() -> Path:
    return Path(os.environ.get("GITSYNC_RAY_MARKERS", "/tmp")) / "crashy.crashed"  # noqa: S108


@serve.deployment(ray_actor_options=ACTOR_OPTIONS, health_check_period_s=1)
class Crashy:
    def __init__(self) -> None:
        if _marker().exists():
            raise RuntimeError("crashed on demand (marker present)")

    def check_health(self) -> None:
        if _marker().exists():
            raise RuntimeError("crashed on demand (marker present)")

    async def __call__(self, request: Request) -> dict[str, str]:
        if request.url.path.rstrip("/").endswith("/crash"):
            _marker().touch()
            os._exit(1)
        return {"answer": "crashy", "cluster": cluster()}


app = Crashy.bind()
