"""The ``gitsync`` command line: argument parsing, output and exit codes; stages do the work.

Exit codes follow ``kubectl diff``: 0 clean / no changes, 1 problems / changes, 2+ errors.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import hashlib
import json
import logging
import os
import re
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import yaml

from gitsync import __version__, kuberay
from gitsync.checkout import TreeReport, read_tree
from gitsync.completion import SHELLS
from gitsync.completion import script as completion_script
from gitsync.config import AgentConfig, advertised_url, load_agent_config
from gitsync.diff.classify import Options
from gitsync.errors import ConfigError, GitsyncError, SourceError
from gitsync.health import assess
from gitsync.kube.client import api_client
from gitsync.kube.events import EventRecorder
from gitsync.kube.failures import explained
from gitsync.kube.rayservices import RayServicesClient
from gitsync.kube.state import StateStore
from gitsync.logs import configure as configure_logging
from gitsync.manifests.durations import parse_duration
from gitsync.plan import Plan, plan_diff, plan_json, plan_markdown, plan_table
from gitsync.planning import live_plans, offline_plans
from gitsync.source import GitSource, RepoSource
from gitsync.source.auth import read_token
from gitsync.source.config import TokenAuth
from gitsync.sync import PassResult, sync_once

if TYPE_CHECKING:  # imported when `gitsync run` starts: other commands start faster
    from gitsync.agent import Agent
    from gitsync.metrics import Metrics
    from gitsync.server import AgentServer

EXIT_OK, EXIT_FOUND, EXIT_ERROR = 0, 1, 2
OUTPUTS = ("text", "json", "yaml")  # every command that prints state


def write_document(document: object, output: str, out: TextIO) -> None:
    """``-o json`` or ``-o yaml``: the same document (docs/cli.md), as the reader asked."""
    if output == "yaml":
        yaml.safe_dump(document, out, sort_keys=False, allow_unicode=True, width=100)
    else:
        json.dump(document, out, indent=2, ensure_ascii=False, default=str)
        out.write("\n")


STATUS_FLUSH_SECONDS = 60.0  # at exit, how long `sync --once` waits for queued statuses
_SHA = re.compile(r"^[0-9a-f]{40}$")
_SCP = re.compile(r"^[\w.-]+@[\w.-]+:")  # git@host:org/repo.git


# The libraries whose versions decide what gitsync does on the wire, for --version.
_LIBRARIES = (
    "kubernetes", "GitPython", "PyYAML", "deepdiff", "APScheduler", "urllib3", "uvicorn",
    "starlette",
)  # fmt: skip
# Where the image keeps the lock it installed from (the Dockerfile copies it there).
IMAGE_LOCK = Path(sys.prefix) / "share" / "gitsync" / "requirements.lock"


def lock_text(lock: Path) -> str:
    """What --version says of the lock the dependencies were installed from: its sha256 and
    how many packages it pins, or that there is none (an install that is not the image)."""
    try:
        data = lock.read_bytes()
    except OSError:
        return "requirements.lock: none (not installed from the lock)"
    pins = sum(1 for line in data.decode().splitlines() if "==" in line)
    return f"requirements.lock: sha256 {hashlib.sha256(data).hexdigest()[:16]}, {pins} packages"


def version_text(lock: Path = IMAGE_LOCK) -> str:
    """gitsync's version, the KubeRay version whose rules it predicts by default, the client
    libraries it runs with (what a bug report needs) and the lock they came from."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    libraries = ", ".join(f"{name} {installed(name)}" for name in _LIBRARIES)
    return (
        f"gitsync {__version__}\n"
        f"KubeRay semantics: {kuberay.KUBERAY_VERSION} by default "
        f"({', '.join(sorted(kuberay.SEMANTICS))} with --kuberay-version)\n"
        f"Python {sys.version.split()[0]}; {libraries}\n"
        f"{lock_text(lock)}"
    )


