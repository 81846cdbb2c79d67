"""What rendering an environment through a kustomize overlay costs.

Generates a base of N RayServices (the example's ranker, renamed) and a production overlay
that sets the image tag of all and patches their replicas, with one patch for every service
(the common case) or one patch per service (the worst: kustomize matches every patch against
every resource), then times reading the tree as a pass does: the plain-YAML environment (no
render, the baseline), the overlay rendered (the cache empty), and the overlay again at a new
revision whose rendered inputs did not change (the cache answers; a pass at the same revision
reuses the tree's report and renders nothing). The peer, in the same run: the same kustomize
build as a process of its own, without gitsync (what rendering costs whoever renders). The
tools come from GITSYNC_KUSTOMIZE or PATH, or the test bed's kubectl. ``make bench`` runs it
(:func:`run`, bench/suite.py's "Rendering" section).

    .venv/bin/python -m bench.render [SERVICES ...]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gitsync import renderer
from gitsync.checkout import read_tree
from testbed.binaries import ensure_binaries

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "plain-layout"


def build_repo(root: Path, services: int, per_service: bool = False) -> None:
    template = (EXAMPLES / "environments/staging/ranker.yaml").read_text()
    (root / "base").mkdir(parents=True)
    (root / "plain").mkdir()
    (root / "overlay").mkdir()
    names = [f"ranker-{i:04d}" for i in range(services)]
    patches = []
    for name in names:
        text = template.replace("name: ranker", f"name: {name}")
        (root / "base" / f"{name}.yaml").write_text(text)
        (root / "plain" / f"{name}.yaml").write_text(text)
    for target in (
        [f"kind: RayService, name: {n}" for n in names] if per_service else ["kind: RayService"]
    ):
        patches.append(
            f"  - target: {{{target}}}\n"
            "    patch: |\n      - op: replace\n"
            "        path: /spec/rayClusterConfig/workerGroupSpecs/0/replicas\n        value: 3\n"
        )
    (root / "base/kustomization.yaml").write_text(
        "resources:\n" + "".join(f"  - {n}.yaml\n" for n in names)
    )
    (root / "overlay/kustomization.yaml").write_text(
        "resources:\n  - ../base\nimages:\n  - name: rayproject/ray\n    newTag: 2.49.1-py311\n"
        "patches:\n" + "".join(patches)
    )
    (root / "gitsync.yaml").write_text(
        "environments:\n"
        "  - {name: plain, path: plain, namespace: ray-plain}\n"
        "  - {name: production, path: overlay, namespace: ray-production, renderTimeout: 600s}\n"
    )


def timed(root: Path, cache: Path) -> tuple[float, float]:
    """Seconds to read the tree, and the rendered environment's share of it."""
    start = time.perf_counter()
    report = read_tree(root, render_cache=cache)
    total = time.perf_counter() - start
    assert report.ok, report.problems[:3]
    plain = time.perf_counter()
    read_tree(root / "plain-only")
    return total, time.perf_counter() - plain


@contextmanager
def counted_renders() -> Iterator[Callable[[], int]]:
    """How many times a renderer ran since: a cache hit runs none."""
    calls = [0]
    real = renderer._render_in_copy

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return real(*args, **kwargs)

    renderer._render_in_copy = counting
    try:
        yield lambda: calls[0]
    finally:
        renderer._render_in_copy = real


def kustomize_alone(root: Path) -> float:
    """Seconds of the peer: the overlay built by the tool itself, a process of its own."""
    argv = renderer.find_tool("kustomize")
    assert argv is not None, "no kustomize: set GITSYNC_KUSTOMIZE"
    start = time.perf_counter()
    subprocess.run([*argv, str(root / "overlay")], check=True, capture_output=True, timeout=600)
    return time.perf_counter() - start


def measure(services: int, per_service: bool) -> dict[str, float]:
    """Seconds: ``plain`` (the plain-YAML environment read), ``tool`` (kustomize alone),
    ``cold`` (the overlay read, rendered), ``cached`` (read again at a new revision); and
    ``renders``: how many renders that second read ran (0: the cache answered)."""
    with tempfile.TemporaryDirectory(prefix="gitsync-bench-render-") as tmp:
        root, cache = Path(tmp) / "repo", Path(tmp) / "renders"
        build_repo(root, services, per_service)
        only = root / "plain-only"
        only.mkdir()
        shutil.copytree(root / "plain", only / "plain")
        (only / "gitsync.yaml").write_text(
            "environments:\n  - {name: plain, path: plain, namespace: ray-plain}\n"
        )
        tool = kustomize_alone(root)
        cold, plain = timed(root, cache)
        (root / "README.md").write_text("a new revision that changes nothing rendered\n")
        with counted_renders() as renders:
            warm, _ = timed(root, cache)
            ran = renders()
    return {
        "plain": plain,
        "tool": tool,
        "cold": cold - plain,
        "cached": warm - plain,
        "renders": float(ran),
    }


def run(sizes: list[int], kubectl: Path | None = None) -> list[dict[str, Any]]:
    """Each size with one patch for all services and one per service: ``measure``'s figures,
    with ``services`` and ``per_service``."""
    before = os.environ.get("GITSYNC_KUSTOMIZE")
    if kubectl is not None and before is None:
        os.environ["GITSYNC_KUSTOMIZE"] = str(kubectl)
    try:
        return [
            {"services": n, "per_service": per, **measure(n, per)}
            for n in sizes
            for per in (False, True)
        ]
    finally:
        if before is None:
            os.environ.pop("GITSYNC_KUSTOMIZE", None)


def markdown(rows: list[dict[str, Any]]) -> list[str]:
    """The rows as a table: ratios against the peer (kustomize alone) and the baseline (the
    plain-YAML environment of the same services)."""
    lines = [
        "| services | patches | plain YAML read s | kustomize alone s | overlay rendered s | "
        "rendered / kustomize alone | cache hit s | cache hit / plain | renders on a hit |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        what = "one per service" if row["per_service"] else "one for all"
        lines.append(
            f"| {row['services']} | {what} | {row['plain']:.2f} | {row['tool']:.2f} | "
            f"{row['cold']:.2f} | {row['cold'] / row['tool']:.2f}x | {row['cached']:.2f} | "
            f"{row['cached'] / row['plain']:.2f}x | {row['renders']:.0f} |"
        )
    return lines


def main(argv: list[str]) -> int:
    kubectl = None if "GITSYNC_KUSTOMIZE" in os.environ else ensure_binaries(quiet=True).kubectl
    rows = run([int(a) for a in argv] or [100, 1000], kubectl)
    print("\n".join(markdown(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
