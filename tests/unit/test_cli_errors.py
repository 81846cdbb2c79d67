"""An exception no command handles still gets one line and exit 2 (never 1, "changes"); the
traceback only with --debug."""

from __future__ import annotations

import json

from kubernetes import client

from gitsync.cli import crash_line


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
