"""Will a new RayCluster fit? Its pods' requests against the namespace's ResourceQuotas and the
nodes' free allocatable capacity. Pure: the cluster's side comes in as a :class:`Cluster`
(read by :mod:`gitsync.kube.capacity`), a RayService manifest as a mapping.

A new cluster's pods (:func:`cluster_pods`): the head, and every worker group at
``max(replicas, minReplicas)`` replicas of ``numOfHosts`` pods (a ``suspend``\\ ed group has
none), plus the autoscaler sidecar KubeRay adds to the head. A pod's requests
(:func:`pod_resources`) are Kubernetes' effective requests: per resource the larger of the
sum over its containers and the largest init container, plus ``overhead``; a container that
sets a limit and no request for a resource requests its limit (the API server's defaulting).
LimitRange defaults are not applied.

Two checks, both on the requests of all the pods together:

- **quotas**: for each ResourceQuota, ``spec.hard`` minus ``status.used`` for the names a
  pod counts against (``requests.cpu`` and ``cpu``, ``requests.memory`` and ``memory``,
  ``limits.*``, ``requests.<extended resource>``, ``pods``, ``count/pods``). A quota whose
  ``status.used`` lacks a name it limits has not been computed yet: unknown. A quota with
  scopes applies only to the pods its scopes select (``BestEffort``, ``NotBestEffort``,
  ``Terminating``, ``NotTerminating``, ``PriorityClass``); another scope makes it unknown.
- **nodes**: each pod is placed on the first node it may land on (``nodeSelector``,
  tolerations against ``NoSchedule``/``NoExecute`` taints, required node affinity, a node
  marked unschedulable) with room for all its requests, where room is ``allocatable`` minus
  the requests of pods already bound there and of pods placed before it (largest pods first).
  This greedy first-fit is an estimate of the scheduler, not the scheduler: a verdict "fits"
  says the capacity exists, not that every scheduler plugin (pod anti-affinity, topology
  spread, ports) agrees.

A verdict (:class:`Verdict`) is ``fits``, ``does-not-fit`` (each :class:`Shortfall` names the
resource, what is needed, what is there and what is missing) or ``unknown`` (what could not be
read and why): never a guess. :func:`check_wave` checks a wave's clusters together, in order,
each against what the ones before it took.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any

from gitsync.manifests.quantity import parse_quantity
from gitsync.model import ServiceKey

Amounts = Mapping[str, Fraction]

CPU, MEMORY, PODS = "cpu", "memory", "pods"
STANDARD = frozenset({CPU, MEMORY, "ephemeral-storage"})
# What KubeRay's BuildAutoscalerContainer (ray-operator/controllers/ray/common/pod.go) gives
# the autoscaler sidecar when autoscalerOptions.resources is unset: requests = limits.
AUTOSCALER_DEFAULT = {CPU: "500m", MEMORY: "512Mi"}


class Fit(enum.StrEnum):
    FITS = "fits"
    DOES_NOT_FIT = "does-not-fit"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Pod:
    """One pod a new cluster will create: its effective requests and limits, and where it
    may be scheduled."""

    group: str  # "head" or the worker group's name
    requests: Amounts
    limits: Amounts
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    node_terms: tuple[Mapping[str, Any], ...] = ()  # required nodeSelectorTerms (ORed)
    priority_class: str = ""
    terminating: bool = False  # activeDeadlineSeconds is set
    # The quota names for CPU and memory some container of the pod leaves unset
    # (``requests.cpu``, ``cpu``, ``limits.memory``…): see :func:`unset_names`.
    unset: frozenset[str] = frozenset()

    @property
    def best_effort(self) -> bool:
        return not any(self.requests.get(r) or self.limits.get(r) for r in (CPU, MEMORY))


@dataclass(frozen=True)
class Node:
    name: str
    allocatable: Amounts
    used: Amounts  # the requests of the pods bound to it that have not finished, and "pods"
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Mapping[str, Any], ...] = ()
    unschedulable: bool = False


@dataclass(frozen=True)
class Quota:
    name: str
    hard: Amounts
    used: Amounts
    scopes: tuple[str, ...] = ()
    scope_selector: tuple[Mapping[str, Any], ...] = ()  # matchExpressions


@dataclass(frozen=True)
class Cluster:
    """What the cluster offers: ``nodes`` and ``quotas`` are None when they could not be read
    (``nodes_unknown``/``quotas_unknown`` say why)."""

    quotas: tuple[Quota, ...] | None
    nodes: tuple[Node, ...] | None
    quotas_unknown: str = ""
    nodes_unknown: str = ""


@dataclass(frozen=True)
class Shortfall:
    where: str  # "quota <name>" or "nodes"
    resource: str
    needed: Fraction
    available: Fraction
    note: str = ""

    @property
    def missing(self) -> Fraction:
        return self.needed - self.available

    def __str__(self) -> str:
        if not self.needed and not self.available:  # a refusal, not an amount
            return f"{self.where}: {self.resource}: {self.note}"
        amount = format_amount
        text = (
            f"{self.where}: {self.resource} needs {amount(self.resource, self.needed)}, "
            f"{amount(self.resource, self.available)} available, "
            f"{amount(self.resource, self.missing)} missing"
        )
        return f"{text} ({self.note})" if self.note else text


@dataclass(frozen=True)
class Verdict:
    fit: Fit
    requests: Amounts = field(default_factory=dict)  # the whole new cluster's
    pods: int = 0
    shortfalls: tuple[Shortfall, ...] = ()
    unknown: tuple[str, ...] = ()  # why (part of) the check could not be made

    @property
    def summary(self) -> str:
        """One line: the verdict and its reason."""
        if self.fit is Fit.FITS:
            return f"fits ({self.pods} pods: {format_amounts(self.requests)})"
        if self.fit is Fit.DOES_NOT_FIT:
            return "does not fit: " + "; ".join(str(s) for s in self.shortfalls)
        return "unknown: " + "; ".join(self.unknown)

    def json(self) -> dict[str, Any]:
        return {
            "fit": str(self.fit),
            "pods": self.pods,
            "requests": {k: format_amount(k, v) for k, v in sorted(self.requests.items())},
            "shortfalls": [
                {
                    "where": s.where,
                    "resource": s.resource,
                    "needed": format_amount(s.resource, s.needed),
                    "available": format_amount(s.resource, s.available),
                    "missing": format_amount(s.resource, s.missing),
                    **({"note": s.note} if s.note else {}),
                }
                for s in self.shortfalls
            ],
            "unknown": list(self.unknown),
            "summary": self.summary,
        }


# --- the pods of a new cluster ------------------------------------------------------------


def _amounts(raw: Any) -> dict[str, Fraction]:
    out: dict[str, Fraction] = {}
    if isinstance(raw, Mapping):
        for name, value in raw.items():
            amount = parse_quantity(value)
            if amount is not None:
                out[str(name)] = amount
    return out


def container_resources(
    container: Mapping[str, Any],
) -> tuple[dict[str, Fraction], dict[str, Fraction]]:
    """A container's requests and limits; a resource with a limit and no request requests its
    limit (the API server's defaulting of ``resources.requests``)."""
    resources = container.get("resources") or {}
    if not isinstance(resources, Mapping):
        return {}, {}
    limits = _amounts(resources.get("limits"))
    requests = {**limits, **_amounts(resources.get("requests"))}
    return requests, limits


def _add(total: dict[str, Fraction], amounts: Amounts, times: int = 1) -> None:
    for name, value in amounts.items():
        total[name] = total.get(name, Fraction(0)) + value * times


def pod_resources(pod_spec: Mapping[str, Any]) -> tuple[dict[str, Fraction], dict[str, Fraction]]:
    """A pod's effective requests and limits: per resource the larger of the containers' sum
    (sidecar init containers, ``restartPolicy: Always``, count with them) and the largest init
    container, plus the pod's ``overhead`` (Kubernetes' ``PodRequests`` in
    k8s.io/component-helpers/resource)."""
    requests: dict[str, Fraction] = {}
    limits: dict[str, Fraction] = {}
    containers = [c for c in pod_spec.get("containers") or [] if isinstance(c, Mapping)]
    inits = [c for c in pod_spec.get("initContainers") or [] if isinstance(c, Mapping)]
    sidecars = [c for c in inits if c.get("restartPolicy") == "Always"]
    for container in [*containers, *sidecars]:
        req, lim = container_resources(container)
        _add(requests, req)
        _add(limits, lim)
    for init in inits:
        if init.get("restartPolicy") == "Always":
            continue
        req, lim = container_resources(init)
        for total, own in ((requests, req), (limits, lim)):
            for name, value in own.items():
                total[name] = max(total.get(name, Fraction(0)), value)
    overhead = _amounts(pod_spec.get("overhead"))
    _add(requests, overhead)
    _add(limits, {k: v for k, v in overhead.items() if k in limits})
    return requests, limits


# Quota names every container must set when a quota limits them (the API server refuses the
# pod otherwise: "must specify requests.cpu for: <container>"), as Kubernetes' podEvaluator
# .Constraints in pkg/quota/v1/evaluator/core/pods.go checks them.
MUST_SPECIFY = frozenset(
    {"cpu", "memory", "requests.cpu", "requests.memory", "limits.cpu", "limits.memory"}
)


def unset_names(containers: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    """The :data:`MUST_SPECIFY` names some container does not set (requests defaulted from
    limits, as the API server does before quota admission)."""
    unset: set[str] = set()
    for container in containers:
        requests, limits = container_resources(container)
        for resource in (CPU, MEMORY):
            if resource not in requests:
                unset |= {resource, f"requests.{resource}"}
            if resource not in limits:
                unset.add(f"limits.{resource}")
    return frozenset(unset)


def _pod(group: str, template: Any, extra: Sequence[Mapping[str, Any]] = ()) -> Pod:
    spec = template.get("spec") if isinstance(template, Mapping) else None
    spec = spec if isinstance(spec, Mapping) else {}
    if extra:
        spec = {**spec, "containers": [*(spec.get("containers") or []), *extra]}
    requests, limits = pod_resources(spec)
    affinity = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    selector = spec.get("nodeSelector") or {}
    return Pod(
        group,
        requests,
        limits,
        {str(k): str(v) for k, v in selector.items()} if isinstance(selector, Mapping) else {},
        tuple(t for t in spec.get("tolerations") or [] if isinstance(t, Mapping)),
        tuple(t for t in affinity.get("nodeSelectorTerms") or [] if isinstance(t, Mapping)),
        str(spec.get("priorityClassName") or ""),
        spec.get("activeDeadlineSeconds") is not None,
        unset_names(
            c
            for c in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]
            if isinstance(c, Mapping)
        ),
    )


def _autoscaler(cluster: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The autoscaler sidecar KubeRay adds to the head when ``enableInTreeAutoscaling`` is
    true (``BuildAutoscalerContainer``; ``autoscalerOptions.resources`` replaces its
    defaults, as ``mergeAutoscalerOverrides`` does)."""
    if cluster.get("enableInTreeAutoscaling") is not True:
        return []
    options = cluster.get("autoscalerOptions") or {}
    resources = options.get("resources") if isinstance(options, Mapping) else None
    if not isinstance(resources, Mapping):
        resources = {"requests": AUTOSCALER_DEFAULT, "limits": AUTOSCALER_DEFAULT}
    return [{"name": "autoscaler", "resources": resources}]


def cluster_pods(rayservice: Mapping[str, Any]) -> list[Pod]:
    """The pods the RayService's new RayCluster starts (see the module docstring)."""
    spec = rayservice.get("spec") or {}
    cluster = spec.get("rayClusterConfig") if isinstance(spec, Mapping) else None
    if not isinstance(cluster, Mapping):
        return []
    head = cluster.get("headGroupSpec") or {}
    pods = [_pod("head", head.get("template"), _autoscaler(cluster))]
    for group in cluster.get("workerGroupSpecs") or []:
        if not isinstance(group, Mapping) or group.get("suspend") is True:
            continue
        replicas = max(_count(group.get("replicas")), _count(group.get("minReplicas")))
        hosts = max(_count(group.get("numOfHosts")), 1)
        pod = _pod(str(group.get("groupName") or "worker"), group.get("template"))
        pods += [pod] * (replicas * hosts)
    return pods


def _groups(rayservice: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    spec = rayservice.get("spec") or {}
    cluster = spec.get("rayClusterConfig") if isinstance(spec, Mapping) else None
    groups = cluster.get("workerGroupSpecs") if isinstance(cluster, Mapping) else None
    return [g for g in groups or [] if isinstance(g, Mapping)]


def added_pods(live: Mapping[str, Any], rayservice: Mapping[str, Any]) -> list[Pod]:
    """The pods a ``cluster-in-place`` change adds to the running cluster. KubeRay updates it
    in place when worker groups are only appended (``isClusterSpecHashEqual`` with
    ``partial``), and then writes the whole goal spec onto it (``modifyRayCluster``): the
    appended groups start at their replicas, and a group already there grows by what its
    replicas (at least ``minReplicas``) rose from ``live``'s, which stands for the running
    cluster's (an autoscaled cluster may differ)."""
    before = _groups(live)
    pods: list[Pod] = []
    for index, group in enumerate(_groups(rayservice)):
        if group.get("suspend") is True:
            continue
        wanted = max(_count(group.get("replicas")), _count(group.get("minReplicas")))
        if index < len(before):
            old = before[index]
            wanted -= max(_count(old.get("replicas")), _count(old.get("minReplicas")))
        hosts = max(_count(group.get("numOfHosts")), 1)
        pod = _pod(str(group.get("groupName") or "worker"), group.get("template"))
        pods += [pod] * (max(wanted, 0) * hosts)
    return pods


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def total_requests(pods: Iterable[Pod]) -> dict[str, Fraction]:
    total: dict[str, Fraction] = {}
    for pod in pods:
        _add(total, pod.requests)
    return total


# --- quotas --------------------------------------------------------------------------------


def quota_usage(name: str, pods: Sequence[Pod]) -> Fraction | None:
    """What ``pods`` add to a quota's ``name`` (``requests.cpu``, ``memory``,
    ``limits.nvidia.com/gpu``, ``pods``…), or None when pods do not count against it."""
    if name in (PODS, "count/pods"):
        return Fraction(len(pods))
    if name.startswith("requests."):
        resource, side = name.removeprefix("requests."), "requests"
    elif name.startswith("limits."):
        resource, side = name.removeprefix("limits."), "limits"
    elif name in STANDARD:
        resource, side = name, "requests"
    else:
        return None
    return sum((getattr(p, side).get(resource, Fraction(0)) for p in pods), Fraction(0))


_PRIORITY_OPERATORS = {"In", "NotIn", "Exists", "DoesNotExist"}


def _in_scope(quota: Quota, pod: Pod) -> bool | None:
    """Whether the quota counts ``pod``; None for a scope this check does not know."""
    scopes = [*quota.scopes]
    for expression in quota.scope_selector:
        scope, operator = expression.get("scopeName"), expression.get("operator")
        values = [str(v) for v in expression.get("values") or []]
        if scope == "PriorityClass" and operator in _PRIORITY_OPERATORS:
            has = bool(pod.priority_class)
            matched = {
                "In": pod.priority_class in values,
                "NotIn": pod.priority_class not in values,
                "Exists": has,
                "DoesNotExist": not has,
            }[str(operator)]
            if not matched:
                return False
        elif isinstance(scope, str) and operator == "Exists":
            scopes.append(scope)
        else:
            return None
    for scope in scopes:
        counts = {
            "BestEffort": pod.best_effort,
            "NotBestEffort": not pod.best_effort,
            "Terminating": pod.terminating,
            "NotTerminating": not pod.terminating,
        }.get(scope)
        if counts is None:
            return None
        if not counts:
            return False
    return True


def _check_quotas(
    pods: Sequence[Pod], quotas: Sequence[Quota], taken: Mapping[str, Mapping[str, Fraction]]
) -> tuple[list[Shortfall], list[str]]:
    shortfalls: list[Shortfall] = []
    unknown: list[str] = []
    for quota in quotas:
        counted = [_in_scope(quota, p) for p in pods]
        if any(c is None for c in counted):
            unknown.append(f"quota {quota.name} has a scope this check does not evaluate")
            continue
        mine = [p for p, c in zip(pods, counted, strict=True) if c]
        for name in sorted(MUST_SPECIFY & quota.hard.keys()):
            groups = sorted({p.group for p in mine if name in p.unset})
            if groups:
                why = (
                    "the quota makes every container set it and the API server refuses pods "
                    f"that do not: some container of the {', '.join(groups)} pods does not"
                )
                shortfalls.append(
                    Shortfall(f"quota {quota.name}", name, Fraction(0), Fraction(0), why)
                )
        for name, hard in sorted(quota.hard.items()):
            needed = quota_usage(name, mine)
            if needed is None or not needed:
                continue
            if name not in quota.used:
                unknown.append(
                    f"quota {quota.name} has no usage for {name} yet (status.used is written "
                    "by the quota controller)"
                )
                continue
            available = hard - quota.used[name] - taken.get(quota.name, {}).get(name, Fraction(0))
            if needed > available:
                shortfalls.append(Shortfall(f"quota {quota.name}", name, needed, available))
    return shortfalls, unknown


def _take_quotas(
    pods: Sequence[Pod], quotas: Sequence[Quota], taken: dict[str, dict[str, Fraction]]
) -> None:
    for quota in quotas:
        mine = [p for p in pods if _in_scope(quota, p)]
        for name in quota.hard:
            needed = quota_usage(name, mine)
            if needed:
                row = taken.setdefault(quota.name, {})
                row[name] = row.get(name, Fraction(0)) + needed


# --- nodes ---------------------------------------------------------------------------------


def tolerates(tolerations: Sequence[Mapping[str, Any]], taint: Mapping[str, Any]) -> bool:
    """Kubernetes' ``Toleration.ToleratesTaint`` (k8s.io/api/core/v1/toleration.go)."""
    for toleration in tolerations:
        effect = toleration.get("effect") or ""
        if effect and effect != taint.get("effect"):
            continue
        key = toleration.get("key") or ""
        if key and key != taint.get("key"):
            continue
        operator = toleration.get("operator") or "Equal"
        if operator == "Exists":
            return True
        if operator == "Equal" and (toleration.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def _requirement(expression: Mapping[str, Any], value: str | None) -> bool:
    operator = expression.get("operator")
    values = [str(v) for v in expression.get("values") or []]
    if operator == "In":
        return value is not None and value in values
    if operator == "NotIn":
        return value is None or value not in values
    if operator == "Exists":
        return value is not None
    if operator == "DoesNotExist":
        return value is None
    if operator in ("Gt", "Lt") and value is not None and len(values) == 1:
        try:
            have, bound = int(value), int(values[0])
        except ValueError:
            return False
        return have > bound if operator == "Gt" else have < bound
    return False


def _term_matches(term: Mapping[str, Any], node: Node) -> bool:
    expressions = term.get("matchExpressions") or []
    fields = term.get("matchFields") or []
    if not expressions and not fields:
        return False  # an empty term matches no node
    return all(_requirement(e, node.labels.get(str(e.get("key")))) for e in expressions) and all(
        _requirement(f, node.name if f.get("key") == "metadata.name" else None) for f in fields
    )


def may_land_on(pod: Pod, node: Node) -> bool:
    """Whether the scheduler's node filters that read what a pod declares (NodeUnschedulable,
    NodeAffinity with nodeSelector, TaintToleration) let ``pod`` onto ``node``."""
    if node.unschedulable and not tolerates(
        pod.tolerations, {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}
    ):
        return False
    if any(node.labels.get(k) != v for k, v in pod.node_selector.items()):
        return False
    if pod.node_terms and not any(_term_matches(t, node) for t in pod.node_terms):
        return False
    return all(
        tolerates(pod.tolerations, taint)
        for taint in node.taints
        if taint.get("effect") in ("NoSchedule", "NoExecute")
    )


def _free(node: Node, placed: Mapping[str, Fraction]) -> dict[str, Fraction]:
    return {
        name: value - node.used.get(name, Fraction(0)) - placed.get(name, Fraction(0))
        for name, value in node.allocatable.items()
    }


def _wants(pod: Pod) -> dict[str, Fraction]:
    return {**{k: v for k, v in pod.requests.items() if v}, PODS: Fraction(1)}


def _room(free: Mapping[str, Fraction], wants: Mapping[str, Fraction]) -> bool:
    return all(free.get(name, Fraction(0)) >= value for name, value in wants.items())


def _lacking(wants: Mapping[str, Fraction], free: Mapping[str, Fraction]) -> list[str]:
    return [k for k, v in sorted(wants.items()) if free.get(k, Fraction(0)) < v]


def _size(pod: Pod) -> tuple[Fraction, ...]:
    extended = sum((v for k, v in pod.requests.items() if k not in STANDARD), Fraction(0))
    return (extended, pod.requests.get(CPU, Fraction(0)), pod.requests.get(MEMORY, Fraction(0)))


def _place(
    pods: Sequence[Pod], nodes: Sequence[Node], placed: dict[str, dict[str, Fraction]]
) -> list[Shortfall]:
    """First fit, largest pods first, into ``placed`` (per node, what this check put there).
    A pod that lands nowhere is a shortfall per resource it lacks on the node it may use that
    comes closest (fewest resources short): its request there against that node's free."""
    found: dict[tuple[str, str], tuple[Shortfall, int]] = {}
    for pod in sorted(pods, key=_size, reverse=True):
        wants = _wants(pod)
        eligible = [n for n in nodes if may_land_on(pod, n)]
        frees = {n.name: _free(n, placed.get(n.name, {})) for n in eligible}
        home = next((n for n in eligible if _room(frees[n.name], wants)), None)
        if home is not None:
            _add(placed.setdefault(home.name, {}), wants)
            continue
        if not eligible:
            why = f"no node matches the {pod.group} pod's nodeSelector, affinity and tolerations"
            short = [Shortfall("nodes", PODS, Fraction(1), Fraction(0), why)]
        else:
            closest = min(frees.values(), key=lambda f: len(_lacking(wants, f)))
            short = [
                Shortfall("nodes", k, wants[k], max(closest.get(k, Fraction(0)), Fraction(0)))
                for k in _lacking(wants, closest)
            ]
        for shortfall in short:
            key = (pod.group, shortfall.resource)
            count = found[key][1] + 1 if key in found else 1
            found[key] = (found[key][0] if key in found else shortfall, count)
    out = []
    for (group, _), (shortfall, count) in found.items():
        pods_text = f"{count} {group} {'pods fit' if count > 1 else 'pod fits'} on no node"
        if shortfall.note:
            note = f"{pods_text}: {shortfall.note}"
        else:
            note = f"{pods_text}; per pod, against the node it may use that comes closest"
        out.append(replace(shortfall, note=note))
    return out


# --- verdicts ------------------------------------------------------------------------------


@dataclass
class _Taken:
    quotas: dict[str, dict[str, Fraction]] = field(default_factory=dict)
    nodes: dict[str, dict[str, Fraction]] = field(default_factory=dict)


def check(pods: Sequence[Pod], cluster: Cluster, taken: _Taken | None = None) -> Verdict:
    """Whether ``pods`` fit what ``cluster`` has left (after ``taken``, the wave's earlier
    clusters, when given; the placement is recorded there)."""
    taken = taken if taken is not None else _Taken()
    requests = total_requests(pods)
    if not pods:
        return Verdict(Fit.FITS, requests, 0)
    shortfalls: list[Shortfall] = []
    unknown: list[str] = []
    if cluster.quotas is None:
        unknown.append(f"quotas: {cluster.quotas_unknown or 'not read'}")
    else:
        found, why = _check_quotas(pods, cluster.quotas, taken.quotas)
        shortfalls += found
        unknown += why
        _take_quotas(pods, cluster.quotas, taken.quotas)
    if cluster.nodes is None:
        unknown.append(f"nodes: {cluster.nodes_unknown or 'not read'}")
    elif not cluster.nodes:
        unknown.append("nodes: the API server lists no nodes")
    else:
        shortfalls += _place(pods, cluster.nodes, taken.nodes)
    if shortfalls:
        fit = Fit.DOES_NOT_FIT
    elif unknown:
        fit = Fit.UNKNOWN
    else:
        fit = Fit.FITS
    return Verdict(fit, requests, len(pods), tuple(shortfalls), tuple(unknown))


def check_wave(
    clusters: Mapping[ServiceKey, Sequence[Pod]], cluster: Cluster
) -> dict[ServiceKey, Verdict]:
    """The new clusters of one wave, which start at once: each in key order against what the
    cluster has left after the ones before it."""
    taken = _Taken()
    return {key: check(clusters[key], cluster, taken) for key in sorted(clusters)}


# --- formatting ----------------------------------------------------------------------------


def format_amount(resource: str, value: Fraction) -> str:
    """``value`` as a Kubernetes quantity a reader knows: cores (``1500m``, ``4``), bytes in
    binary units (``512Mi``, ``1.5Gi``), else a plain number."""
    base = resource.removeprefix("requests.").removeprefix("limits.")
    sign = "-" if value < 0 else ""
    value = abs(value)
    if base == CPU and value.denominator != 1:
        return f"{sign}{_number(value * 1000)}m"
    if base in ("memory", "ephemeral-storage") and value >= 2**10:
        for suffix, unit in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
            if value >= unit:
                return f"{sign}{_number(value / unit)}{suffix}"
    return f"{sign}{_number(value)}"


def _number(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.3f}".rstrip("0").rstrip(".")


def format_amounts(amounts: Amounts) -> str:
    return ", ".join(f"{k} {format_amount(k, v)}" for k, v in sorted(amounts.items()) if v)


# --- while a new cluster starts ------------------------------------------------------------

# The Warning Events KubeRay's RayCluster controller records when it cannot create a pod
# (utils.FailedToCreateHeadPod/FailedToCreateWorkerPod in ray-operator/controllers/ray/utils):
# a quota refusal ends up there, since the pod never exists.
FAILED_TO_CREATE = frozenset({"FailedToCreateHeadPod", "FailedToCreateWorkerPod"})


def pending_explanation(
    pods: Iterable[Mapping[str, Any]], events: Iterable[Mapping[str, Any]]
) -> str | None:
    """Why a new cluster's pods do not run, in the API server's words, or None: its Pending
    pods the scheduler marked unschedulable (``PodScheduled`` False, reason
    ``Unschedulable``: "0/3 nodes are available: 3 Insufficient nvidia.com/gpu"), and the
    pods KubeRay could not create (its Warning Events, e.g. "exceeded quota")."""
    reasons: dict[str, int] = {}
    for pod in pods:
        status = pod.get("status") or {}
        if status.get("phase") != "Pending":
            continue
        for condition in status.get("conditions") or []:
            if (
                condition.get("type") == "PodScheduled"
                and condition.get("status") == "False"
                and condition.get("reason") == "Unschedulable"
            ):
                text = f"unschedulable: {condition.get('message') or 'no reason given'}"
                reasons[text] = reasons.get(text, 0) + 1
    for event in events:
        if event.get("type") == "Warning" and event.get("reason") in FAILED_TO_CREATE:
            message = str(event.get("message") or "")
            text = f"{event['reason']}: {_after_pod_name(message)}"
            count = event.get("count")
            reasons[text] = reasons.get(text, 0) + (count if isinstance(count, int) else 1)
    if not reasons:
        return None
    return "; ".join(
        f"{n} pod{'s' if n > 1 else ''} {text}" if text.startswith("unschedulable") else text
        for text, n in sorted(reasons.items())
    )


def _after_pod_name(message: str) -> str:
    """KubeRay's "Failed to create worker Pod ns/name, <error>": the error, which names the
    quota and the amounts; the pod name is random."""
    head, sep, rest = message.partition(", ")
    return rest if sep and head.startswith("Failed to create") else message
