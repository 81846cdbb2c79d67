"""KubeRay v1.5.0's RayService decisions, read from the operator's Go source on their own.

The test bed's simulator (:mod:`testbed.simulator`) decides with these rules and nothing
else: it imports nothing from gitsync, so a wrong prediction in ``gitsync.kuberay`` shows as a
disagreement instead of being checked against itself. Each function names the function of
ray-operator v1.5.0 (``controllers/ray/rayservice_controller.go`` unless said otherwise) it
mirrors. Pure: no I/O, plain dicts in, plain values out.

The cluster spec hash reproduces the *equality* of KubeRay's hash, not its bytes: KubeRay
hashes ``json.Marshal`` of the typed ``rayv1.RayClusterSpec``, so two specs that unmarshal to
the same Go value hash equal. :func:`go_cluster_spec` models what that round trip erases for
the KubeRay types (``omitempty`` fields, the always-serialised ``scaleStrategy`` struct) and
for resource quantities (``resource.Quantity`` marshals in canonical form: ``4096Mi`` is
``4Gi``). Pod templates are otherwise compared as written.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

KUBERAY_VERSION = "v1.5.0"

# utils.MaxRayClusterNameLength: 63 - len("-serve-svc"); utils.MaxRayServiceNameLength takes
# the 6 characters utils.GenerateRayClusterName appends ("-" and 5 random ones).
MAX_RAYCLUSTER_NAME_LENGTH = 53
MAX_RAYSERVICE_NAME_LENGTH = MAX_RAYCLUSTER_NAME_LENGTH - 6

# rayv1.RayServiceUpgradeType values (apis/ray/v1/rayservice_types.go).
NEW_CLUSTER, NONE, INCREMENTAL = "NewCluster", "None", "NewClusterWithIncrementalUpgrade"

# utils.DefaultServeAppName: an application submitted without a name.
DEFAULT_APP_NAME = "default"

# The operator's environment variable (ENABLE_ZERO_DOWNTIME in rayservice_controller.go).
ENABLE_ZERO_DOWNTIME = "ENABLE_ZERO_DOWNTIME"

INITIALIZING_TIMEOUT_ANNOTATION = "ray.io/initializing-timeout"

_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


# -- validation ------------------------------------------------------------------------------


def validate_rayservice_metadata(metadata: Mapping[str, Any]) -> str | None:
    """``utils.ValidateRayServiceMetadata`` (utils/validation.go): the error KubeRay reports
    (as an event, writing no status), or None. The name must fit
    :data:`MAX_RAYSERVICE_NAME_LENGTH` and be a DNS-1035 label; an initializing-timeout
    annotation must be a positive Go duration or positive integer seconds."""
    name = str(metadata.get("name") or "")
    if len(name) > MAX_RAYSERVICE_NAME_LENGTH:
        return f"RayService name should be no more than {MAX_RAYSERVICE_NAME_LENGTH} characters"
    if len(name) > 63 or not _DNS1035.match(name):
        return "RayService name should be a valid DNS1035 label"
    timeout = str((metadata.get("annotations") or {}).get(INITIALIZING_TIMEOUT_ANNOTATION) or "")
    if timeout and (parse_initializing_timeout(timeout) or 0) <= 0:
        return f"annotation {INITIALIZING_TIMEOUT_ANNOTATION} has invalid format: {timeout}"
    return None


_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_initializing_timeout(value: str) -> float | None:
    """``getInitializingTimeout``: ``time.ParseDuration`` first (``30s``, ``1h30m``), then
    integer seconds (``strconv.Atoi``). None when neither parses."""
    text = value.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    if body and _GO_DURATION.sub("", body) == "" and _GO_DURATION.match(body):
        return sign * sum(float(n) * _GO_UNITS[u] for n, u in _GO_DURATION.findall(body))
    if re.fullmatch(r"[+-]?\d+", text):
        return float(int(text))
    return None


# -- zero downtime ----------------------------------------------------------------------------


def is_zero_downtime_upgrade_enabled(
    upgrade_strategy: Mapping[str, Any] | None, operator_env: Mapping[str, str]
) -> bool:
    """``isZeroDowntimeUpgradeEnabled`` with the ``RayServiceIncrementalUpgrade`` feature gate
    off (its default). A set ``upgradeStrategy.type`` wins: only ``NewCluster`` enables it.
    Without one, the operator's ``ENABLE_ZERO_DOWNTIME`` disables it when it is ``false`` in
    any letter case; any other value, or none, enables it."""
    kind = (upgrade_strategy or {}).get("type")
    if kind is not None:
        return bool(kind == NEW_CLUSTER)
    return str(operator_env.get(ENABLE_ZERO_DOWNTIME, "")).lower() != "false"


# -- the cluster spec hash ----------------------------------------------------------------------

# Fields of rayv1.RayClusterSpec, HeadGroupSpec and WorkerGroupSpec tagged ``omitempty`` whose
# Go type is a value (string, integer, map, slice), not a pointer: their zero value is not
# serialised, so written-empty and absent unmarshal to the same Go value
# (apis/ray/v1/raycluster_types.go).
_CLUSTER_OMITEMPTY = ("headServiceAnnotations", "rayVersion", "workerGroupSpecs")
_HEAD_OMITEMPTY = ("resources", "labels", "serviceType")
_WORKER_OMITEMPTY = ("resources", "labels", "numOfHosts")
_EMPTY: tuple[object, ...] = ("", 0, {}, [])


def go_cluster_spec(cluster_spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec as ``json.Marshal`` of the typed struct sees it, after
    ``generateHashWithoutReplicasAndWorkersToDelete`` muted its fields.

    Muted in every worker group: ``replicas``, ``minReplicas``, ``maxReplicas`` and
    ``scaleStrategy.workersToDelete`` (set to nil before hashing). ``scaleStrategy`` is a
    struct value, serialised as ``{}`` whether written or not, so it is dropped entirely here.
    Nothing of the head group or the cluster level is muted in v1.5.0.
    """
    spec: dict[str, Any] = json.loads(json.dumps(cluster_spec))  # a deep copy of plain data
    _drop_empty(spec, _CLUSTER_OMITEMPTY)
    head = spec.get("headGroupSpec")
    if isinstance(head, dict):
        _drop_empty(head, _HEAD_OMITEMPTY)
        _canonical_quantities(head.get("template"))
    for group in spec.get("workerGroupSpecs") or []:
        for muted in ("replicas", "minReplicas", "maxReplicas", "scaleStrategy"):
            group.pop(muted, None)
        _drop_empty(group, _WORKER_OMITEMPTY)
        _canonical_quantities(group.get("template"))
    return spec


