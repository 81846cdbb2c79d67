"""``ranker.serve:app``: deployments ``Ranker`` and ``FeatureStore`` (the example's two); the
ranker answers with its ``user_config["model_version"]`` (a serve update changes it without a
restart), what the feature store gave it and the cluster it runs on."""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request

from testbed.serve_apps import ACTOR_OPTIONS, cluster


@serve.deployment(ray_actor_options=ACTOR_OPTIONS)
class FeatureStore:
    def features(self) -> dict[str, float]:
        return {"freshness": 0.9, "popularity": 0.4}


@serve.deployment(ray_actor_options=ACTOR_OPTIONS)
class Ranker:
    def __init__(self, features: DeploymentHandle) -> None:
        self.features = features
        self.model_version = "none"

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Serve calls this with the deployment's ``user_config`` (no replica restart)."""
        self.model_version = str(config.get("model_version", "none"))

    async def __call__(self, request: Request) -> dict[str, Any]:
        features = await self.features.features.remote()
        return {
            "app": "rank",
            "model_version": self.model_version,
            "features": features,
            "cluster": cluster(),
        }


app = Ranker.bind(FeatureStore.bind())
