"""The ``gitsync`` command line: argument parsing and exit codes only; stages do the work."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gitsync import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gitsync",
        description="GitOps for Ray Serve on Kubernetes: sync RayService manifests from Git.",
    )
    parser.add_argument("--version", action="version", version=f"gitsync {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
