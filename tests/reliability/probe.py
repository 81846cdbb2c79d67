"""One hostile case measured in a fresh process, so that its peak RSS is gitsync's alone.

:func:`build` (run by the test, not measured) writes the case into a work tree and commits it
to a bare repository. The probe then checks the commit out through gitsync's Git source
(``file://``: the agent's code path) and reads the tree as a pass does, then reads the work
tree as ``gitsync validate PATH`` does, and prints one JSON line: the problems, the services
loaded, the wall time and the growth of peak RSS over the RSS it started from.

Usage: ``python tests/reliability/probe.py WORKDIR``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def git(*args: str, cwd: Path) -> None:
    subprocess.run(
        ["git", "-c", "user.name=T", "-c", "user.email=t@example.com", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        timeout=300,
    )


def build(name: str, workdir: Path) -> None:
    """The case as a commit on ``main`` of ``workdir/repo.git``, its tree in ``workdir/work``."""
    from tests.reliability.corpus import BY_NAME, base_tree  # noqa: PLC0415 - parent only

    work, bare = workdir / "work", workdir / "repo.git"
    base_tree(work)
    BY_NAME[name].write(work)
    git("init", "-q", "--bare", "-b", "main", str(bare), cwd=workdir)
    git("init", "-q", "-b", "main", cwd=work)
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", name, cwd=work)
    git("push", "-q", bare.as_uri(), "main", cwd=work)


def _status_kib(field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process. Not ``ru_maxrss``: Linux carries
    that across exec from the parent, so a child of a 70 MiB pytest starts at 70 MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


def measure(workdir: Path) -> dict[str, object]:
    from gitsync.checkout import TreeReport, read_tree  # noqa: PLC0415 - before measuring
    from gitsync.source import GitSource, RepoSource  # noqa: PLC0415

    def summary(report: TreeReport) -> dict[str, object]:
        return {
            "problems": [str(p) for p in report.problems],
            "services": sorted(str(s.key) for e in report.environments for s in e.services),
        }

    before, began = _status_kib("VmRSS"), time.monotonic()
    bare = workdir / "repo.git"
    source = GitSource(RepoSource(bare.as_uri(), "main", workdir / "cache"))
    via_git = summary(read_tree(source.checkout(source.head())))
    local = summary(read_tree(workdir / "work"))
    peak = _status_kib("VmHWM")
    return {
        "git": via_git,
        "local": local,
        "seconds": round(time.monotonic() - began, 3),
        "rss_growth_mib": round(max(0, peak - before) / 1024, 1),
    }


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    print(json.dumps(measure(Path(sys.argv[1]))))
