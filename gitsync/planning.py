"""Wires the stages for ``gitsync plan``/``diff``: trees at revisions → desired objects →
one :class:`~gitsync.plan.Plan` per environment, in ``after:`` order. Reads disk, git and the
cluster through the edges; decides nothing itself.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gitsync.capacity import Pod, Verdict, added_pods, check_wave, cluster_pods
from gitsync.checkout import TreeReport, read_tree
from gitsync.config import DEFAULT_CONCURRENCY
from gitsync.diff.classify import Options
from gitsync.diff.normalize import comparable, owned, owned_object
from gitsync.errors import ConfigError, InvalidRevision, NamespaceMissing
from gitsync.kube.capacity import read_cluster
from gitsync.kube.rayservices import RayServices
from gitsync.manifests.load import EnvironmentManifests
from gitsync.manifests.repoconfig import REPO_CONFIG_FILE
from gitsync.model import Action, DesiredObject, DesiredService, Problem, ServiceKey
from gitsync.plan import Plan, build_plan, unchanged_plan
from gitsync.source.local import LocalRepository
from gitsync.stamp import reconcile_disabled, stamp_service, stamped_hash, untouched_since_apply


def _valid_config(report: TreeReport, label: str) -> TreeReport:
    if report.config is None:
        raise InvalidRevision(f"gitsync.yaml at {label}", report.problems)
    return report


def confined(report: TreeReport, allowed: Callable[[str], tuple[str, ...] | None]) -> TreeReport:
    """``report`` with every environment whose namespace the agent config does not allow
    (``allowedNamespaces``; ``allowed(name)`` is None when any is) made invalid at its
    ``gitsync.yaml`` line, so nothing of the revision is applied: whoever can push
    ``gitsync.yaml`` cannot point an environment at another namespace. Pure; the cached tree
    report is never changed (the agent config is not the tree's)."""
    if report.config is None:
        return report
    environments = []
    added: list[Problem] = []
    for loaded in report.environments:
        env = loaded.environment
        namespaces = allowed(env.name)
        if namespaces is None or env.namespace in namespaces:
            environments.append(loaded)
            continue
        if namespaces:
            why = (
                f"environment {env.name!r} deploys to namespace {env.namespace!r}, which the "
                f"agent config does not allow (allowedNamespaces.{env.name}: "
                f"{', '.join(namespaces)}); nothing of this revision is applied"
            )
        else:
            why = (
                f"environment {env.name!r} is not in the agent config's allowedNamespaces, so "
                f"it may deploy nowhere (namespace {env.namespace!r}); nothing of this "
                "revision is applied"
            )
        problem = Problem(REPO_CONFIG_FILE, env.line or None, why)
        added.append(problem)
        environments.append(replace(loaded, problems=(problem, *loaded.problems)))
    if not added:
        return report
    return replace(report, environments=tuple(environments), problems=(*added, *report.problems))


def ordered_environments(report: TreeReport, wanted: Sequence[str] | None, label: str) -> list[str]:
    """``wanted`` (each checked to exist), or every environment, in ``after:`` order."""
    config = _valid_config(report, label).config
    assert config is not None
    order = [env.name for stage in config.ordered() for env in stage]
    for name in wanted or ():
        if name not in order:
            raise ConfigError(
                f"no environment {name!r} in gitsync.yaml at {label} (known: {', '.join(order)})"
            )
    return [name for name in order if not wanted or name in wanted]


def environment_manifests(report: TreeReport, environment: str, label: str) -> EnvironmentManifests:
    """One environment's loaded manifests, or every problem that makes it invalid."""
    _valid_config(report, label)
    loaded = next((e for e in report.environments if e.environment.name == environment), None)
    if loaded is None:
        raise ConfigError(f"no environment {environment!r} in gitsync.yaml at {label}")
    if not loaded.ok:
        raise InvalidRevision(f"environment {environment!r} at {label}", loaded.problems)
    return loaded


def _normalised(loaded: EnvironmentManifests) -> dict[ServiceKey, dict[str, Any]]:
    return {key: comparable(o.manifest) for key, o in loaded.desired.items()}


def offline_plans(
    repo: Path,
    environments: Sequence[str] | None,
    from_rev: str,
    to_rev: str,
    options: Options,
    capacity: RayServices | None = None,
) -> list[Plan]:
    """What merging ``to_rev`` would do relative to ``from_rev``: Git against Git, no
    cluster; but for ``capacity``, whose quotas and nodes the new pods are checked against."""
    with tempfile.TemporaryDirectory(prefix="gitsync-plan-") as cache:
        local = LocalRepository(repo, Path(cache))
        old_sha, new_sha = local.resolve(from_rev), local.resolve(to_rev)
        new_label, old_label = f"{to_rev} ({new_sha[:12]})", f"{from_rev} ({old_sha[:12]})"
        new, old = read_tree(local.tree(new_sha)), read_tree(local.tree(old_sha))
    return tree_plans(
        old, new, environments, options, old_sha, new_sha, old_label, new_label, capacity
    )


def tree_plans(
    old: TreeReport,
    new: TreeReport,
    environments: Sequence[str] | None,
    options: Options,
    old_sha: str,
    new_sha: str,
    old_label: str = "",
    new_label: str = "",
    capacity: RayServices | None = None,
) -> list[Plan]:
    """Git against Git: what moving each environment from ``old`` to ``new`` would do. With
    ``capacity``: and whether the pods it starts fit the quotas and nodes of that cluster now
    (:func:`with_capacity`, ``old`` standing for the live objects)."""
    plans = []
    for name in ordered_environments(new, environments, new_label or new_sha[:12]):
        target = environment_manifests(new, name, new_label or new_sha[:12])
        try:
            current = _normalised(environment_manifests(old, name, old_label or old_sha[:12]))
        except ConfigError:
            current = {}  # the environment is new in to_rev: everything is a create
        env = target.environment
        plan = build_plan(
            env.name,
            env.namespace,
            current,
            _normalised(target),
            options,
            prune=env.prune,
            from_rev=old_sha,
            to_rev=new_sha,
        )
        plans.append(plan if capacity is None else with_capacity(plan, target, capacity, current))
    return plans


def live_plans(
    tree: Path,
    environments: Sequence[str] | None,
    rayservices: RayServices,
    options: Options,
    revision: str | None = None,
) -> list[Plan]:
    """What applying ``tree`` would do to the cluster now.

    Each desired service is server-side-apply dry-run as ``gitsync`` and compared with the
    live object (as Flux does), so CRD defaults, admission and other managers' fields count
    exactly as the API server sees them. Prunes are the gitsync-managed services of each
    environment that Git no longer declares (orphans, left running, when it does not prune).
    """
    report = read_tree(tree)
    return [
        live_environment_plan(
            environment_manifests(report, name, str(tree)), rayservices, options, revision
        )
        for name in ordered_environments(report, environments, str(tree))
    ]


def live_environment_plan(
    loaded: EnvironmentManifests,
    rayservices: RayServices,
    options: Options,
    revision: str | None,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> Plan:
    """One environment against the cluster.

    First one metadata-only list: when every desired service carries the hash of its current
    body and no other manager wrote its spec since, and nothing is left to prune, the plan is
    "unchanged" without reading a spec. Otherwise both sides as :func:`live_sides` compares
    them, planned by :func:`sides_plan`. A service whose live object disables reconciling it
    is planned as skipped (:func:`gitsync.stamp.reconcile_disabled`); the metadata list is
    enough to tell."""
    env = loaded.environment
    others = _other_kinds(loaded, rayservices, revision, concurrency)
    hashes = {
        service.key: stamped_hash(
            service.manifest, environment=env.name, source=service.source, wave=service.wave
        )
        for service in loaded.services
    }
    # The usual pass changes nothing: metadata alone proves it (no spec or status bytes).
    metadata = rayservices.list_managed_metadata(env.namespace, env.name)
    manifests = {service.key: service.manifest for service in loaded.services}
    if (
        others.untouched
        and metadata.keys() == hashes.keys()
        and all(
            untouched_since_apply(metadata[key], manifests[key], applied)
            for key, applied in hashes.items()
        )
    ):
        waves = {key: o.wave for key, o in loaded.desired.items()}
        disabled = frozenset(
            key for key, obj in metadata.items() if reconcile_disabled(obj, manifests.get(key))
        )
        return unchanged_plan(
            env.name, env.namespace, waves, to_rev=revision, disabled=disabled | others.disabled
        )
    sides = live_sides(loaded, rayservices, revision, concurrency, others=others)
    plan = sides_plan(loaded, sides, options, revision)
    return with_capacity(plan, loaded, rayservices, sides.current)


@dataclass(frozen=True)
class LiveSides:
    """One environment against the cluster, both sides normalised
    (:func:`gitsync.diff.normalize.comparable`): ``live``, gitsync's objects there as listed
    and as read (their managedFields say who wrote each field); ``current``, those and every
    desired object there but not (yet) labelled as gitsync's; ``desired``, Git's bodies as
    the API server would store them; the objects whose reconcile is disabled; and whether
    every one is provably as Git wants it (nothing was dry-run, nothing is left over)."""

    live: dict[ServiceKey, dict[str, Any]]
    current: dict[ServiceKey, dict[str, Any]]
    desired: dict[ServiceKey, dict[str, Any]]
    disabled: frozenset[ServiceKey]
    untouched: bool

    def __or__(self, other: LiveSides) -> LiveSides:
        return LiveSides(
            self.live | other.live,
            self.current | other.current,
            self.desired | other.desired,
            self.disabled | other.disabled,
            self.untouched and other.untouched,
        )


def live_sides(
    loaded: EnvironmentManifests,
    rayservices: RayServices,
    revision: str | None,
    concurrency: int = DEFAULT_CONCURRENCY,
    *,
    others: LiveSides | None = None,
    keys: Collection[ServiceKey] | None = None,
) -> LiveSides:
    """Both sides of one environment against the cluster, as the sync pass plans them and
    drift checks them: one full list per kind (current objects and prune candidates), and a
    server-side dry run of each desired object that may differ (``concurrency`` at a time).
    ``others``: the other kinds' half, when the caller already has it. ``keys``: only these
    objects, on both sides (an event-driven drift check of the objects another writer
    changed): nothing else is read, dry-run or compared."""
    env = loaded.environment
    if keys is not None:
        loaded = _narrowed(loaded, keys)
    if others is None:
        others = _other_kinds(loaded, rayservices, revision, concurrency, keys)
    if keys is None:
        live = rayservices.list_managed(env.namespace, env.name)
    else:  # only these decoded (from the cache) or kept (from a list)
        names = {key.name for key in keys if key.is_rayservice and key.namespace == env.namespace}
        live = rayservices.list_managed(env.namespace, env.name, names=names)
    services = _compared(
        loaded.services, live, rayservices.get, owned, rayservices, env.name, revision, concurrency
    )
    return services | others


def _narrowed(loaded: EnvironmentManifests, keys: Collection[ServiceKey]) -> EnvironmentManifests:
    """``loaded`` with only the desired objects of ``keys``, and only the other kinds one of
    ``keys`` is of (the lists of the others are not needed)."""
    kinds = {(key.api_version, key.kind) for key in keys}
    return replace(
        loaded,
        services=tuple(s for s in loaded.services if s.key in keys),
        objects=tuple(o for o in loaded.objects if o.key in keys),
        kinds=tuple(k for k in loaded.kinds if (k.api_version, k.kind) in kinds),
    )


def sides_plan(
    loaded: EnvironmentManifests,
    sides: LiveSides,
    options: Options,
    revision: str | None,
    keys: Collection[ServiceKey] | None = None,
) -> Plan:
    """The plan of ``sides`` (of ``keys`` only, when given): what the sync pass applies, and
    what drift heals."""
    env = loaded.environment

    def kept(side: dict[ServiceKey, dict[str, Any]]) -> dict[ServiceKey, dict[str, Any]]:
        return side if keys is None else {k: v for k, v in side.items() if k in keys}

    return build_plan(
        env.name,
        env.namespace,
        kept(sides.current),
        kept(sides.desired),
        options,
        prune=env.prune,
        to_rev=revision,
        disabled=sides.disabled,
    )


NEW_CLUSTER = frozenset({Action.CREATE, Action.CLUSTER_SWAP})


def with_capacity(
    plan: Plan,
    loaded: EnvironmentManifests,
    rayservices: RayServices,
    live: Mapping[ServiceKey, Mapping[str, Any]] | None = None,
) -> Plan:
    """``plan`` with a capacity verdict (docs/capacity.md) for every RayService that starts a
    new cluster (a create or a cluster-swap) or adds pods to its running one (a
    cluster-in-place change, against its ``live`` object), each wave's checked together
    against what the namespace's quotas and the nodes have now; unless the environment's
    ``capacityCheck`` is off. The cluster is read only when a plan adds pods."""
    env = loaded.environment
    demands = _demands(plan, loaded, live or {})
    if env.capacity_check == "off" or not demands:
        return replace(plan, capacity_check=env.capacity_check)
    cluster = read_cluster(rayservices.api, env.namespace)
    verdicts: dict[ServiceKey, Verdict] = {}
    for wave in plan.waves:
        pods = {c.key: demands[c.key] for c in wave.changes if c.key in demands}
        if pods:
            verdicts.update(check_wave(pods, cluster))
    return replace(plan, capacity=verdicts, capacity_check=env.capacity_check, demands=demands)


def _demands(
    plan: Plan, loaded: EnvironmentManifests, live: Mapping[ServiceKey, Mapping[str, Any]]
) -> dict[ServiceKey, tuple[Pod, ...]]:
    """The pods each change of ``plan`` adds: a new cluster's, or an in-place change's."""
    manifests = {service.key: service.manifest for service in loaded.services}
    out: dict[ServiceKey, tuple[Pod, ...]] = {}
    for change in plan.changes:
        if change.key not in manifests:
            continue
        if change.action in NEW_CLUSTER:
            out[change.key] = tuple(cluster_pods(manifests[change.key]))
        elif change.action is Action.CLUSTER_IN_PLACE and change.key in live:
            out[change.key] = tuple(added_pods(live[change.key], manifests[change.key]))
    return {key: pods for key, pods in out.items() if pods}


def _compared(
    declared: Iterable[DesiredService | DesiredObject],
    live: dict[ServiceKey, dict[str, Any]],
    get: Callable[[ServiceKey], dict[str, Any] | None],
    normalise: Callable[[Mapping[str, Any]], dict[str, Any]],
    rayservices: RayServices,
    environment: str,
    revision: str | None,
    concurrency: int,
) -> LiveSides:
    """One kind's sides: ``live`` (gitsync's objects of it, as listed) against Git's
    ``declared`` objects, each stamped and dry-run unless its live object is provably
    untouched since gitsync applied it (then no request: nothing can differ)."""
    manifests = {o.key: o.manifest for o in declared}
    current = {key: normalise(obj) for key, obj in live.items()}
    desired: dict[ServiceKey, dict[str, Any]] = {}
    disabled = {key for key, obj in live.items() if reconcile_disabled(obj, manifests.get(key))}
    asks: list[tuple[ServiceKey, dict[str, Any]]] = []
    for obj in declared:
        body = stamp_service(obj, environment, revision)
        if obj.key not in live and (existing := get(obj.key)) is not None:
            current[obj.key] = normalise(existing)  # there, but not (yet) labelled as ours
            if reconcile_disabled(existing, obj.manifest):
                disabled.add(obj.key)
        if obj.key in live and untouched_since_apply(live[obj.key], body):
            desired[obj.key] = current[obj.key]
        else:
            asks.append((obj.key, body))
    desired.update(dry_run_many(rayservices, asks, concurrency))
    untouched = not asks and live.keys() <= desired.keys()
    return LiveSides(dict(live), current, desired, frozenset(disabled), untouched)


def dry_run_many(
    rayservices: RayServices,
    asks: Sequence[tuple[ServiceKey, dict[str, Any]]],
    concurrency: int = DEFAULT_CONCURRENCY,
) -> dict[ServiceKey, dict[str, Any]]:
    """Each stamped body as the API server would store it (a server-side-apply dry run as
    ``gitsync``, forced), normalised (:func:`gitsync.diff.normalize.comparable`),
    ``concurrency`` at a time: the one place gitsync asks the cluster what a body becomes.
    In a namespace that does not exist yet nothing can be there, so Git's body (with the
    CRD's defaults) is exact."""

    def dry_run(ask: tuple[ServiceKey, dict[str, Any]]) -> dict[str, Any]:
        try:
            return comparable(rayservices.apply(ask[1], dry_run=True, force=True))
        except NamespaceMissing:
            return comparable(ask[1])

    if len(asks) > 1 and concurrency > 1:
        with ThreadPoolExecutor(max_workers=min(concurrency, len(asks))) as pool:
            answers = list(pool.map(dry_run, asks))
    else:
        answers = [dry_run(ask) for ask in asks]
    return {key: answer for (key, _), answer in zip(asks, answers, strict=True)}


def _other_kinds(
    loaded: EnvironmentManifests,
    rayservices: RayServices,
    revision: str | None,
    concurrency: int,
    keys: Collection[ServiceKey] | None = None,
) -> LiveSides:
    """The objects of ``allowedKinds`` against the cluster, as RayServices are: one list per
    kind (gitsync's objects of it there, prune candidates included), and a server-side dry
    run of each object that may differ. A kind the API server does not serve, or serves
    cluster-wide, is refused at the object's file:line before anything is applied."""
    env, objects = loaded.environment, rayservices.objects
    problems = []
    for obj in loaded.objects:
        resource = objects.discovery.resource(obj.api_version, obj.kind)
        if resource is None:
            problems.append(
                Problem(
                    obj.source,
                    obj.line,
                    f"the API server serves no {obj.kind} in {obj.api_version}: install the "
                    "CRD that defines it (or fix apiVersion/kind)",
                )
            )
        elif not resource.namespaced:
            problems.append(
                Problem(
                    obj.source,
                    obj.line,
                    f"{obj.kind} is cluster-scoped: gitsync applies namespaced objects only "
                    f"(into the environment's namespace {env.namespace})",
                )
            )
    if problems:
        raise InvalidRevision(f"environment {env.name!r} against the cluster", tuple(problems))
    live: dict[ServiceKey, dict[str, Any]] = {}
    names = None if keys is None else {k.name for k in keys if not k.is_rayservice}
    for kind in loaded.kinds:
        live |= objects.list_managed(
            env.namespace, env.name, kind.api_version, kind.kind, names=names
        )
    if keys is not None:
        live = {key: obj for key, obj in live.items() if key in keys}
    return _compared(
        loaded.objects,
        live,
        objects.get,
        owned_object,
        rayservices,
        env.name,
        revision,
        concurrency,
    )
