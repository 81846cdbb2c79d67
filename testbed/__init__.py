"""The test bed: real kube-apiserver + etcd built from Go modules, and a KubeRay simulator.

Used by the pytest session fixtures (tests/conftest.py) and by ``make demo``. Nothing here is
part of the agent; it stands in for a cluster the way controller-runtime's envtest does.
"""

from __future__ import annotations

import os
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent


def checkout_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a ``python -m testbed.…`` (or ``bench.…``) child process: the
    checkout first on ``PYTHONPATH``. The wheel holds gitsync only, so the test bed is
    importable from the repository root, not from site-packages, whatever the child's cwd."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(CHECKOUT), env.get("PYTHONPATH"))))
    return env
