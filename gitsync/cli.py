"""The ``gitsync`` command line: argument parsing, output and exit codes; stages do the work.

Exit codes follow ``kubectl diff``: 0 clean / no changes, 1 problems / changes, 2+ errors.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from gitsync import __version__
from gitsync.checkout import TreeReport, read_tree

EXIT_OK, EXIT_FOUND, EXIT_ERROR = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gitsync",
        description="GitOps for Ray Serve on Kubernetes: sync RayService manifests from Git.",
    )
    parser.add_argument("--version", action="version", version=f"gitsync {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    validate = commands.add_parser(
        "validate",
        help="check a repository's gitsync.yaml and manifests; exit 1 on any problem",
        description="Check gitsync.yaml and every environment's manifests. Prints every "
        "problem as file:line: message. Exit 0 when clean, 1 when not, 2 on errors.",
    )
    validate.add_argument("path", type=Path, help="a checkout: the folder holding gitsync.yaml")
    validate.add_argument("-o", "--output", choices=("text", "json"), default="text")
    return parser


def _report_json(report: TreeReport) -> dict[str, Any]:
    return {
        "ok": report.ok,
        "problems": [
            {"file": p.file, "line": p.line, "message": p.message} for p in report.problems
        ],
        "environments": [
            {
                "name": env.environment.name,
                "namespace": env.environment.namespace,
                "path": env.environment.path,
                "ok": env.ok,
                "files": env.files,
                "services": [
                    {"name": s.key.name, "wave": s.wave, "source": s.source, "line": s.line}
                    for s in env.services
                ],
            }
            for env in report.environments
        ],
    }


def validate(path: Path, output: str, out: TextIO, err: TextIO) -> int:
    if not path.is_dir():
        err.write(
            f"gitsync validate: {path} is not a folder (give the checkout holding gitsync.yaml)\n"
        )
        return EXIT_ERROR
    report = read_tree(path)
    if output == "json":
        json.dump(_report_json(report), out, indent=2)
        out.write("\n")
        return EXIT_OK if report.ok else EXIT_FOUND
    for problem in report.problems:
        out.write(f"{problem}\n")
    summary = ", ".join(
        f"{env.environment.name}: {len(env.services)} RayServices"
        if env.ok
        else f"{env.environment.name}: invalid"
        for env in report.environments
    )
    if report.ok:
        err.write(f"gitsync validate: ok ({summary})\n")
        return EXIT_OK
    files = len({p.file for p in report.problems})
    noun = "problem" if len(report.problems) == 1 else "problems"
    err.write(
        f"gitsync validate: {len(report.problems)} {noun} in {files} file{'s' * (files != 1)}"
        + (f" ({summary})" if summary else "")
        + "; nothing would be applied from an invalid environment\n"
    )
    return EXIT_FOUND


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "validate":
        return validate(args.path, args.output, sys.stdout, sys.stderr)
    parser.print_help(sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
