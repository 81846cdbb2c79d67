"""Reading CustomResourceDefinition files: KubeRay's are about 1 MB of YAML each.

PyYAML's pure-Python parser takes about 4 s of CPU per KubeRay CRD file; its libyaml binding
(which the PyPI wheels carry) takes a tenth of that, and a file read once in a process is kept,
so the control planes a test worker starts one after another parse each file once.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml

# The C loader where PyYAML was built with libyaml; the same safe constructors either way.
_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def documents(path: Path) -> tuple[dict[str, Any], ...]:
    """Every non-empty document of ``path``, parsed once per process per file version.
    Shared between callers: read them, never change them."""
    stat = path.stat()
    return _parsed(path.resolve(), stat.st_mtime_ns, stat.st_size)


def crd(path: Path) -> dict[str, Any]:
    """The one CustomResourceDefinition in ``path``."""
    found = [d for d in documents(path) if d.get("kind") == "CustomResourceDefinition"]
    if len(found) != 1:
        raise ValueError(f"{path}: {len(found)} CustomResourceDefinitions, expected one")
    return found[0]


@functools.lru_cache(maxsize=32)
def _parsed(path: Path, mtime_ns: int, size: int) -> tuple[dict[str, Any], ...]:
    del mtime_ns, size  # the cache key: a rewritten file is read again
    return tuple(d for d in yaml.load_all(path.read_text(), Loader=_LOADER) if d)
