"""Classification: (live or previous, desired) → one :class:`Change` with a KubeRay action.

Owns the mapping from a diff to what KubeRay will really do (docs/architecture.md, 'KubeRay
rules'), using the rules of one KubeRay minor version (:class:`gitsync.kuberay.Semantics`):

- cluster fields in the spec hash changed → ``cluster-swap`` under zero downtime (the new
  cluster gets the new Serve config), else ``cluster-ignored`` (upgradeStrategy None or the
  operator's ENABLE_ZERO_DOWNTIME=false);
- only worker groups appended → ``cluster-in-place``;
- only hash-muted fields (replicas, min/max, workersToDelete…, or a resource quantity spelled
  differently, equal once typed) → ``scale-ineffective``: KubeRay neither swaps nor
  propagates them;
- ``serveConfigV2`` structure changed → ``serve-update``; text only → ``serve-reformat``;
- labels, annotations or settings KubeRay reads directly → ``metadata``.

Both inputs are already normalised (:func:`gitsync.diff.normalize.owned`). Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gitsync import kuberay, names
from gitsync.diff.serve import ServeChange, ServeDiff, diff_serve
from gitsync.diff.structural import Difference, describe, differences, field_change, keyed, mask
from gitsync.mask import secret_roots_of
from gitsync.model import Action, Change, FieldChange, ServiceKey


@dataclass(frozen=True)
class Options:
    semantics: kuberay.Semantics = field(default=kuberay.BASELINE)
    operator_zero_downtime: bool = True  # the operator's ENABLE_ZERO_DOWNTIME
    # Environment variable (and Secret) values in details and fields: masked unless True.
    show_env_values: bool = False


DEFAULT_OPTIONS = Options()


def wave_of(obj: Mapping[str, Any] | None) -> int:
    annotations = ((obj or {}).get("metadata") or {}).get("annotations") or {}
    try:
        return int(annotations.get(names.WAVE, 0))
    except (TypeError, ValueError):
        return 0


def key_of(obj: Mapping[str, Any]) -> ServiceKey:
    metadata = obj["metadata"]
    return ServiceKey(str(metadata.get("namespace")), str(metadata["name"]))


def classify(
    current: Mapping[str, Any] | None,
    desired: Mapping[str, Any] | None,
    options: Options = DEFAULT_OPTIONS,
) -> Change:
    if desired is None:
        assert current is not None
        return Change(
            key_of(current),
            Action.PRUNE,
            wave_of(current),
            "no longer in Git: will be deleted (its RayCluster and Serve apps with it)",
        )
    key, wave = key_of(desired), wave_of(desired)
    if current is None:
        return Change(
            key,
            Action.CREATE,
            wave,
            "new RayService: KubeRay creates a cluster, then deploys Serve",
        )
    update = _update(key, wave, current, desired, options)
    return _cluster_decision(update) or _serve_or_settings_decision(update)


@dataclass(frozen=True)
class _Update:
    """An existing RayService and Git's version of it, compared: what the decision reads."""

    key: ServiceKey
    wave: int
    semantics: kuberay.Semantics
    spec: Mapping[str, Any]
    old_cluster: Mapping[str, Any]
    cluster: Mapping[str, Any]
    cluster_change: kuberay.ClusterChange
    zero_downtime: bool
    serve: ServeDiff
    cluster_details: list[str]
    other_details: list[str]
    warnings: tuple[str, ...]
    fields: tuple[FieldChange, ...]

    def change(self, action: Action, summary: str, details: list[str]) -> Change:
        return Change(
            self.key,
            action,
            self.wave,
            summary,
            tuple(details),
            self.warnings,
            self.fields,
        )


