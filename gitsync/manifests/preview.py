"""What a pull request's preview deploys: the services it changes, made cheap and isolated. Pure.

A preview copies each changed service of the ``previews.from`` environment into the preview
namespace — whatever namespace the manifest names — renamed ``<name>-pr-<N>`` (shortened to
stay within KubeRay's 47-character RayService name limit), labelled
``gitsync.ray.io/preview: "<N>"``, with worker groups and Serve ``num_replicas`` capped and
every Serve ``route_prefix`` moved under ``/pr-<N>`` so previews never collide behind a shared
ingress.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping
from typing import Any

import yaml

from gitsync.manifests.repoconfig import PreviewConfig

PREVIEW = "gitsync.ray.io/preview"
MAX_NAME = 47  # KubeRay derives RayCluster and Service names from it; longer names fail


def preview_name(name: str, number: int) -> str:
    suffix = f"-pr-{number}"
    if len(name) + len(suffix) <= MAX_NAME:
        return name + suffix
    digest = hashlib.sha256(name.encode()).hexdigest()[:5]
    keep = MAX_NAME - len(suffix) - len(digest) - 1
    return f"{name[:keep].rstrip('-')}-{digest}{suffix}"


def _cap(value: Any, cap: int) -> Any:
    return min(value, cap) if isinstance(value, int) and not isinstance(value, bool) else value


def _serve(text: str, number: int, cap: int) -> str:
    config = yaml.safe_load(text) or {}
    for app in config.get("applications") or ():
        if not isinstance(app, dict):
            continue
        prefix = app.get("route_prefix")
        if isinstance(prefix, str):
            app["route_prefix"] = f"/pr-{number}" + ("" if prefix == "/" else prefix)
        for deployment in app.get("deployments") or ():
            if not isinstance(deployment, dict):
                continue
            if "num_replicas" in deployment:
                deployment["num_replicas"] = _cap(deployment["num_replicas"], cap)
            autoscaling = deployment.get("autoscaling_config")
            if isinstance(autoscaling, dict):
                for key in ("min_replicas", "max_replicas", "initial_replicas"):
                    if key in autoscaling:
                        autoscaling[key] = _cap(autoscaling[key], cap)
    return yaml.safe_dump(config, sort_keys=False)


def preview_manifest(
    manifest: Mapping[str, Any], number: int, config: PreviewConfig
) -> dict[str, Any]:
    obj = copy.deepcopy(dict(manifest))
    source = obj.get("metadata") or {}
    obj["metadata"] = {
        "name": preview_name(str(source.get("name", "")), number),
        "namespace": config.namespace,  # never the manifest's: previews stay in their namespace
        "labels": {**(source.get("labels") or {}), PREVIEW: str(number)},
        "annotations": dict(source.get("annotations") or {}),
    }
    spec = obj.setdefault("spec", {})
    cluster = spec.get("rayClusterConfig") or {}
    for group in cluster.get("workerGroupSpecs") or ():
        for key in ("replicas", "minReplicas", "maxReplicas"):
            if key in group:
                group[key] = _cap(group[key], config.max_worker_replicas)
    if isinstance(spec.get("serveConfigV2"), str):
        spec["serveConfigV2"] = _serve(spec["serveConfigV2"], number, config.max_num_replicas)
    return obj
