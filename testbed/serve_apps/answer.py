"""The fast app: answers ``{"answer": user_config["answer"], "cluster": …}`` at once."""

from __future__ import annotations

from typing import Any

from ray import serve
from starlette.requests import Request

from testbed.serve_apps import ACTOR_OPTIONS, cluster


@serve.deployment(ray_actor_options=ACTOR_OPTIONS)
class Answer:
    def __init__(self) -> None:
        self.answer = "initial"

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Serve calls this with the deployment's ``user_config`` (no replica restart)."""
        self.answer = str(config.get("answer", "initial"))

    async def __call__(self, request: Request) -> dict[str, str]:
        return {"answer": self.answer, "cluster": cluster()}


app = Answer.bind()
