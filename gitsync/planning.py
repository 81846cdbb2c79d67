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
from gitsync.manifests.repoconfig import EnvironmentConfig
from gitsync.model import ServiceKey
from gitsync.plan import Plan, build_plan
from gitsync.source.local import LocalRepository


def desired_state(
    tree: Path, environment: str, label: str
) -> tuple[EnvironmentConfig, dict[ServiceKey, dict[str, Any]]]:
    """The environment's config and its RayServices, normalised, at one tree."""
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
    return env, {s.key: owned(s.manifest) for s in loaded.services}


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