class _Version(argparse.Action):
    """argparse's own version action reflows its text into one paragraph."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        sys.stdout.write(version_text() + "\n")
        parser.exit()


def duration(text: str) -> float:
    """An argparse type: seconds from ``30s``, ``1h30m``, ``250ms`` or a bare number."""
    seconds = parse_duration(text)
    if seconds is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 30s, 1m30s or 1h")
    return seconds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gitsync",
        description="GitOps for Ray Serve on Kubernetes: sync RayService manifests from Git.",
    )
    parser.add_argument(
        "--version", action=_Version, nargs=0, help="gitsync's, KubeRay's and libraries' versions"
    )
    parser.add_argument(
        "--debug", action="store_true", help="print the traceback of an unexpected error"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _validate_command(commands)
    _plan_commands(commands)
    sync, status = _sync_commands(commands)
    _agent_commands(commands)
    _hold_commands(commands)
    _local_commands(commands)
    for command in commands.choices.values():
        command.add_argument(
            "--debug",
            action="store_true",
            default=argparse.SUPPRESS,  # or it would undo a `gitsync --debug COMMAND`
            help="print the traceback of an unexpected error",
        )
    _sync_options(sync, status)  # after --debug: docs/cli.md lists them in this order
    return parser


def _validate_command(commands: Any) -> None:
    validate = commands.add_parser(
        "validate",
        help="check a repository's gitsync.yaml and manifests; exit 1 on any problem",
        description="Check gitsync.yaml and every environment's manifests, each RayService "
        "also against the RayService CRD's schema (what the API server would refuse) and "
        "KubeRay's own rules. Prints every problem as file:line: message. Exit 0 when clean, "
        "1 when not, 2 on errors.",
    )
    validate.add_argument(
        "path",
        nargs="?",
        help="a checkout (the folder holding gitsync.yaml) or a repository URL",
    )
    validate.add_argument(
        "--rev", help="with a URL: the branch to read, or a commit SHA on --branch (default: main)"
    )
    validate.add_argument("--branch", default="main", help="with a URL and a SHA --rev: its branch")
    validate.add_argument(
        "--config", type=Path, help="also check the agent's config file (config/gitsync.yaml)"
    )
    validate.add_argument("-o", "--output", choices=OUTPUTS, default="text")


def _plan_commands(commands: Any) -> None:
    """plan and diff."""
    plan = commands.add_parser(
        "plan",
        help="what applying an environment would make KubeRay do, wave by wave",
        description="With --from: what merging --to would do compared with --from, from Git "
        "alone (REPO is a Git repository). Without: what applying the checkout PATH would do "
        "to the live cluster. Exit 0 no changes, 1 changes, 2 errors (as kubectl diff).",
    )
    plan.add_argument("path", nargs="?", default=".", help="a Git repository or a checkout (.)")
    plan.add_argument("--from", dest="from_rev", help="offline: the revision deployed now")
    plan.add_argument(
        "--to", dest="to_rev", help="offline, with --from: the revision to deploy (HEAD)"
    )
    plan.add_argument(
        "--capacity",
        action="store_true",
        help="with --from: also check the new pods against the cluster's quotas and nodes "
        "(reads them; as the pull request comment does)",
    )
    plan.add_argument(
        "-o",
        "--output",
        choices=("table", "json", "yaml", "markdown"),
        default="table",
        help="json or yaml: the plan as data (docs/cli.md); markdown (with --from): the plan "
        "comment gitsync writes on a pull request",
    )
    diff = commands.add_parser(
        "diff",
        help="a readable semantic diff of a checkout against the live cluster",
        description="What applying the checkout PATH would change in the live cluster: apps, "
        "deployments and fields, not a wall of YAML. Exit 0 no changes, 1 changes, 2 errors.",
    )
    diff.add_argument("path", nargs="?", default=".", help="a checkout holding gitsync.yaml (.)")
    diff.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    diff.add_argument(
        "-o", "--output", choices=OUTPUTS, default="text", help="json or yaml: as plan's"
    )
    for command in (plan, diff):
        _plan_options(command)


def _plan_options(command: argparse.ArgumentParser) -> None:
    """What plan and diff share."""
    command.add_argument(
        "--env",
        action="append",
        help="an environment in gitsync.yaml (repeatable; default: all, in 'after' order)",
    )
    command.add_argument("--kubeconfig", type=Path, help="default: $KUBECONFIG, ~/.kube/config")
    command.add_argument("--context", help="the kubeconfig context to use")
    command.add_argument(
        "--config",
        type=Path,
        help="the agent config: its kuberay.version and kuberay.zeroDowntime set the rules",
    )
    command.add_argument(
        "--kuberay-version", help="the operator's version, for its rules (default v1.5)"
    )
    command.add_argument(
        "--no-zero-downtime",
        action="store_true",
        help="the operator runs with ENABLE_ZERO_DOWNTIME=false",
    )
    command.add_argument(
        "--show-env-values",
        action="store_true",
        help="print env / runtime_env.env_vars (and Secret data) values; default: •••",
    )


def _sync_commands(commands: Any) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """sync and status, with their first options (:func:`_sync_options` adds the others)."""
    sync = commands.add_parser(
        "sync",
        help="one full pass: poll Git, plan, roll out every environment in order",
        description="Polls the repository in the agent config, then for each environment (in "
        "'after:' order) applies the plan wave by wave, waiting for health between waves. "
        "On a terminal, a live line shows the wave being applied or waited on and the progress "
        "lines are coloured; plain lines when stderr is not a terminal, NO_COLOR is set or "
        "TERM is dumb. Exit 0 when every environment succeeded, 1 when one failed, 2 on errors.",
    )
    sync.add_argument("--once", action="store_true", required=True, help="one pass, then exit")
    sync.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plans (as gitsync plan; -o json|yaml: plan's shape), apply nothing",
    )
    sync.add_argument("-o", "--output", choices=OUTPUTS, default="text")
    status = commands.add_parser(
        "status",
        help="per environment: the rollout recorded in the cluster and each object's health",
        description="Reads the cluster only (no Git, no forge): each environment's last rollout "
        "(its state ConfigMap in the state namespace), each RayService and each object of "
        "the other kinds it manages (allowedKinds) in the namespace that rollout recorded, "
        "with its health, and the last drift check. Exit 0 when every environment's last rollout "
        "succeeded and each of its services is Healthy and not drifted, 1 when something is "
        "progressing, degraded, failed or drifted, 2 on errors.",
    )
    sync.add_argument(
        "--no-status", action="store_true", help="post no commit statuses (and read none)"
    )
    sync.add_argument(
        "--ignore-windows",
        action="store_true",
        help="roll out even outside the environments' change windows (an emergency; "
        "docs/operations.md)",
    )
    return sync, status


def _sync_options(sync: argparse.ArgumentParser, status: argparse.ArgumentParser) -> None:
    sync.add_argument("--config", type=Path, required=True, help="the agent config file")
    status.add_argument(
        "--config", type=Path, help="the agent config file, for rollout.stateNamespace"
    )
    status.add_argument(
        "--state-namespace",
        help="where the state ConfigMaps are (default: the config's, else gitsync-system)",
    )
    status.add_argument(
        "-n",
        "--namespace",
        action="append",
        help="for an environment whose rollout record names no namespace (recorded by an "
        "older gitsync): look for its RayServices here (repeatable; default: every namespace, "
        "which needs RBAC to list RayServices cluster-wide)",
    )
    status.add_argument("-o", "--output", choices=OUTPUTS, default="text")
    for command in (sync, status):
        command.add_argument("--kubeconfig", type=Path, help="default: $KUBECONFIG, ~/.kube/config")
        command.add_argument("--context", help="the kubeconfig context to use")
    sync.add_argument("--env", action="append", help="only this environment (repeatable)")


def _agent_commands(commands: Any) -> None:
    """drift, previews, run and notes."""
    _check_commands(commands)
    run = commands.add_parser(
        "run",
        help="the agent: poll, webhooks, roll out, report; /metrics, /healthz, /readyz",
        description="Runs until SIGTERM or Ctrl-C: polls the branch every intervals.poll (a "
        "push webhook polls at once), rolls out like `sync --once` when the leader, serves "
        "webhooks and metrics on the listen address. Exit 0 after a clean shutdown.",
    )
    run.add_argument("--config", type=Path, required=True, help="the agent config file")
    run.add_argument("--kubeconfig", type=Path, help="default: $KUBECONFIG, in-cluster, ~/.kube")
    run.add_argument("--context", help="the kubeconfig context to use")
    run.add_argument("--listen", help="host:port, overrides the config's listen address")
    run.add_argument("--log-format", choices=("text", "json"), default="text")
    run.add_argument("--log-level", choices=("debug", "info", "warning"), default="info")
    run.add_argument(
        "--shutdown-timeout",
        type=duration,
        help="seconds to stop in after SIGTERM or Ctrl-C (default: the config's "
        "shutdownGracePeriod, 10s; 1m, 1m30s …); a second signal stops at once",
    )
    notes = commands.add_parser(
        "notes",
        help="the commit statuses recorded as git notes (refs/notes/gitsync) on a commit",
        description="Reads refs/notes/gitsync from the repository in the agent config (or "
        "--repo) and prints the status history of one commit, oldest first. Exit 0 when the "
        "commit has statuses, 1 when it has none, 2 on errors.",
    )
    notes.add_argument("rev", nargs="?", help="a full commit SHA (default: the branch head)")
    where = notes.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", type=Path, help="the agent config file")
    where.add_argument("--repo", help="a repository URL (no auth)")
    notes.add_argument("--branch", default="main", help="with --repo: the branch (main)")
    notes.add_argument("-o", "--output", choices=OUTPUTS, default="text")


def _check_commands(commands: Any) -> None:
    """drift and previews."""
    drift = commands.add_parser(
        "drift",
        help="compare live RayServices with Git at the revision last applied",
        description="One drift check: for each environment, the live RayServices against Git "
        "at the revision last rolled out (not a newer commit), server-side dry run and Ray-aware "
        "diff. Names the field manager that changed a field and what healing would make KubeRay "
        "do. With --heal, environments with selfHeal: true are corrected by a gated rollout. "
        "On a terminal, a live line shows the latest step and the report is coloured; plain "
        "when not a terminal, NO_COLOR is set or TERM is dumb. "
        "Exit 0 no drift, 1 drift, 2 errors.",
    )
    drift.add_argument("--config", type=Path, required=True, help="the agent config file")
    drift.add_argument("--kubeconfig", type=Path, help="default: $KUBECONFIG, ~/.kube/config")
    drift.add_argument("--context", help="the kubeconfig context to use")
    drift.add_argument("--env", action="append", help="only this environment (repeatable)")
    drift.add_argument("--heal", action="store_true", help="correct selfHeal environments")
    drift.add_argument("-o", "--output", choices=OUTPUTS, default="text")
    previews = commands.add_parser(
        "previews",
        help="pull-request previews: list them (or --reconcile once)",
        description="Lists the active previews (PR, service, revision, health, age). With "
        "--reconcile: one preview pass first — plan comments, previews created, updated and "
        "deleted — as the agent's previews job does. On a terminal the list is a table sized "
        "to it, health coloured, and the pass shows a live line; plain columns when not a "
        "terminal, NO_COLOR is set or TERM is dumb.",
    )
    previews.add_argument("--config", type=Path, required=True, help="the agent config file")
    previews.add_argument("--kubeconfig", type=Path, help="default: $KUBECONFIG, ~/.kube/config")
    previews.add_argument("--context", help="the kubeconfig context to use")
    previews.add_argument("--reconcile", action="store_true", help="run one preview pass first")
    previews.add_argument("-o", "--output", choices=OUTPUTS, default="text")


def _hold_commands(commands: Any) -> None:
    """suspend, resume, pin and unpin: what the person on call holds (docs/operations.md)."""
    verbs = {
        "suspend": (
            "stop rolling out an environment: no applies, no self-heal; drift still reported",
            "Suspends ENV: from the agent's next poll, no commit is rolled out to it and "
            "self-heal leaves it alone; drift checks still report. Environments after it "
            "(after:) wait too. Kept in its state ConfigMap, so every replica and restart sees "
            "it. A rollout already in flight finishes. Exit 0 when recorded, 2 on errors.",
        ),
        "resume": (
            "undo suspend: the agent rolls out the branch head (or the pin) at its next poll",
            "Resumes ENV: the agent's next poll rolls out what the environment should run "
            "(the branch head, or its pin). Exit 0 when recorded, 2 on errors.",
        ),
        "pin": (
            "roll an environment to a commit of the branch and hold it there",
            "Pins ENV to REVISION, a commit of the watched branch (checked against the "
            "repository in --config): the agent's next poll rolls it out there, health-gated, "
            "and holds it there whatever the branch head becomes; self-heal heals toward it. "
            "The head's commit status says it is pinned. Exit 0 when recorded, 2 on errors "
            "(REVISION not on the branch, ENV not in gitsync.yaml there).",
        ),
        "unpin": (
            "undo pin: the agent rolls out the branch head at its next poll",
            "Unpins ENV: the agent's next poll rolls out the branch head. Exit 0 when recorded, "
            "2 on errors.",
        ),
    }
    verbs["open-window"] = (
        "roll out outside an environment's change windows for a while (an emergency)",
        "Sets ENV's change windows (windows: in gitsync.yaml) aside for --for (default 1h): "
        "the agent's next poll rolls out what waits, as if the windows were open. After that "
        "time the windows apply again. Exit 0 when recorded, 2 on errors.",
    )
    for verb, (short, description) in verbs.items():
        command = commands.add_parser(verb, help=short, description=description)
        command.add_argument("env", metavar="ENV", help="an environment in gitsync.yaml")
        if verb == "pin":
            command.add_argument("revision", metavar="REVISION", help="a commit SHA (7+ digits)")
        command.add_argument(
            "--config",
            type=Path,
            required=verb == "pin",
            help="the agent config file: its repository (pin) and rollout.stateNamespace",
        )
        command.add_argument(
            "--state-namespace",
            help="where the state ConfigMaps are (default: the config's, else gitsync-system)",
        )
        if verb in ("suspend", "pin", "open-window"):
            command.add_argument("--reason", default="", help="why, shown wherever it is shown")
        if verb == "open-window":
            command.add_argument(
                "--for", dest="span", type=duration, default=3600.0, help="how long (1h)"
            )
        command.add_argument("--kubeconfig", type=Path, help="default: $KUBECONFIG, ~/.kube/config")
        command.add_argument("--context", help="the kubeconfig context to use")


def _local_commands(commands: Any) -> None:
    """demo and completion."""
    demo = commands.add_parser(
        "demo",
        help="the whole loop on this machine, as `make demo` runs it (a source checkout)",
        description="Starts a local kube-apiserver + etcd, the KubeRay simulator, a Gitea "
        "seeded from examples/plain-layout/ and `gitsync run`, then tells a six-chapter story "
        "(deploy, Serve update, cluster swap, broken commit, preview, drift self-heal) and "
        "keeps everything running until Ctrl-C. Needs the repository's testbed/ (its first "
        "run builds the test bed from Go modules). With --ray real, the real KubeRay operator "
        "and real Ray heads replace the simulator (docs/quickstart.md says what that needs).",
    )
    demo.add_argument(
        "--pace", choices=("normal", "fast"), default="normal", help="the simulator's speed"
    )
    demo.add_argument(
        "--ray",
        choices=("simulator", "real"),
        default="simulator",
        help="simulator: the KubeRay simulator; real: the KubeRay operator and real Ray heads",
    )
    demo.add_argument("--workdir", type=Path, help="default: .testbed/demo in the checkout")
    demo.add_argument(
        "--exit-after-story", action="store_true", help="stop everything when the story ends"
    )
    completion = commands.add_parser(
        "completion",
        help="print a shell completion script (bash, zsh or fish)",
        description="Prints a completion script generated from gitsync's own argument parser: "
        "commands, options and their values. bash: `source <(gitsync completion bash)` in "
        '~/.bashrc; zsh: `gitsync completion zsh > "${fpath[1]}/_gitsync"`; fish: '
        "`gitsync completion fish > ~/.config/fish/completions/gitsync.fish`.",
    )
    completion.add_argument("shell", choices=SHELLS)


def _agent_config(path: Path) -> AgentConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    config, problems = load_agent_config(text, str(path))
    if config is None:
        raise ConfigError("the agent config is invalid:\n" + "\n".join(f"  {p}" for p in problems))
    return config


def run_sync(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from gitsync.console import sync_display
    from gitsync.report.factory import build_reporter

    reporter = None
    plans: list[Plan] = []
    try:
        config = _agent_config(args.config)
        if not (args.no_status or args.dry_run):
            reporter = build_reporter(config)
        with (
            api_client(args.kubeconfig, args.context) as api,
            EventRecorder(api) as record,
            sync_display(err, record, plans) as observer,  # live on a terminal, else lines
        ):
            store = StateStore(api, config.rollout.state_namespace)  # created at first write
            result = sync_once(
                config,
                RayServicesClient(api),
                store,
                environments=args.env,
                dry_run=args.dry_run,
                observer=observer,
                reporter=reporter,
                ignore_windows=args.ignore_windows,
            )
    except GitsyncError as exc:
        err.write(f"gitsync sync: {exc}\n")
        return EXIT_ERROR
    finally:
        if reporter is not None:
            reporter.close(timeout=STATUS_FLUSH_SECONDS)
    if args.dry_run:
        # What would be done, not results: the plans, as `gitsync plan` prints them.
        if args.output != "text":
            document = {
                "revision": result.revision,
                "dryRun": True,
                "environments": [plan_json(p) for p in plans],
            }
            write_document(document, args.output, out)
        else:
            out.write("\n".join(plan_table(p) for p in plans))
        return EXIT_OK
    if args.output != "text":
        write_document(_sync_json(result, dry_run=args.dry_run), args.output, out)
    else:
        for r in result.results:
            out.write(f"{r.environment}: {r.outcome} at {r.revision[:12]}: {r.message}\n")
    return EXIT_OK if result.ok else EXIT_FOUND


def _sync_json(result: PassResult, *, dry_run: bool) -> dict[str, Any]:
    """``gitsync sync --once -o json`` (docs/cli.md)."""
    return {
        "revision": result.revision,
        "dryRun": dry_run,
        "ok": result.ok,
        "environments": [
            {
                "environment": r.environment,
                "revision": r.revision,
                "outcome": str(r.outcome),
                "message": r.message,
                "failed": str(r.failed) if r.failed else None,
                "applied": [str(k) for k in r.applied],
                "pruned": [str(k) for k in r.pruned],
                "skipped": [str(k) for k in r.skipped],
            }
            for r in result.results
        ],
    }


def run_status(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from gitsync.config import RolloutSettings
    from gitsync.status import cluster_status, status_json, status_lines

    try:
        namespace = args.state_namespace or (
            _agent_config(args.config).rollout.state_namespace
            if args.config is not None
            else RolloutSettings().state_namespace
        )
        with api_client(args.kubeconfig, args.context) as api:
            rows = cluster_status(
                RayServicesClient(api), StateStore(api, namespace), tuple(args.namespace or ())
            )
    except GitsyncError as exc:
        err.write(f"gitsync status: {exc}\n")
        return EXIT_ERROR
    if args.output != "text":
        write_document(status_json(rows), args.output, out)
    else:
        out.write("\n".join(status_lines(rows)) + ("\n" if rows else ""))
    if not rows:
        err.write(f"gitsync status: no environment recorded in namespace {namespace}\n")
        return EXIT_FOUND
    unsettled = [r.name for r in rows if not r.settled]
    if unsettled:
        err.write(f"gitsync status: not settled: {', '.join(unsettled)}\n")
        return EXIT_FOUND
    return EXIT_OK


def _pinned_revision(config: AgentConfig, environment: str, revision: str) -> str:
    """``revision`` as a full SHA, once checked to be a commit of the watched branch whose
    gitsync.yaml declares ``environment`` (fetched into a temporary cache)."""
    from gitsync.planning import ordered_environments

    with tempfile.TemporaryDirectory(prefix="gitsync-pin-") as cache:
        repo = dataclasses.replace(config.repository, cache_dir=Path(cache), verify=None)
        source = GitSource(repo)
        sha = source.on_branch(revision)
        report = read_tree(source.checkout(sha))
        if environment not in ordered_environments(report, None, sha[:12]):
            raise ConfigError(f"gitsync.yaml at {sha[:12]} declares no environment {environment}")
    return sha


def _later(seconds: float) -> str:
    """``seconds`` from now, UTC, ISO 8601 (``""`` for 0: the override ends now)."""
    import datetime

    if seconds <= 0:
        return ""
    when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def run_hold(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """suspend, resume, pin, unpin: one write to ENV's state ConfigMap."""
    import datetime
    import getpass

    from gitsync.config import RolloutSettings

    verb = args.command
    try:
        config = _agent_config(args.config) if args.config is not None else None
        namespace = args.state_namespace or (
            config.rollout.state_namespace if config else RolloutSettings().state_namespace
        )
        sha = _pinned_revision(config, args.env, args.revision) if config and verb == "pin" else ""
        with api_client(args.kubeconfig, args.context) as api:
            store = StateStore(api, namespace)
            by, at = (
                getpass.getuser(),
                datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            )
            if verb == "suspend":
                store.suspend(args.env, by, at, args.reason)
            elif verb == "open-window":
                store.open_window(args.env, _later(args.span), by, args.reason)
            elif verb == "pin":
                store.pin(args.env, sha, by, at, args.reason)
            else:
                (store.resume if verb == "resume" else store.unpin)(args.env)
            hold = store.hold(args.env)
    except GitsyncError as exc:
        err.write(f"gitsync {verb}: {exc}\n")
        return EXIT_ERROR
    now = hold.describe() or "not held: it follows the branch head"
    if verb == "open-window":
        now = (
            f"change windows set aside until {hold.window_open_until}"
            if hold.window_open_until
            else "change windows apply"
        )
    out.write(f"{args.env}: {now} (the agent acts at its next poll)\n")
    return EXIT_OK