def _update(
    key: ServiceKey,
    wave: int,
    current: Mapping[str, Any],
    desired: Mapping[str, Any],
    options: Options,
) -> _Update:
    spec, old_spec = desired.get("spec") or {}, current.get("spec") or {}
    semantics = options.semantics
    cluster, old_cluster = (
        spec.get("rayClusterConfig") or {},
        old_spec.get("rayClusterConfig") or {},
    )
    # KubeRay's shouldUpdateCluster + isClusterSpecHashEqual
    cluster_change = kuberay.classify_cluster_change(old_cluster, cluster, semantics)
    # KubeRay's isZeroDowntimeUpgradeEnabled
    zero_downtime = kuberay.zero_downtime_enabled(
        spec, operator_env_zero_downtime=options.operator_zero_downtime, semantics=semantics
    )
    reveal = options.show_env_values
    serve = diff_serve(old_spec.get("serveConfigV2"), spec.get("serveConfigV2"), reveal)
    cluster_diffs = (
        differences(keyed(old_cluster), keyed(cluster)) if cluster != old_cluster else []
    )
    other_diffs = _other_differences(current, desired)
    if not reveal:
        cluster_diffs, other_diffs = (
            [mask(d) for d in cluster_diffs],
            [mask(d) for d in other_diffs],
        )
    fields = (
        *(field_change(d, "spec.rayClusterConfig") for d in cluster_diffs),
        *serve.fields,
        *(field_change(d) for d in other_diffs),
    )
    return _Update(
        key=key,
        wave=wave,
        semantics=semantics,
        spec=spec,
        old_cluster=old_cluster,
        cluster=cluster,
        cluster_change=cluster_change,
        zero_downtime=zero_downtime,
        serve=serve,
        cluster_details=[describe(d, "rayClusterConfig") for d in cluster_diffs],
        other_details=[describe(d) for d in other_diffs],
        warnings=_warnings(old_spec, spec, cluster_change, zero_downtime, semantics),
        fields=fields,
    )


def _cluster_decision(u: _Update) -> Change | None:
    """A cluster swap, a cluster change KubeRay ignores, or an in-place cluster update, in
    KubeRay's order of precedence; None when the cluster part does not decide."""
    if u.cluster_change is kuberay.ClusterChange.NEW_CLUSTER and u.zero_downtime:
        details = list(u.cluster_details)
        if u.serve.change is ServeChange.UPDATE:
            details.append(
                "the new cluster gets the new Serve config; the old cluster keeps "
                "serving the old one until traffic switches"
            )
            details += u.serve.details
        return u.change(
            Action.CLUSTER_SWAP,
            "new RayCluster, traffic switched when its Serve apps are RUNNING",
            details + u.other_details,
        )
    if (
        u.cluster_change is kuberay.ClusterChange.NEW_CLUSTER
        and u.serve.change is not ServeChange.UPDATE
    ):
        return u.change(
            Action.CLUSTER_IGNORED,
            _ignored_reason(u.spec, u.semantics),
            u.cluster_details + u.other_details,
        )
    if u.cluster_change is kuberay.ClusterChange.IN_PLACE:
        summary = "worker groups appended: the running cluster is updated in place"
        if u.semantics.suspend_in_place and bool(u.old_cluster.get("suspend")) != bool(
            u.cluster.get("suspend")
        ):
            summary = "suspend toggled: the running cluster is updated in place"
        return u.change(
            Action.CLUSTER_IN_PLACE,
            summary,
            u.cluster_details + list(u.serve.details) + u.other_details,
        )
    return None


def _serve_or_settings_decision(u: _Update) -> Change:
    """What is left once the cluster part does not decide, in KubeRay's order of precedence:
    a Serve update, hash-muted cluster fields, a Serve reformat, settings, or nothing."""
    if u.serve.change is ServeChange.UPDATE:
        apps = ", ".join(u.serve.apps_changed) or "config"
        return u.change(
            Action.SERVE_UPDATE,
            f"in-place Serve update on the running cluster ({apps})",
            list(u.serve.details) + u.cluster_details + u.other_details,
        )
    if u.cluster_details:  # hash-equal: only muted fields differ
        return u.change(
            Action.SCALE_INEFFECTIVE,
            f"only fields {u.semantics} does not propagate changed (replicas, min/max, "
            "workersToDelete, a quantity's spelling…): the running cluster keeps its "
            "current size",
            u.cluster_details + u.other_details,
        )
    if u.serve.change is ServeChange.REFORMAT:
        return u.change(
            Action.SERVE_REFORMAT,
            "serveConfigV2 reformatted: no app changes",
            list(u.serve.details) + u.other_details,
        )
    if u.other_details:
        return u.change(
            Action.METADATA,
            "labels, annotations or settings only: no rollout",
            u.other_details,
        )
    return Change(u.key, Action.UNCHANGED, u.wave, "unchanged")


