"""docs/cli.md from the argument parser itself, so the CLI reference cannot drift from the CLI.

``python -m gitsync.cli_docs --write`` (``make docs``) rewrites docs/cli.md;
``python -m gitsync.cli_docs`` prints it. tests/docs/test_cli_reference.py fails when the
committed file differs from what this renders.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from gitsync.cli import build_parser

WIDTH = 100  # fixed, so the output does not depend on the terminal that runs the generator
OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
HEADER = """\
# CLI reference

Generated from gitsync's argument parser by `make docs` (`python -m gitsync.cli_docs --write`);
do not edit by hand. `tests/docs/test_cli_reference.py` fails when this file and the parser
disagree.

Exit codes follow `kubectl diff`: 0 clean or no changes, 1 problems or changes, 2 errors
(usage errors included). The per-command descriptions below say what 0 and 1 mean for each.
"""


MACHINE_OUTPUT = """\
## Machine output: -o json and -o yaml

Every command that prints state takes `-o json` and `-o yaml`: the same document in either
spelling, one shape per command, below. A changed field is always `{path, old, new}`: `path`
is the field's full path in the RayService, list items named by their name
(`spec.serveConfigV2.applications[rank].deployments[Ranker].num_replicas`,
`spec.rayClusterConfig.workerGroupSpecs[gpu].replicas`); `old` or `new` is `null` when the
field is absent on that side. `details` say the same for people.

- **plan**, **diff**: one environment (`--env` once) is a plan; otherwise
  `{"environments": [plan, …]}` in rollout order. A plan is `{environment, namespace, from,
  to, waves: [{wave, prune?: true, orphans?: true, changes: [{namespace, name, action,
  summary, details: [str], fields: [{path, old, new}], warnings: [str], capacity}]}],
  warnings, capacityCheck}`.
  The last group holds the services Git no longer declares: `prune: true` (deleted) or
  `orphans: true` (left running, the environment does not prune). `capacity` is `null`, or
  for a new cluster planned against the cluster `{fit: fits|does-not-fit|unknown, pods,
  requests, shortfalls: [{where, resource, needed, available, missing, note?}], unknown:
  [str], summary}` (docs/capacity.md).
- **sync**: `{revision, dryRun, ok, environments: [{environment, revision, outcome, message,
  failed, applied: [ns/name], pruned: [ns/name], skipped: [ns/name]}]}`.
- **status**: `{settled, environments: [{name, settled, rollout: null | {phase, revision,
  wave, started, finished, message, lastHealthyRevision}, driftCheck: null | {checked,
  revision, drifted}, hold: null | {suspended: null | {by, at, reason}, pinned: null |
  {revision, by, at, reason}, windowOpenUntil: null | {until, by, reason}}, services:
  [{namespace, name, health, message, revision, reconcile: enabled|disabled, drift: null |
  {kind: drifted|fighting, message}}]}]}`. An environment suspended or pinned is not settled.
- **drift**: `{environments: [{environment, revision, note, error, drifted: [{service, kind,
  source, fields: [{path, old, new, source}], managers, heal: null | {action, details, fields:
  [{path, old, new}]}, fighting, disabled, message}], disabled, held, costs, healed}]}`; in
  `fields`, `old` is Git's value and `new` the live one, in `heal.fields` the reverse.
  `source` is where Git writes the service (`file:line`; a rendered one's origin file, e.g.
  the kustomize base) and, for a field, where Git sets it: the overlay's patch or `images:`
  entry that set it, else its own line (or its nearest written parent's) in the service's
  file. `held` is null, or why nothing was healed: the environment is
  suspended, or pinned to another revision than the one compared against.
- **previews**: `{namespace, previews: [{pr, service, revision, health, age}]}`.
- **validate**: `{ok, problems: [{file, line, message}], environments: [{name, namespace,
  path, ok, files, services: [{name, wave, source, line}]}]}`.
- **notes**: `{revision, statuses: [{context, state, description, target_url, at, agent}]}`.
"""


def _fixed_width(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=WIDTH)


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommand parsers in the order they were added. argparse has no public accessor."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def render() -> str:
    parser = build_parser()
    _fixed_width(parser)
    commands = subcommands(parser)
    parts = [HEADER, "## gitsync\n", _help_block("", parser)]
    parts.append("Commands: " + ", ".join(f"[`{name}`](#gitsync-{name})" for name in commands))
    parts.append("")
    for name, sub in commands.items():
        _fixed_width(sub)
        parts.append(f"## gitsync {name}\n")
        parts.append(_help_block(name, sub))
    parts.append(MACHINE_OUTPUT)
    return "\n".join(parts)


def _help_block(command: str, parser: argparse.ArgumentParser) -> str:
    """The help text, marked for tests/docs as the help of ``command`` ("" for the top)."""
    marker = f'<!-- doctest: cli-help command="{command}" -->'
    return f"{marker}\n```text\n{parser.format_help()}```\n"


def help_text(command: str) -> str:
    """What ``gitsync COMMAND --help`` prints at the reference's fixed width."""
    parser = build_parser()
    _fixed_width(parser)
    if not command:
        return parser.format_help()
    sub = subcommands(parser)[command]
    _fixed_width(sub)
    return sub.format_help()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    text = render()
    if args == ["--write"]:
        OUTPUT.write_text(text, encoding="utf-8")
        print(f"wrote {OUTPUT}", file=sys.stderr)
        return 0
    if args:
        print("usage: python -m gitsync.cli_docs [--write]", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
