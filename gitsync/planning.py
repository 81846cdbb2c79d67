"""Wires the stages for ``gitsync plan``/``diff``: trees at revisions → desired objects →
a :class:`~gitsync.plan.Plan`. Reads disk and git through the edges; decides nothing itself.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from gitsync.checkout import read_tree
from gitsync.diff.classify import Options
from gitsync.diff.normalize import owned
from gitsync.errors import ConfigError, InvalidRevision
from gitsync.kube.rayservices import RayServices
from gitsync.manifests.repoconfig import EnvironmentConfig
from gitsync.model import DesiredService, ServiceKey
from gitsync.plan import Plan, build_plan
from gitsync.source.local import LocalRepository
from gitsync.stamp import stamped


def desired_services(
    tree: Path, environment: str, label: str
) -> tuple[EnvironmentConfig, tuple[DesiredService, ...]]:
    """The environment's config and its RayServices at one tree, or every problem."""
    report = read_tree(tree)
    if report.config is None:
        raise InvalidRevision(f"gitsync.yaml at {label}", report.problems)
    try:
        env = report.config.environment(environment)
    except KeyError as exc:
        raise ConfigError(f"{exc.args[0]} at {label}") from None
    loaded = next(e for e in report.environments if e.environment.name == environment)
    if not loaded.ok:
        raise InvalidRevision(f"environment {environment!r} at {label}", loaded.problems)
    return env, loaded.services


def desired_state(
    tree: Path, environment: str, label: str
) -> tuple[EnvironmentConfig, dict[ServiceKey, dict[str, Any]]]:
    """The environment's config and its RayServices, normalised, at one tree."""
    env, services = desired_services(tree, environment, label)
    return env, {s.key: owned(s.manifest) for s in services}


def offline_plan(
    repo: Path, environment: str, from_rev: str, to_rev: str, options: Options
) -> Plan:
    """What merging ``to_rev`` would do relative to ``from_rev``: Git against Git, no cluster."""
    with tempfile.TemporaryDirectory(prefix="gitsync-plan-") as cache:
        local = LocalRepository(repo, Path(cache))
        old_sha, new_sha = local.resolve(from_rev), local.resolve(to_rev)
        env, desired = desired_state(local.tree(new_sha), environment, f"{to_rev} ({new_sha[:12]})")
        try:
            _, current = desired_state(
                local.tree(old_sha), environment, f"{from_rev} ({old_sha[:12]})"
            )
        except ConfigError:
            current = {}  # the environment is new in to_rev: everything is a create
    return build_plan(
        env.name, env.namespace, current, desired, options, from_rev=old_sha, to_rev=new_sha
    )


def live_plan(
    tree: Path,
    environment: str,
    rayservices: RayServices,
    options: Options,
    revision: str | None = None,
) -> Plan:
    """What applying ``tree`` would do to the cluster now.

    Each desired service is server-side-apply dry-run as ``gitsync`` and compared with the
    live object (as Flux does), so CRD defaults, admission and other managers' fields count
    exactly as the API server sees them. Prunes are the gitsync-managed services of this
    environment that Git no longer declares.
    """
    env, services = desired_services(tree, environment, str(tree))
    live = rayservices.list_managed(env.namespace, env.name)
    current: dict[ServiceKey, dict[str, Any]] = {k: owned(v) for k, v in live.items()}
    desired: dict[ServiceKey, dict[str, Any]] = {}
    for service in services:
        if service.key not in live and (existing := rayservices.get(service.key)) is not None:
            current[service.key] = owned(existing)  # there, but not (yet) labelled as ours
        body = stamped(
            service.manifest,
            environment=env.name,
            revision=revision,
            source=service.source,
            wave=service.wave,
        )
        desired[service.key] = owned(rayservices.apply(body, dry_run=True, force=True))
    return build_plan(env.name, env.namespace, current, desired, options, to_rev=revision)