def _ignored_reason(spec: Mapping[str, Any], semantics: kuberay.Semantics) -> str:
    strategy = (
        (spec.get("upgradeStrategy") or {}).get("type")
        if semantics.upgrade_strategy_field
        else None
    )
    why = (
        f"upgradeStrategy.type is {strategy}"
        if strategy
        else "the operator has ENABLE_ZERO_DOWNTIME=false"
    )
    return (
        f"cluster change ignored by KubeRay ({why}): the running cluster is not replaced or updated"
    )


def _other_differences(current: Mapping[str, Any], desired: Mapping[str, Any]) -> list[Difference]:
    before = {"metadata": current.get("metadata"), "spec": _settings(current)}
    after = {"metadata": desired.get("metadata"), "spec": _settings(desired)}
    return differences(keyed(before), keyed(after))


def _settings(obj: Mapping[str, Any]) -> dict[str, Any]:
    spec = obj.get("spec") or {}
    return {k: v for k, v in spec.items() if k not in ("rayClusterConfig", "serveConfigV2")}


def _warnings(
    old_spec: Mapping[str, Any],
    spec: Mapping[str, Any],
    cluster_change: kuberay.ClusterChange,
    zero_downtime: bool,
    semantics: kuberay.Semantics,
) -> tuple[str, ...]:
    warnings = []
    if cluster_change is kuberay.ClusterChange.NEW_CLUSTER and zero_downtime:
        warnings.append(
            "a cluster swap runs old and new clusters side by side: it needs about "
            "twice this service's cluster resources until the switch"
        )
        warnings.append(
            "editing rayClusterConfig again before the switch starts yet another new "
            "cluster (reverting does not cancel the pending one)"
        )
    if (
        cluster_change is kuberay.ClusterChange.NEW_CLUSTER
        and not zero_downtime
        and (spec.get("serveConfigV2") != old_spec.get("serveConfigV2"))
    ):
        warnings.append(
            f"{semantics} ignores the rayClusterConfig part of this change "
            "(zero-downtime upgrades are off); only the Serve config is applied"
        )
    if spec.get("serveService") != old_spec.get("serveService"):
        warnings.append(
            "serveService edits reach the Kubernetes Service only at the next cluster switch"
        )
    return tuple(warnings)


def object_key(obj: Mapping[str, Any]) -> ServiceKey:
    metadata = obj["metadata"]
    return ServiceKey(
        str(metadata.get("namespace")),
        str(metadata["name"]),
        str(obj.get("kind")),
        str(obj.get("apiVersion")),
    )


def classify_object(
    current: Mapping[str, Any] | None,
    desired: Mapping[str, Any] | None,
    options: Options = DEFAULT_OPTIONS,
) -> Change:
    """A kind other than RayService (``allowedKinds``): nothing Ray-aware to predict, so
    what ``kubectl apply`` reports: created, configured (each changed field old → new),
    unchanged, or pruned. Inputs normalised by :func:`gitsync.diff.normalize.owned_object`."""
    if desired is None:
        assert current is not None
        return Change(
            object_key(current), Action.PRUNE, wave_of(current), "no longer in Git: will be deleted"
        )
    key, wave = object_key(desired), wave_of(desired)
    if current is None:
        return Change(key, Action.CREATE, wave, f"new {key.kind}")
    found = differences(keyed(dict(current)), keyed(dict(desired)))
    if not options.show_env_values:
        roots = secret_roots_of(desired) or secret_roots_of(current)
        found = [mask(d, roots) for d in found]
    if not found:
        return Change(key, Action.UNCHANGED, wave, "unchanged")
    details = tuple(describe(d) for d in found)
    return Change(key, Action.CONFIGURED, wave, f"{len(found)} field(s) changed", details)


def classify_any(
    current: Mapping[str, Any] | None,
    desired: Mapping[str, Any] | None,
    options: Options = DEFAULT_OPTIONS,
) -> Change:
    """:func:`classify` for a RayService, :func:`classify_object` for any other kind."""
    either = desired if desired is not None else current
    assert either is not None
    if (either.get("apiVersion"), either.get("kind")) == ("ray.io/v1", "RayService"):
        return classify(current, desired, options)
    return classify_object(current, desired, options)