def _drop_empty(node: dict[str, Any], fields: tuple[str, ...]) -> None:
    for name in fields:
        if name in node and node[name] in _EMPTY and node[name] is not False:
            del node[name]


def spec_hash(cluster_spec: Mapping[str, Any]) -> str:
    """``generateHashWithoutReplicasAndWorkersToDelete`` + ``utils.GenerateJsonHash``: equal
    exactly when KubeRay's ``ray.io/hash-without-replicas-and-workers-to-delete`` is."""
    canonical = json.dumps(go_cluster_spec(cluster_spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class ClusterAnnotations:
    """What ``constructRayClusterForRayService`` writes on a RayCluster and the decisions read
    back: the spec hash and ``ray.io/num-worker-groups``."""

    spec_hash: str
    num_worker_groups: int

    @classmethod
    def of(cls, cluster_spec: Mapping[str, Any]) -> ClusterAnnotations:
        return cls(spec_hash(cluster_spec), len(cluster_spec.get("workerGroupSpecs") or []))


def is_cluster_spec_hash_equal(
    goal: Mapping[str, Any], cluster: ClusterAnnotations, *, partial: bool
) -> bool:
    """``isClusterSpecHashEqual``. Not partial: the goal's hash equals the cluster's. Partial:
    the goal has at least the cluster's number of worker groups and, cut to that number, hashes
    equal to the cluster (groups were only appended at the end)."""
    if not partial:
        return spec_hash(goal) == cluster.spec_hash
    groups = list(goal.get("workerGroupSpecs") or [])
    if len(groups) < cluster.num_worker_groups:
        return cluster.spec_hash == ""  # goalClusterHash stays "": never equal to a real hash
    return spec_hash({**goal, "workerGroupSpecs": groups[: cluster.num_worker_groups]}) == (
        cluster.spec_hash
    )


def should_update_cluster(
    goal: Mapping[str, Any],
    cluster: ClusterAnnotations | None,
    *,
    is_active: bool,
    upgrade_in_progress: bool,
) -> bool:
    """``shouldUpdateCluster``: update the RayCluster in place (``modifyRayCluster`` copies the
    whole goal spec, replicas included) when the full hash differs but the partial one is
    equal. The active cluster is never updated while ``UpgradeInProgress`` is True: the goal
    is then compared with the pending cluster only. (A cluster created by another KubeRay
    version is also updated; the simulator's clusters are all v1.5.0.)"""
    if cluster is None or (is_active and upgrade_in_progress):
        return False
    if is_cluster_spec_hash_equal(goal, cluster, partial=False):
        return False
    return is_cluster_spec_hash_equal(goal, cluster, partial=True)


def should_prepare_new_cluster(
    goal: Mapping[str, Any],
    upgrade_strategy: Mapping[str, Any] | None,
    operator_env: Mapping[str, str],
    active: ClusterAnnotations | None,
    pending: ClusterAnnotations | None,
    *,
    pending_serving: bool = False,
) -> bool:
    """``shouldPrepareNewCluster``: a new pending cluster when there is none at all, or when
    the goal differs from the pending cluster (else the active one) in a way an in-place update
    cannot take and zero-downtime upgrades are enabled. Otherwise the change is ignored."""
    if pending_serving:
        return False
    cluster = pending if pending is not None else active
    if cluster is None:
        return True
    if is_cluster_spec_hash_equal(goal, cluster, partial=False):
        return False
    if is_cluster_spec_hash_equal(goal, cluster, partial=True):
        return False
    return is_zero_downtime_upgrade_enabled(upgrade_strategy, operator_env)


# -- Serve --------------------------------------------------------------------------------------


def need_submit_serve_applications(cached: str, goal: str, app_count: int) -> bool:
    """``checkIfNeedSubmitServeApplications``: PUT the config when nothing is cached for the
    cluster, when the dashboard reports no application (the head restarted), or when the cached
    string differs from ``serveConfigV2`` — compared as strings, byte for byte: a reformatted
    but equal config is PUT again. ``cacheServeConfig`` caches nothing for an empty config."""
    return cached == "" or app_count == 0 or cached != goal


def app_name(name: object) -> str:
    """``getAndCheckServeStatus``: an application without a name is reported as ``default``."""
    return str(name or DEFAULT_APP_NAME)


# -- resource quantities -----------------------------------------------------------------------

_BINARY = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))((?:[eE][+-]?\d+)|[KMGTPE]i|[numkMGTPE]?)$")