def run_drift(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from gitsync.console import print_coloured, work_display
    from gitsync.drift import DriftChecker, drift_json, report_lines

    try:
        config = _agent_config(args.config)
        with (
            api_client(args.kubeconfig, args.context) as api,
            EventRecorder(api) as record,
            work_display(err, "checking drift", verbose=args.heal) as progress,
        ):
            checker = DriftChecker(
                config,
                RayServicesClient(api),
                StateStore(api, config.rollout.state_namespace),
                GitSource(config.repository),
                progress=progress,
                record=record,
            )
            reports = checker.check(args.env, heal=args.heal)
    except GitsyncError as exc:
        err.write(f"gitsync drift: {exc}\n")
        return EXIT_ERROR
    if args.output != "text":
        write_document({"environments": [drift_json(r) for r in reports]}, args.output, out)
    else:
        lines = [line for r in reports if not r.error for line in report_lines(r)]
        if lines and not print_coloured(out, lines):
            out.write("\n".join(lines) + "\n")
    for report in reports:  # an error is told on stderr, whatever the output format
        if report.error:
            err.write(f"gitsync drift: {report.environment}: check failed: {report.error}\n")
    if any(r.error for r in reports):
        return EXIT_ERROR
    return EXIT_FOUND if any(r.drifted for r in reports) else EXIT_OK


def run_previews(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from gitsync.console import health_style, print_table, work_display
    from gitsync.metrics import Metrics
    from gitsync.previews import PreviewReconciler, age, list_previews
    from gitsync.report.factory import build_pulls, build_reporter

    try:
        config = _agent_config(args.config)
        source = GitSource(config.repository)
        tree = read_tree(source.checkout(source.head()))
        settings = tree.config.previews if tree.config else None
        if settings is None:
            err.write("gitsync previews: gitsync.yaml declares no previews\n")
            return EXIT_ERROR
        with api_client(args.kubeconfig, args.context) as api:
            services = RayServicesClient(api)
            if args.reconcile:
                metrics = Metrics()
                reporter = build_reporter(config, metrics)
                try:
                    with (
                        EventRecorder(api) as record,
                        work_display(err, "reconciling previews", verbose=True) as progress,
                    ):
                        PreviewReconciler(
                            config,
                            services,
                            StateStore(api, config.rollout.state_namespace),
                            source,
                            build_pulls(config, metrics),
                            reporter,
                            progress=progress,
                            record=record,
                        ).reconcile()
                finally:
                    reporter.close(timeout=STATUS_FLUSH_SECONDS)
            rows = list_previews(services, settings.namespace)
    except GitsyncError as exc:
        err.write(f"gitsync previews: {exc}\n")
        return EXIT_ERROR
    now = time.time()
    table = [
        {
            "pr": r["pr"],
            "service": r["name"],
            "revision": r["revision"],
            "health": str(assess(r["object"], ()).health),
            "age": age(now - r["updated"]) if r["updated"] else "?",
        }
        for r in rows
    ]
    if args.output != "text":
        write_document({"namespace": settings.namespace, "previews": table}, args.output, out)
        return EXIT_OK
    shown = print_table(
        out,
        ("PR", "SERVICE", "REVISION", "HEALTH", "AGE"),
        [
            (f"#{r['pr']}", str(r["service"]), str(r["revision"])[:12], r["health"], r["age"])
            for r in table
        ],
        [health_style(str(r["health"])) for r in table],
    )
    if not shown:
        out.write(f"{'PR':<6} {'SERVICE':<40} {'REVISION':<13} {'HEALTH':<12} AGE\n")
    for row in table if not shown else ():
        out.write(
            f"#{row['pr']:<5} {row['service']:<40} {str(row['revision'])[:12]:<13} "
            f"{row['health']:<12} {row['age']}\n"
        )
    if not table:
        err.write(f"gitsync previews: no active previews in {settings.namespace}\n")
    return EXIT_OK


def _probe_address(probe_listen: str) -> tuple[str, int] | None:
    """``probeListen`` (or ``metrics.listen``) as (host, port); None when it shares the main
    listener."""
    if not probe_listen:
        return None
    host, _, port = probe_listen.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - the documented default


def _webhook_secret(secret: TokenAuth | None) -> Callable[[], bytes | None]:
    """Reads the webhook secret at each delivery (a rotated file is picked up); None when
    none is configured or it cannot be read (logged)."""

    def read() -> bytes | None:
        if secret is None:
            return None
        try:
            return read_token(secret).encode()
        except GitsyncError as exc:
            logging.getLogger("gitsync.server").error("webhook secret: %s", exc)
            return None

    return read


def run_agent(args: argparse.Namespace, err: TextIO) -> int:
    from gitsync.agent import Agent
    from gitsync.kube.access import check_access
    from gitsync.metrics import Metrics
    from gitsync.report.factory import (
        agent_identity,
        build_notifier,
        build_pulls,
        build_reporter,
    )

    configure_logging(args.log_format, args.log_level)
    try:
        config = _agent_config(args.config)
        listen = args.listen or config.listen
        api = api_client(args.kubeconfig, args.context)
        election = config.leader_election
        lease = (election.namespace, election.lease_name) if election.enabled else None
        check_access(api, config.rollout.state_namespace, lease)
        metrics = Metrics()
        reporter = build_reporter(config, metrics)
        pulls = build_pulls(config, metrics)
        notifier = build_notifier(config, metrics)
    except GitsyncError as exc:
        err.write(f"gitsync run: {exc}\n")
        return EXIT_ERROR
    agent = Agent(
        config=config,
        api=api,
        identity=agent_identity(),
        metrics=metrics,
        reporter=reporter,
        pulls=pulls,
        notifier=notifier,
        advertise_url=advertised_url(
            config.advertise_url, listen, os.environ.get("POD_IP", ""), socket.gethostname()
        ),
    )
    try:
        server = _agent_server(agent, listen, metrics)
    except OSError as exc:
        err.write(f"gitsync run: cannot listen on {listen}: {exc.strerror}\n")
        return EXIT_ERROR
    _run_until_signalled(agent)
    began = time.monotonic()
    finished = agent.shutdown(timeout=args.shutdown_timeout)
    # Requests still in flight get what is left of the grace period (a little, at least).
    grace = agent.config.shutdown_grace if args.shutdown_timeout is None else args.shutdown_timeout
    server.stop(timeout=max(0.5, began + grace - time.monotonic()))
    if not finished:
        # The pass stuck in a call runs on APScheduler's worker, a non-daemon thread that
        # the interpreter would wait for at exit: the grace period would not hold.
        _exit_now(EXIT_OK)
    api.close()
    return EXIT_OK


def _agent_server(agent: Agent, listen: str, metrics: Metrics) -> AgentServer:
    """The agent's HTTP server, started: webhooks, probes, metrics, the status page."""
    from gitsync.server import AgentServer, Hooks
    from gitsync.web.site import StatusSite, forge_of, is_loopback

    config = agent.config
    host, _, port = listen.rpartition(":")
    hooks = Hooks(
        _webhook_secret(config.webhooks.secret),
        config.repository.url,
        config.repository.branch,
        agent.trigger,
        agent.trigger_previews,
        agent.healthy,
        agent.ready.is_set,
        agent.leader_url,
        agent.relay_refused,
    )
    bind = host.strip("[]") or "0.0.0.0"  # noqa: S104 - the documented default
    site = StatusSite(
        agent.services, agent.state, config.ui, forge_of(config), loopback=is_loopback(bind)
    )
    return AgentServer(
        bind,
        int(port),
        hooks,
        metrics,
        site,
        probes=_probe_address(config.probe_listen),
        metrics_listen=_probe_address(config.metrics.listen),
        metrics_token=config.metrics.bearer,
    ).start()


def _run_until_signalled(agent: Agent) -> None:
    """Starts the agent and returns at the first SIGTERM or Ctrl-C (a second exits at once)."""
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        if stop.is_set():  # a second Ctrl-C (or SIGTERM): no more waiting
            logging.getLogger("gitsync.agent").warning("second signal: exiting now")
            _exit_now(EXIT_ERROR)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # Everything made so far (modules, config, clients) lives as long as the process: frozen,
    # the collections after each pass no longer walk it.
    gc.collect()
    gc.freeze()
    agent.start()
    # With a timeout: a SIGTERM the kernel delivers to another thread runs the handler only
    # when the main thread next executes bytecode, which an untimed wait would never do.
    while not stop.wait(0.5):
        pass


def _exit_now(code: int) -> None:
    """Exits at once: logs flushed, this process's git children (a fetch from a hung server)
    killed, threads not waited for."""
    logging.shutdown()
    for children in Path("/proc/self/task").glob("*/children"):
        try:
            pids = children.read_text().split()
        except OSError:
            continue
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(int(pid), signal.SIGKILL)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_notes(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from gitsync.report.gitnotes import GitNotesProvider
    from gitsync.source.notes import GitNotes

    try:
        with tempfile.TemporaryDirectory(prefix="gitsync-notes-") as cache:
            if args.config is not None:
                repository = _agent_config(args.config).repository
                repository = dataclasses.replace(repository, cache_dir=Path(cache))
            else:
                repository = RepoSource(args.repo, args.branch, Path(cache))
            revision = args.rev or GitSource(repository).head()
            if not _SHA.match(revision):
                err.write(f"gitsync notes: {revision!r} is not a full 40-hex commit SHA\n")
                return EXIT_ERROR
            records = GitNotesProvider(GitNotes(repository), "").history(revision)
    except (GitsyncError, ValueError) as exc:
        err.write(f"gitsync notes: {exc}\n")
        return EXIT_ERROR
    if args.output != "text":
        document = {
            "revision": revision,
            "statuses": [
                {
                    "context": r.status.context,
                    "state": str(r.status.state),
                    "description": r.status.description,
                    "target_url": r.status.target_url,
                    "at": r.at,
                    "agent": r.agent,
                }
                for r in records
            ],
        }
        write_document(document, args.output, out)
    else:
        out.write(f"{revision}\n")
        for r in records:
            out.write(
                f"  {r.at:<20} {r.status.context:<28} {r.status.state:<8} "
                f"{r.status.description}  [{r.agent}]\n"
            )
        if not records:
            err.write(f"gitsync notes: no gitsync statuses on {revision[:12]}\n")
    return EXIT_OK if records else EXIT_FOUND


def _options(args: argparse.Namespace) -> Options:
    """Flags win over the agent config (--config), which wins over the defaults."""
    options = Options()
    if args.config is not None:
        text = args.config.read_text(encoding="utf-8")
        config, problems = load_agent_config(text, str(args.config))
        if config is None:
            raise ConfigError("\n".join(str(p) for p in problems))
        options = config.classify
    semantics = (
        kuberay.semantics_for(args.kuberay_version) if args.kuberay_version else options.semantics
    )
    zero_downtime = options.operator_zero_downtime and not args.no_zero_downtime
    return Options(semantics, zero_downtime, bool(getattr(args, "show_env_values", False)))


def _plans(args: argparse.Namespace) -> list[Plan]:
    options = _options(args)
    if getattr(args, "from_rev", None):
        to_rev = args.to_rev or "HEAD"
        if not getattr(args, "capacity", False):
            return offline_plans(Path(args.path), args.env, args.from_rev, to_rev, options)
        with api_client(args.kubeconfig, args.context) as api:
            cluster = RayServicesClient(api)
            return offline_plans(Path(args.path), args.env, args.from_rev, to_rev, options, cluster)
    with api_client(args.kubeconfig, args.context) as api:
        return live_plans(Path(args.path), args.env, RayServicesClient(api), options)


def run_plan(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if getattr(args, "to_rev", None) and not args.from_rev:
        # Without --from the plan is against the live cluster, which has no "to": silently
        # planning the checkout instead would answer a question nobody asked.
        err.write(
            "gitsync plan: --to needs --from (the revision deployed now); without both, "
            "plan compares the checkout PATH with the live cluster\n"
        )
        return EXIT_ERROR
    if getattr(args, "output", "") == "markdown" and not args.from_rev:
        err.write("gitsync plan: -o markdown needs --from (the pull request's base)\n")
        return EXIT_ERROR
    if getattr(args, "capacity", False) and not args.from_rev:
        err.write("gitsync plan: --capacity needs --from (a live plan always checks capacity)\n")
        return EXIT_ERROR
    try:
        plans = _plans(args)
    except (GitsyncError, ValueError, OSError) as exc:
        err.write(f"gitsync {args.command}: {exc}\n")
        return EXIT_ERROR
    if args.output in ("json", "yaml"):
        # One --env: that environment's plan; otherwise every plan, in rollout order.
        single = args.env is not None and len(args.env) == 1
        document = (
            plan_json(plans[0]) if single else {"environments": [plan_json(p) for p in plans]}
        )
        write_document(document, args.output, out)
    elif args.command == "diff":
        color = args.color == "always" or (
            args.color == "auto" and out.isatty() and "NO_COLOR" not in os.environ
        )
        out.write("".join(plan_diff(p, color=color) for p in plans))
    elif args.output == "markdown":
        first = plans[0] if plans else None
        revisions = (first.from_rev or "", first.to_rev or "") if first else ("", "")
        out.write(plan_markdown(plans, *revisions, capacity=args.capacity))
    else:
        out.write("\n".join(plan_table(p) for p in plans))
    return EXIT_FOUND if any(p.has_changes for p in plans) else EXIT_OK


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
                "objects": [
                    {
                        "apiVersion": o.api_version,
                        "kind": o.kind,
                        "name": o.name,
                        "wave": o.wave,
                        "source": o.source,
                        "line": o.line,
                    }
                    for o in env.objects
                ],
            }
            for env in report.environments
        ],
    }


def validate_config(path: Path, out: TextIO, err: TextIO) -> int:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        err.write(f"gitsync validate: cannot read {path}: {exc}\n")
        return EXIT_ERROR
    _, problems = load_agent_config(text, str(path))
    for problem in problems:
        out.write(f"{problem}\n")
    if problems:
        err.write(f"gitsync validate: {len(problems)} problem(s) in {path}\n")
        return EXIT_FOUND
    err.write(f"gitsync validate: ok ({path})\n")
    return EXIT_OK


def is_url(text: str) -> bool:
    return "://" in text or (bool(_SCP.match(text)) and not Path(text).exists())


def validate_remote(
    url: str, rev: str | None, branch: str, output: str, out: TextIO, err: TextIO
) -> int:
    """Fetches exactly one revision of ``url`` into a throwaway cache and validates it."""
    sha = rev if rev and _SHA.match(rev) else None
    with tempfile.TemporaryDirectory(prefix="gitsync-validate-") as cache:
        try:
            source = GitSource(RepoSource(url, branch if sha else rev or branch, Path(cache)))
            tree = source.checkout(sha or source.head())
        except (SourceError, ValueError) as exc:
            err.write(f"gitsync validate: {exc}\n")
            return EXIT_ERROR
        return validate(tree, output, out, err)


def validate(path: Path, output: str, out: TextIO, err: TextIO) -> int:
    if not path.is_dir():
        err.write(
            f"gitsync validate: {path} is not a folder (give the checkout holding gitsync.yaml)\n"
        )
        return EXIT_ERROR
    report = read_tree(path)
    if output != "text":
        write_document(_report_json(report), output, out)
        return EXIT_OK if report.ok else EXIT_FOUND
    for problem in report.problems:
        out.write(f"{problem}\n")
    summary = ", ".join(
        f"{env.environment.name}: {len(env.services)} RayServices"
        + (f", {len(env.objects)} other objects" if env.objects else "")
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


def source_checkout() -> Path | None:
    """The repository this gitsync runs from (an editable install or ``python -m gitsync`` in
    a clone), or None for an installed wheel: the distribution holds gitsync alone, never the
    test bed."""
    root = Path(__file__).resolve().parent.parent
    markers = (root / "testbed" / "demo.py", root / "testbed" / "build.sh", root / "pyproject.toml")
    return root if all(path.is_file() for path in markers) else None


def run_demo(args: argparse.Namespace, err: TextIO) -> int:
    """The demo lives with the test bed in the source checkout, not in gitsync itself."""
    import subprocess

    checkout = source_checkout()
    if checkout is None:
        err.write(
            "gitsync demo: needs a source checkout of gitsync: the demo runs the repository's "
            "test bed (testbed/ builds a local kube-apiserver, etcd, Gitea and KubeRay from Go "
            "modules), which the installed package does not include. Clone gitsync's "
            "repository and run `make demo` in the clone (its docs/quickstart.md says what the "
            "first run needs)\n"
        )
        return EXIT_ERROR
    argv = [sys.executable, "-m", "testbed.demo", "--pace", args.pace, "--ray", args.ray]
    argv += ["--workdir", str(args.workdir.resolve())] if args.workdir else []
    argv += ["--exit-after-story"] if args.exit_after_story else []
    try:
        return subprocess.call(argv, cwd=checkout)
    except KeyboardInterrupt:
        return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        return _main(words)
    except BrokenPipeError:  # `gitsync plan -o json | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        return 130  # as a shell reports SIGINT
    except Exception as exc:  # the last line of defence: one line, exit 2
        sys.stderr.write(crash_line(exc, words))
        if "--debug" in words:
            traceback.print_exc()
        return EXIT_ERROR


def crash_line(exc: Exception, words: Sequence[str]) -> str:
    """One line for an exception no command handled: gitsync's own error for an API answer
    (kube/failures.py), else what it was and how to see more. Never exit 1 ("changes")."""
    command = next((w for w in words if w in _COMMANDS), "")
    prefix = f"gitsync {command}".rstrip()
    error = explained(exc)
    if error is not None:
        return f"{prefix}: {error}\n"
    text = str(exc).splitlines()[0] if str(exc) else ""
    hint = "" if "--debug" in words else " (run again with --debug for the traceback)"
    return f"{prefix}: unexpected error: {type(exc).__name__}: {text}{hint}\n"


_COMMANDS = (
    "validate",
    "plan",
    "diff",
    "sync",
    "status",
    "drift",
    "previews",
    "run",
    "notes",
    "demo",
    "suspend",
    "resume",
    "pin",
    "unpin",
    "open-window",
)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "validate":
        if args.path is None and args.config is None:
            parser.error("validate needs a checkout PATH, --config FILE, or both")
        codes = []
        if args.config is not None:
            codes.append(validate_config(args.config, sys.stdout, sys.stderr))
        if args.path is not None and is_url(args.path):
            codes.append(
                validate_remote(
                    args.path, args.rev, args.branch, args.output, sys.stdout, sys.stderr
                )
            )
        elif args.path is not None:
            if args.rev:
                parser.error("--rev goes with a repository URL; check out the revision instead")
            codes.append(validate(Path(args.path), args.output, sys.stdout, sys.stderr))
        return max(codes)
    if args.command == "completion":
        sys.stdout.write(completion_script(parser, args.shell))
        return EXIT_OK
    if args.command == "run":
        return run_agent(args, sys.stderr)
    if args.command == "demo":
        return run_demo(args, sys.stderr)
    commands = {
        "plan": run_plan,
        "diff": run_plan,
        "sync": run_sync,
        "status": run_status,
        "notes": run_notes,
        "drift": run_drift,
        "previews": run_previews,
        **dict.fromkeys(("suspend", "resume", "pin", "unpin", "open-window"), run_hold),
    }
    if args.command in commands:
        return commands[args.command](args, sys.stdout, sys.stderr)
    parser.print_help(sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
