"""``ranker.health:app``: the example's second application on the ranker's cluster."""

from __future__ import annotations

from ray import serve
from starlette.requests import Request

from testbed.serve_apps import ACTOR_OPTIONS, cluster


@serve.deployment(ray_actor_options=ACTOR_OPTIONS)
class Health:
    async def __call__(self, request: Request) -> dict[str, str]:
        return {"app": "health", "status": "ok", "cluster": cluster()}


app = Health.bind()