def quantity_key(value: object) -> tuple[Fraction, str] | None:
    """What ``resource.Quantity``'s JSON round trip keeps (k8s.io/apimachinery
    ``ParseQuantity`` then ``MarshalJSON``, canonical form): the amount, rounded up to a
    nano, and the format (binary suffixes, decimal suffixes, or an exponent). A binary amount
    that is not a whole number is written in decimal form. None when it does not parse."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    match = _QUANTITY.match(str(value).strip())
    if match is None:
        return None
    number, suffix = Fraction(match[1]), match[2]
    if suffix in _BINARY:
        amount, kind = number * 2 ** _BINARY[suffix], "binary"
    elif suffix[:1] in ("e", "E"):
        amount, kind = number * Fraction(10) ** int(suffix[1:]), "exponent"
    else:
        amount, kind = number * Fraction(10) ** _DECIMAL[suffix], "decimal"
    nanos = amount * 10**9
    rounded = Fraction(-((-nanos.numerator) // nanos.denominator), 10**9)  # RoundUp
    if kind == "binary" and rounded.denominator != 1:
        kind = "decimal"
    return rounded, kind


def _canonical_quantities(template: object) -> None:
    """Replaces each container's ``resources.limits``/``requests`` values by their
    :func:`quantity_key`, so that two spellings of one quantity compare equal."""
    if not isinstance(template, dict):
        return
    pod = template.get("spec")
    if not isinstance(pod, dict):
        return
    for kind in ("containers", "initContainers"):
        for container in pod.get(kind) or []:
            resources = container.get("resources") if isinstance(container, dict) else None
            if not isinstance(resources, dict):
                continue
            for bound in ("limits", "requests"):
                amounts = resources.get(bound)
                if isinstance(amounts, dict):
                    resources[bound] = {
                        name: str(quantity_key(v) or v) for name, v in amounts.items()
                    }
