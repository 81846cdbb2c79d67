"""What rendering an environment through a kustomize overlay costs.

Generates a base of N RayServices (the example's ranker, renamed) and a production overlay
that sets the image tag of all and patches their replicas, with one patch for every service
(the common case) or one patch per service (the worst: kustomize matches every patch against
every resource), then times reading the tree as a pass does: the plain-YAML environment (no
render, the baseline), the overlay rendered (the cache empty), and the overlay again at a new
revision whose rendered inputs did not change (the cache answers; a pass at the same revision
reuses the tree's report and renders nothing). The tools come from GITSYNC_KUSTOMIZE or PATH,
or the test bed's kubectl.

    .venv/bin/python -m bench.render [SERVICES ...]
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from gitsync.checkout import read_tree
from testbed.binaries import ensure_binaries

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "repo-layout"


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


def measure(services: int, per_service: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="gitsync-bench-render-") as tmp:
        root, cache = Path(tmp) / "repo", Path(tmp) / "renders"
        build_repo(root, services, per_service)
        only = root / "plain-only"
        only.mkdir()
        shutil.copytree(root / "plain", only / "plain")
        (only / "gitsync.yaml").write_text(
            "environments:\n  - {name: plain, path: plain, namespace: ray-plain}\n"
        )
        cold, plain = timed(root, cache)
        (root / "README.md").write_text("a new revision that changes nothing rendered\n")
        warm, _ = timed(root, cache)
    return {"plain": plain, "cold": cold - plain, "cached": warm - plain}


def main(argv: list[str]) -> int:
    if "GITSYNC_KUSTOMIZE" not in os.environ:
        os.environ["GITSYNC_KUSTOMIZE"] = str(ensure_binaries(quiet=True).kubectl)
    print("| services | patches | plain YAML read | overlay rendered (cache empty) | cache hit |")
    print("|---:|---|---:|---:|---:|")
    for services in [int(a) for a in argv] or [100, 1000]:
        for per_service in (False, True):
            got = measure(services, per_service)
            cells = " | ".join(f"{got[k]:.2f} s" for k in ("plain", "cold", "cached"))
            what = "one per service" if per_service else "one for all"
            print(f"| {services} | {what} | {cells} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
