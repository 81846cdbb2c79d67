"""Classification cost: 1,000 changed services (semantic serveConfigV2 diff + KubeRay rules).

Target (docs/architecture.md, 'Targets'): < 1 s CPU. Services are the example ranker (two
applications, three worker groups' worth of cluster) with a mix of edits: a deployment's
num_replicas (serve-update), an image (cluster-swap), worker replicas (scale-ineffective), a
reformat. Measures CPU time of normalising both sides and classifying, median of repeated
runs.

    .venv/bin/python -m bench.classify [COUNT] [REPEAT]
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from gitsync.diff.classify import classify
from gitsync.diff.normalize import owned

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "plain-layout"
RANKER = EXAMPLES / "environments" / "production" / "ranker.yaml"


def edited(base: dict[str, Any], index: int) -> dict[str, Any]:
    obj = copy.deepcopy(base)
    obj["metadata"]["name"] = f"ranker-{index}"
    kind = index % 4
    if kind == 0:
        obj["spec"]["serveConfigV2"] = obj["spec"]["serveConfigV2"].replace(
            "num_replicas: 4", f"num_replicas: {5 + index % 7}"
        )
    elif kind == 1:
        head = obj["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
        head["image"] = f"rayproject/ray:2.50.{index % 9}-py311"
    elif kind == 2:
        obj["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] = 4 + index % 5
    else:
        obj["spec"]["serveConfigV2"] += "\n"
    return obj


def pairs_of(count: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    base = yaml.safe_load(RANKER.read_text())
    base["metadata"]["namespace"] = "bench"
    pairs = []
    for i in range(count):
        before = copy.deepcopy(base)
        before["metadata"]["name"] = f"ranker-{i}"
        pairs.append((before, edited(base, i)))
    return pairs


def run(count: int, repeat: int) -> tuple[list[float], Counter[str]]:
    pairs = pairs_of(count)
    timings = []
    actions: Counter[str] = Counter()
    for _ in range(repeat):
        actions.clear()
        began = time.process_time()
        for before, after in pairs:
            actions[classify(owned(before), owned(after)).action] += 1
        timings.append(time.process_time() - began)
    return timings, actions


def measure(count: int = 1000, repeat: int = 5) -> float:
    """Median CPU seconds to classify ``count`` changed services."""
    return statistics.median(run(count, repeat)[0])


def main(count: int = 1000, repeat: int = 5) -> None:
    timings, actions = run(count, repeat)
    print(
        f"classified {count} changed services: median {statistics.median(timings):.3f} s CPU "
        f"(min {min(timings):.3f}, max {max(timings):.3f}, {repeat} runs); target < 1 s"
    )
    print("actions:", ", ".join(f"{k}={v}" for k, v in sorted(actions.items())))


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
