"""A slow-starting app: each replica's constructor sleeps ``args.seconds`` (default 20)."""

from __future__ import annotations

import time
from typing import Any

from ray import serve
from starlette.requests import Request

from testbed.serve_apps import ACTOR_OPTIONS, cluster


@serve.deployment(ray_actor_options=ACTOR_OPTIONS)
class Slow:
    def __init__(self, seconds: float) -> None:
        time.sleep(seconds)

    async def __call__(self, request: Request) -> dict[str, str]:
        return {"answer": "slow", "cluster": cluster()}


def build(args: dict[str, Any]) -> Any:
    """The application builder Serve calls with the config's ``args``."""
    return Slow.bind(float(args.get("seconds", 20)))
