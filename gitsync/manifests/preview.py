"""What a pull request's preview deploys: the services it changes, made cheap and isolated. Pure.

A preview copies each changed service of the ``previews.from`` environment into the preview
namespace — whatever namespace the manifest names — renamed ``<name>-pr-<N>`` (shortened to
stay within KubeRay's 47-character RayService name limit), labelled
``gitsync.ray.io/preview: "<N>"``, with worker groups (``maxReplicas`` set when absent,
``numOfHosts`` too), Serve ``num_replicas`` (``"auto"`` and autoscaling too) and — when
``overrides`` set them — CPU, memory and accelerators capped (requests and limits of every
container and init container of the head and worker groups; every extended resource counts as
an accelerator; Serve ``ray_actor_options``), and every
Serve ``route_prefix`` (Serve's default ``/`` when absent) moved under ``/pr-<N>`` so previews
never collide behind a shared ingress.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import yaml

from gitsync import names
from gitsync.manifests.quantity import parse_quantity
from gitsync.manifests.repoconfig import PreviewConfig

PREVIEW = names.PREVIEW
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


def _cap_number(value: Any, cap: Fraction | None) -> Any:
    """A Ray resource amount (``num_cpus: 2``) no larger than ``cap``; other values as they are."""
    if cap is None or isinstance(value, bool) or not isinstance(value, int | float):
        return value
    if value <= cap:
        return value
    return int(cap) if cap.denominator == 1 else float(cap)


def _cap_quantity(value: Any, cap: Fraction | None, text: str) -> Any:
    """A container's request or limit no larger than ``cap`` (written as ``text``)."""
    amount = parse_quantity(value)
    return text if cap is not None and amount is not None and amount > cap else value


def _replicas(deployment: dict[str, Any], cap: int) -> None:
    autoscaling = deployment.get("autoscaling_config")
    if deployment.get("num_replicas") == "auto":
        # Serve's "auto" autoscales up to 100 replicas unless autoscaling_config says less.
        autoscaling = deployment["autoscaling_config"] = (
            autoscaling if isinstance(autoscaling, dict) else {}
        )
        autoscaling.setdefault("max_replicas", cap)
    elif "num_replicas" in deployment:
        deployment["num_replicas"] = _cap(deployment["num_replicas"], cap)
    if isinstance(autoscaling, dict):
        for key in ("min_replicas", "max_replicas", "initial_replicas"):
            if key in autoscaling:
                autoscaling[key] = _cap(autoscaling[key], cap)


def _serve(text: str, number: int, config: PreviewConfig) -> str:
    serve = yaml.safe_load(text) or {}
    caps = _Caps.of(config)
    for app in serve.get("applications") or ():
        if not isinstance(app, dict):
            continue
        prefix = app.get("route_prefix", "/")  # absent: Serve's default, "/"
        if isinstance(prefix, str):  # None: no HTTP route at all
            app["route_prefix"] = f"/pr-{number}" + ("" if prefix == "/" else prefix)
        for deployment in app.get("deployments") or ():
            if not isinstance(deployment, dict):
                continue
            _replicas(deployment, config.max_num_replicas)
            options = deployment.get("ray_actor_options")
            if isinstance(options, dict):
                for key, cap in (("num_cpus", caps.cpu), ("num_gpus", caps.gpu),
                                 ("memory", caps.memory)):  # fmt: skip
                    if key in options:
                        options[key] = _cap_number(options[key], cap)
    return yaml.safe_dump(serve, sort_keys=False)


@dataclass(frozen=True)
class _Caps:
    cpu: Fraction | None
    memory: Fraction | None
    gpu: Fraction | None

    @classmethod
    def of(cls, config: PreviewConfig) -> _Caps:
        gpu = None if config.max_gpu is None else Fraction(config.max_gpu)
        return cls(parse_quantity(config.max_cpu), parse_quantity(config.max_memory), gpu)


def _extended(name: str) -> bool:
    """An accelerator or other extended resource: ``nvidia.com/gpu``, ``nvidia.com/mig-1g.5gb``,
    ``aws.amazon.com/neuron``, ``google.com/tpu`` … (any name with a domain outside
    ``kubernetes.io``); ``hugepages-*`` are memory."""
    domain = name.partition("/")[0] if "/" in name else ""
    return bool(domain) and not domain.endswith("kubernetes.io")


def _containers(group: Any, config: PreviewConfig) -> None:
    """Caps the requests and limits of a head or worker group's containers, init containers
    included (both, so a request never ends up above its limit)."""
    caps = _Caps.of(config)
    pod = ((group or {}).get("template") or {}).get("spec") or {}
    lists = [pod.get(key) for key in ("containers", "initContainers", "ephemeralContainers")]
    for container in [c for found in lists if isinstance(found, list) for c in found]:
        resources = container.get("resources") if isinstance(container, dict) else None
        for kind in ("requests", "limits"):
            amounts = (resources or {}).get(kind)
            if not isinstance(amounts, dict):
                continue
            for name, value in amounts.items():
                if name == "cpu":
                    amounts[name] = _cap_quantity(value, caps.cpu, config.max_cpu)
                elif name == "memory" or name.startswith("hugepages-"):
                    amounts[name] = _cap_quantity(value, caps.memory, config.max_memory)
                elif _extended(name):  # every accelerator counts against maxGpu
                    amounts[name] = _cap_quantity(value, caps.gpu, str(config.max_gpu))


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
    _containers(cluster.get("headGroupSpec"), config)
    for group in cluster.get("workerGroupSpecs") or ():
        for key in ("replicas", "minReplicas", "maxReplicas"):
            if key in group:
                group[key] = _cap(group[key], config.max_worker_replicas)
        # Absent, the CRD defaults it to 2147483647: the in-tree autoscaler would grow the
        # group without bound. Set either way (without autoscaling KubeRay reads only replicas).
        group.setdefault("maxReplicas", config.max_worker_replicas)
        # Each replica of a multi-host group (TPU slices) is numOfHosts pods.
        if "numOfHosts" in group:
            group["numOfHosts"] = _cap(group["numOfHosts"], config.max_num_of_hosts)
        _containers(group, config)
    if isinstance(spec.get("serveConfigV2"), str):
        spec["serveConfigV2"] = _serve(spec["serveConfigV2"], number, config)
    return obj
