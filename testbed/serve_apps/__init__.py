"""Ray Serve applications of the test bed's real-Ray mode, imported by the Ray heads that
testbed/rayhost.py starts (the checkout is on their ``PYTHONPATH``: no network, no
``working_dir``). Each answers with the name of the cluster it runs on (``GITSYNC_RAY_CLUSTER``,
set on the head and inherited by its workers), so a test can see which cluster answered.

A head started as a spare (testbed/rayhost.py) learns its cluster's name only when a pod
takes it: from a file in its temp dir (``GITSYNC_RAY_MARKERS``), which :func:`cluster` reads
when the variable is empty.

Every deployment asks for a tenth of a CPU: a head with a few logical CPUs runs them all.

- :mod:`.answer`: fast; its answer is ``user_config["answer"]`` (a serve update changes it).
- :mod:`.broken`: fails to import (Serve reports the app DEPLOY_FAILED).
- :mod:`.crashy`: ``/crash`` kills its replica and every restart fails (UNHEALTHY) until the
  marker file is removed.
- :mod:`.slow`: a replica takes ``args.seconds`` to start.
"""

from __future__ import annotations

import os
from pathlib import Path

CLUSTER_ENV = "GITSYNC_RAY_CLUSTER"
MARKERS_ENV = "GITSYNC_RAY_MARKERS"
ACTOR_OPTIONS = {"num_cpus": 0.1}


def cluster() -> str:
    named = os.environ.get(CLUSTER_ENV, "")
    if named or not os.environ.get(MARKERS_ENV):
        return named
    try:
        return (Path(os.environ[MARKERS_ENV]) / "cluster").read_text()
    except OSError:
        return ""
