"""Per-poll cost when nothing changed, over file://, git daemon and smart HTTP.

Not a test: a measurement. Run from the repository root:

    .venv/bin/python -m tests.source.bench_poll [polls]

Prints, per transport, the mean and p95 wall time of ``GitSource.head()`` plus the (no-op)
``checkout()`` of the unchanged head, and the git processes each such poll started.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from gitsync.source import GitSource, RepoSource
from testbed.gitserver import GitDaemon, SmartHttpServer

from .repos import Upstream


def main(polls: int) -> None:
    with tempfile.TemporaryDirectory(prefix="gitsync-bench-") as tmp:
        root = Path(tmp)
        os.environ.update(HOME=str(root), GIT_CONFIG_NOSYSTEM="1")
        (root / "served").mkdir()
        upstream = Upstream(root / "served", "bench", root / "work")
        for n in range(20):
            upstream.commit({f"env/svc-{n}.yaml": f"replicas: {n}\n"}, f"commit {n}")
        with (
            GitDaemon(root / "served", root / "logs") as daemon,
            SmartHttpServer(root / "served", root / "logs") as http,
        ):
            assert isinstance(daemon, GitDaemon)
            assert isinstance(http, SmartHttpServer)
            urls = {
                "file": upstream.bare.as_uri(),
                "git": daemon.url(upstream.name),
                "http": http.url(upstream.name),
            }
            print(f"{'transport':<10}{'polls':>6}{'mean ms':>10}{'p95 ms':>9}  git processes/poll")
            for transport, url in urls.items():
                source = GitSource(RepoSource(url, "main", root / f"cache-{transport}"))
                source.checkout(source.head())  # warm: the cache holds the head's tree
                seconds, processes = [], []
                for _ in range(polls):
                    before = len(source.runner.calls)
                    began = time.perf_counter()
                    source.checkout(source.head())
                    seconds.append(time.perf_counter() - began)
                    processes.append([c.subcommand for c in source.runner.calls[before:]])
                kinds = sorted({" ".join(p) for p in processes})
                p95 = statistics.quantiles(seconds, n=20)[-1]
                print(
                    f"{transport:<10}{polls:>6}{statistics.mean(seconds) * 1000:>10.1f}"
                    f"{p95 * 1000:>9.1f}  {kinds}"
                )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100)
