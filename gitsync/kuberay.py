"""KubeRay's decision rules, as pure functions over plain dicts (KubeRay v1.5.0).

This module owns gitsync's reading of ray-operator's ``rayservice_controller.go``: which
``rayClusterConfig`` edits make a new cluster, which update the running one in place, which
KubeRay ignores, and whether zero-downtime upgrades are on. The diff stage classifies changes
with it and the test bed's KubeRay simulator acts on it, so prediction and simulation cannot
drift apart. No I/O.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from gitsync.manifests.quantity import parse_quantity

KUBERAY_VERSION = "v1.5.0"

# utils.MaxRayServiceNameLength: 63 - len("-serve-svc") - len("-xxxxx") for the cluster suffix.
MAX_RAYSERVICE_NAME_LENGTH = 47

# spec fields of the v1 RayService CRD (config/crd/bases/ray.io_rayservices.yaml). A create
# would prune anything else without a word; server-side apply, as gitsync applies, refuses it.
RAYSERVICE_SPEC_FIELDS = frozenset(
    {
        "deploymentUnhealthySecondThreshold",
        "excludeHeadPodFromServeSvc",
        "rayClusterConfig",
        "rayClusterDeletionDelaySeconds",
        "serveConfigV2",
        "serveService",
        "serviceUnhealthySecondThreshold",
        "upgradeStrategy",
    }
)

# Worker-group fields KubeRay v1.5 clears before hashing the cluster spec
# (generateHashWithoutReplicasAndWorkersToDelete). A change confined to them makes no new
# cluster and, because the hash is equal, is not pushed to the running cluster either.
HASH_MUTED_WORKER_FIELDS: tuple[tuple[str, ...], ...] = (
    ("replicas",),
    ("minReplicas",),
    ("maxReplicas",),
    ("scaleStrategy", "workersToDelete"),
)


@dataclass(frozen=True)
class Semantics:
    """How one KubeRay minor version decides about a ``rayClusterConfig`` edit."""

    version: str
    muted_worker_fields: tuple[tuple[str, ...], ...] = HASH_MUTED_WORKER_FIELDS
    muted_cluster_fields: tuple[tuple[str, ...], ...] = ()  # rayClusterConfig paths
    appended_groups_in_place: bool = True  # a group appended at the end: updated in place
    upgrade_strategy_field: bool = True  # spec.upgradeStrategy exists (v1.3+)
    suspend_in_place: bool = False  # a suspend toggle updates the cluster in place (v1.6.1+)

    def __str__(self) -> str:
        return f"KubeRay {self.version}"


_TOLERATIONS = (("template", "spec", "tolerations"), ("template", "spec", "schedulingGates"))

# Read from each version's rayservice_controller.go (and utils/util.go from v1.6).
BASELINE = Semantics("v1.5")
SEMANTICS: dict[str, Semantics] = {
    # Only Replicas and WorkersToDelete were muted; no upgradeStrategy field yet.
    "v1.1": Semantics(
        "v1.1",
        muted_worker_fields=(("replicas",), ("scaleStrategy", "workersToDelete")),
        upgrade_strategy_field=False,
    ),
    "v1.2": Semantics("v1.2", upgrade_strategy_field=False),
    "v1.3": Semantics("v1.3"),
    "v1.4": Semantics("v1.4"),
    "v1.5": BASELINE,
    # utils.GenerateHashWithoutReplicasAndWorkersToDelete also clears tolerations and
    # scheduling gates (head and workers) and the RayCluster's own upgradeStrategy.
    "v1.6": Semantics(
        "v1.6",
        muted_worker_fields=(*HASH_MUTED_WORKER_FIELDS, *_TOLERATIONS),
        muted_cluster_fields=(
            ("headGroupSpec", *_TOLERATIONS[0]),
            ("headGroupSpec", *_TOLERATIONS[1]),
            ("upgradeStrategy",),
        ),
        suspend_in_place=True,
    ),
}


# libyaml's safe loader when PyYAML was built with it (about ten times the pure one's speed).
_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def semantics_for(version: str) -> Semantics:
    """The rules of KubeRay ``version`` (``v1.5.0``, ``1.5`` …); unknown versions are an error."""
    parts = version.lstrip("v").split(".")
    key = f"v{parts[0]}.{parts[1]}" if len(parts) >= 2 else f"v{version}"
    if key not in SEMANTICS:
        known = ", ".join(sorted(SEMANTICS))
        raise ValueError(f"unknown KubeRay version {version!r}; gitsync knows {known}")
    return SEMANTICS[key]


UPGRADE_NEW_CLUSTER = "NewCluster"
UPGRADE_NONE = "None"
UPGRADE_INCREMENTAL = "NewClusterWithIncrementalUpgrade"
UPGRADE_TYPES = (UPGRADE_NEW_CLUSTER, UPGRADE_NONE, UPGRADE_INCREMENTAL)


class ClusterChange(enum.StrEnum):
    """What KubeRay does with a new ``rayClusterConfig`` relative to an existing cluster."""

    UNCHANGED = "unchanged"  # equal hash: nothing, even if replicas/min/max changed
    IN_PLACE = "in-place"  # worker groups appended at the end: the cluster is updated
    NEW_CLUSTER = "new-cluster"  # any other hashed field: a pending cluster, then a switch


def muted_cluster_spec(
    cluster_config: Mapping[str, Any], semantics: Semantics = BASELINE
) -> dict[str, Any]:
    """The cluster spec with the hash-muted worker fields removed.

    Mirrors ``generateHashWithoutReplicasAndWorkersToDelete``: every worker group loses
    ``replicas``, ``minReplicas``, ``maxReplicas`` and ``scaleStrategy.workersToDelete``. Go
    serialises the emptied ``scaleStrategy`` struct as ``{}`` whether or not it was written,
    so an empty one is dropped here to keep "written empty" and "absent" equal. Container
    resource quantities are hashed in the canonical form ``resource.Quantity`` marshals to
    (:func:`canonical_quantity`): ``4096Mi`` is ``4Gi`` to KubeRay, no change.
    """
    spec: dict[str, Any] = json.loads(json.dumps(cluster_config))  # a fast deep copy
    for path in semantics.muted_cluster_fields:
        _drop(spec, path)
    _canonical_resources((spec.get("headGroupSpec") or {}).get("template"))
    for group in spec.get("workerGroupSpecs") or []:
        for path in semantics.muted_worker_fields:
            _drop(group, path)
        if group.get("scaleStrategy") == {}:
            del group["scaleStrategy"]
        _canonical_resources(group.get("template"))
    if not spec.get("workerGroupSpecs"):
        spec.pop("workerGroupSpecs", None)  # omitempty: an empty list is not serialised
    return spec


def canonical_quantity(value: object) -> str | None:
    """What a resource quantity is after KubeRay's typed round trip (apimachinery's
    ``ParseQuantity``, then ``MarshalJSON`` in canonical form): its amount, rounded up to a
    nano, and its format: binary suffixes (``Gi``), an exponent (``1e3``) or decimal (plain
    numbers and ``m``, ``k``, ``M``…). A binary amount that is not whole is written decimal.
    ``4Gi`` and ``4096Mi`` are equal, so are ``"2"``, ``2`` and ``2000m``; ``1Gi`` and
    ``1073741824`` are not. None when it is not a quantity."""
    amount = parse_quantity(value)
    if amount is None:
        return None
    text = str(value).strip()
    kind = "e" if re.search(r"[eE][+-]?[0-9]+$", text) else "i" if text.endswith("i") else "d"
    nanos = math.ceil(amount * 10**9)
    if kind == "i" and nanos % 10**9:
        kind = "d"
    return f"{nanos}n/{kind}"


def _canonical_resources(template: Any) -> None:
    pod = template.get("spec") if isinstance(template, dict) else None
    if not isinstance(pod, dict):
        return
    for container in [*(pod.get("containers") or []), *(pod.get("initContainers") or [])]:
        resources = container.get("resources") if isinstance(container, dict) else None
        for bound in ("limits", "requests"):
            amounts = resources.get(bound) if isinstance(resources, dict) else None
            if isinstance(amounts, dict):
                for name, value in amounts.items():
                    amounts[name] = canonical_quantity(value) or value


def _drop(node: dict[str, Any], path: tuple[str, ...]) -> None:
    parent: Any = node
    for part in path[:-1]:
        parent = parent.get(part) if isinstance(parent, dict) else None
    if isinstance(parent, dict):
        parent.pop(path[-1], None)


def cluster_spec_hash(cluster_config: Mapping[str, Any], semantics: Semantics = BASELINE) -> str:
    """A hash that is equal exactly when KubeRay's spec hash would be equal.

    KubeRay hashes ``json.Marshal`` of the typed struct (sha1, base32hex). This hashes the
    canonical JSON of the muted dict instead: not the same bytes, the same equality.
    """
    canonical = json.dumps(
        muted_cluster_spec(cluster_config, semantics), sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha1(canonical.encode(), usedforsecurity=False).hexdigest()


def worker_group_count(cluster_config: Mapping[str, Any]) -> int:
    return len(cluster_config.get("workerGroupSpecs") or [])


def classify_cluster_change(
    current: Mapping[str, Any], goal: Mapping[str, Any], semantics: Semantics = BASELINE
) -> ClusterChange:
    """Mirrors ``shouldUpdateCluster`` + ``isClusterSpecHashEqual`` for one existing cluster.

    Equal full hash → unchanged. Otherwise, if the goal has at least as many worker groups and
    its first N groups (N = the cluster's count, KubeRay's ``ray.io/num-worker-groups``
    annotation) hash equal to the cluster, groups were only appended: updated in place.
    Removing a group, or editing any hashed field, needs a new cluster.
    """
    if semantics.suspend_in_place and bool(current.get("suspend")) != bool(goal.get("suspend")):
        return ClusterChange.IN_PLACE  # shouldUpdateCluster: the whole spec, in place
    current_hash = cluster_spec_hash(current, semantics)
    if current_hash == cluster_spec_hash(goal, semantics):
        return ClusterChange.UNCHANGED
    count = worker_group_count(current)
    if semantics.appended_groups_in_place and worker_group_count(goal) >= count:
        truncated = dict(goal)
        truncated["workerGroupSpecs"] = list(goal.get("workerGroupSpecs") or [])[:count]
        if cluster_spec_hash(truncated, semantics) == current_hash:
            return ClusterChange.IN_PLACE
    return ClusterChange.NEW_CLUSTER


def zero_downtime_enabled(
    spec: Mapping[str, Any],
    *,
    operator_env_zero_downtime: bool = True,
    semantics: Semantics = BASELINE,
) -> bool:
    """Mirrors ``isZeroDowntimeUpgradeEnabled`` with the incremental-upgrade gate off (default).

    An explicit ``upgradeStrategy.type`` wins: only ``NewCluster`` enables it (the incremental
    type needs the alpha feature gate ``RayServiceIncrementalUpgrade``). Without a type the
    operator's ``ENABLE_ZERO_DOWNTIME`` environment variable decides; it defaults to on.
    """
    strategy = spec.get("upgradeStrategy") or {}
    kind = strategy.get("type") if semantics.upgrade_strategy_field else None
    if kind is not None:
        return bool(kind == UPGRADE_NEW_CLUSTER)
    return operator_env_zero_downtime


def serve_application_names(serve_config_v2: str | None) -> list[str]:
    """Application names in a ``serveConfigV2`` string, in order.

    KubeRay reports an application submitted without a name under ``default``. Raises
    ``ValueError`` when the string is not a YAML mapping with an ``applications`` list.
    """
    if not serve_config_v2:
        return []
    try:
        parsed = yaml.load(serve_config_v2, Loader=_LOADER)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        raise ValueError(f"serveConfigV2 is not valid YAML: {exc}") from exc
    if not isinstance(parsed, dict):
        raise ValueError("serveConfigV2 must be a YAML mapping")
    apps = parsed.get("applications") or []
    if not isinstance(apps, list):
        raise ValueError("serveConfigV2 applications must be a list")
    names: list[str] = []
    for app in apps:
        if not isinstance(app, dict):
            raise ValueError("each serveConfigV2 application must be a mapping")
        names.append(str(app.get("name") or "default"))
    return names
