"""``embedder.serve:app``: deployment ``Embedder``; ``GET /embed?text=…`` answers with a
small deterministic vector (a stand-in for the model) and the cluster it runs on."""

from __future__ import annotations

import hashlib

from ray import serve
from starlette.requests import Request

from testbed.serve_apps import ACTOR_OPTIONS, cluster


@serve.deployment(ray_actor_options=ACTOR_OPTIONS)
class Embedder:
    async def __call__(self, request: Request) -> dict[str, object]:
        text = request.query_params.get("text", "")
        digest = hashlib.sha256(text.encode()).digest()
        return {
            "app": "embed",
            "embedding": [round(b / 255, 3) for b in digest[:4]],
            "cluster": cluster(),
        }


app = Embedder.bind()
