"""An exception no command handles still gets one line and exit 2 (never 1, "changes"); the
traceback only with --debug."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from kubernetes import client

from gitsync import __version__
from gitsync.cli import build_parser, crash_line, main


def test_an_unexpected_error_is_one_line_naming_the_command_and_the_way_to_see_more() -> None:
    line = crash_line(RuntimeError("boom\nsecond line"), ["plan", ".", "--env", "staging"])
    assert line == (
        "gitsync plan: unexpected error: RuntimeError: boom "
        "(run again with --debug for the traceback)\n"
    )
    with_debug = crash_line(KeyError("x"), ["--debug", "diff"])
    assert with_debug == "gitsync diff: unexpected error: KeyError: 'x'\n"


def test_an_api_refusal_nobody_mapped_is_explained_by_kube_failures() -> None:
    exc = client.ApiException(status=403, reason="Forbidden")
    exc.body = json.dumps({"kind": "Status", "message": 'leases is forbidden: User "u"'})
    line = crash_line(exc, ["run", "--config", "c.yaml"])
    assert line.startswith("gitsync run: not allowed (403 Forbidden): leases is forbidden")
    assert line.count("\n") == 1


def test_version_names_kuberay_semantics_and_the_client_libraries() -> None:
    answer = subprocess.run(
        [sys.executable, "-m", "gitsync", "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    lines = answer.stdout.splitlines()
    assert lines[0] == f"gitsync {__version__}"
    assert lines[1].startswith("KubeRay semantics: v1.5.0 by default")
    assert f"kubernetes {version('kubernetes')}" in lines[2]
    assert f"GitPython {version('GitPython')}" in lines[2]


def test_plan_to_without_from_is_an_error_not_a_live_plan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", str(tmp_path), "--to", "main"]) == 2
    assert "--to needs --from" in capsys.readouterr().err


def test_command_line_durations_take_go_syntax() -> None:
    args = build_parser().parse_args(["run", "--config", "c.yaml", "--shutdown-timeout", "1m30s"])
    assert args.shutdown_timeout == 90.0
