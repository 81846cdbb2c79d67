"""Masking: the values of environment variables (and Secret data) out of every diff. Pure.

Owns the one rule of what is secret in a RayService or another object, applied to *values*
before they become text, so a detail line, a ``fields`` entry, a PR comment, a log line, the
rollout record in the state ConfigMap and the status page all show ``•••`` for the same
places. Matching text after the fact misses values nested in a whole added object (an added
application carrying ``runtime_env.env_vars``, an added ``ray_actor_options``); walking the
values does not. Secret positions:

- ``…runtime_env.env_vars.NAME`` (Serve, per application and per deployment's
  ``ray_actor_options``);
- ``…env[NAME].value`` in a container (``valueFrom`` is a reference and stays shown);
- ``data.*`` and ``stringData.*`` of a Secret (``allowedKinds`` may include Secrets).

Names stay visible: which variable changed is useful, its value is not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

MASK = "•••"

Path = Sequence[str | int]


def _is_item(part: str | int) -> bool:
    """A list position: an index, or a name :func:`gitsync.diff.structural.keyed` gave it."""
    return isinstance(part, int) or part.startswith("[")


def secret_at(path: Path, secret_roots: tuple[str, ...] = ()) -> bool:
    """Whether the value at ``path`` (or everything beneath it) is secret."""
    if path and path[0] in secret_roots and len(path) > 1:
        return True
    for at, part in enumerate(path):
        if part == "env_vars" and len(path) > at + 1:
            return True
        if (
            part == "env"
            and len(path) > at + 2
            and _is_item(path[at + 1])
            and path[at + 2] == "value"
        ):
            return True
    return False


def masked(value: Any, path: Path = (), secret_roots: tuple[str, ...] = ()) -> Any:
    """``value`` (found at ``path``) with every secret value beneath it replaced by
    :data:`MASK`; absent stays absent (None), everything else is unchanged."""
    if value is None:
        return None
    if secret_at(path, secret_roots):
        return MASK
    if isinstance(value, Mapping):
        return {k: masked(v, (*path, k), secret_roots) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v, (*path, i), secret_roots) for i, v in enumerate(value)]
    return value


def secret_roots_of(obj: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The top-level fields whose every value is secret in ``obj``: a Secret's data."""
    if obj is not None and obj.get("kind") == "Secret" and obj.get("apiVersion") == "v1":
        return ("data", "stringData")
    return ()
