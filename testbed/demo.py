"""``make demo``: the whole gitsync loop on one machine, as a story told with gitsync's output.

Starts, all on loopback and stopped by pid at the end (:mod:`testbed.demo_bed`): etcd +
kube-apiserver with KubeRay's CRDs (testbed/build.sh built them), the KubeRay simulator, a
Gitea holding a repository seeded from ``examples/plain-layout/`` with a push and pull-request
webhook, and ``gitsync run`` against them as its own process. Then :mod:`testbed.story` walks
through what a Ray platform team sees — an initial deployment, an in-place Serve update, a
gated cluster swap, a broken commit that production never receives, a pull-request preview,
a hand edit put back by drift self-heal — checking each outcome, and prints where to look.
Everything stays up until Ctrl-C or SIGTERM (``--exit-after-story``: stop at once).

``--ray real`` (``make demo RAY=real``) tells the same story on real Ray Serve: the real KubeRay
operator instead of the simulator, a real Ray head for every head pod it creates, and Serve's
own answers through each ``<service>-serve-svc`` (:mod:`testbed.demo_ray`).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from testbed import story
from testbed.demo_bed import PACES, RAY_MODES, REPO_ROOT, DemoError, Out, running_bed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / ".testbed" / "demo")
    parser.add_argument(
        "--pace", choices=sorted(PACES), default="normal", help="the simulator's speed"
    )
    parser.add_argument(
        "--ray",
        choices=RAY_MODES,
        default="simulator",
        help="simulator: the KubeRay simulator (default); real: the KubeRay operator and real "
        "Ray heads (7 GiB of memory at its peak, docs/quickstart.md)",
    )
    parser.add_argument(
        "--exit-after-story", action="store_true", help="stop everything when the story ends"
    )
    args = parser.parse_args(argv)

    def stop(signum: int, frame: FrameType | None) -> None:
        # Once: a second Ctrl-C must not cut the stopping short and leave processes behind.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print("\ngitsync demo: stopping everything", file=sys.stderr, flush=True)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    out = Out()
    try:
        with running_bed(args.workdir, PACES[args.pace], out, args.ray) as bed:
            story.tell(bed)
            story.where_to_look(bed)
            if not args.exit_after_story:
                out.say("\nEverything keeps running. Ctrl-C stops it all.")
                while True:
                    time.sleep(3600)
    except KeyboardInterrupt:
        pass
    except DemoError as exc:
        print(f"\ngitsync demo: the story went wrong: {exc}", file=sys.stderr)
        print(f"(the agent's log: {args.workdir / 'gitsync.log'})", file=sys.stderr)
        return 1
    print("gitsync demo: stopped everything", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
