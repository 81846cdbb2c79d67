"""The CLI's displays: ``sync --once``'s live status line and coloured lines, ``drift``'s and
``previews``' status line, coloured report and table, on a terminal (a real pseudo-terminal
here); plain lines elsewhere or with NO_COLOR / TERM=dumb."""

from __future__ import annotations

import io
import os
import select
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

import pytest

from gitsync.console import (
    LiveLines,
    PlainLines,
    drift_style,
    print_coloured,
    print_table,
    style_of,
    sync_display,
    work_display,
)
from gitsync.model import Action, ServiceKey, StepKind, WaveEvent
from gitsync.progress import about

RANKER = ServiceKey("ray-staging", "ranker")


def nothing(key: ServiceKey, kind: str, reason: str, message: str) -> None:
    pass


@contextmanager
def terminal() -> Iterator[tuple[IO[str], int]]:
    """A pseudo-terminal: the stream the display writes to, and the fd that reads it back."""
    main, side = os.openpty()
    stream = os.fdopen(side, "w", encoding="utf-8")
    try:
        yield stream, main
    finally:
        stream.close()
        os.close(main)


def read_all(fd: int) -> str:
    """What the terminal shows so far (a live display keeps writing: read for at most 2 s)."""
    data, deadline = b"", time.monotonic() + 2
    while time.monotonic() < deadline and select.select([fd], [], [], 0.2)[0]:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return data.decode("utf-8", "replace")


def test_not_a_terminal_gets_plain_timed_lines() -> None:
    err = io.StringIO()
    with sync_display(err, nothing, [], environ={}) as observer:
        assert type(observer) is PlainLines
        observer.line("staging: up to date at 0123456789ab", about("staging"))
    assert err.getvalue().endswith("s] staging: up to date at 0123456789ab\n")
    assert "\x1b[" not in err.getvalue()


@pytest.mark.parametrize("environ", [{"NO_COLOR": "1"}, {"TERM": "dumb"}])
def test_a_terminal_that_refuses_colour_gets_plain_lines(environ: dict[str, str]) -> None:
    with terminal() as (stream, main), sync_display(stream, nothing, [], environ) as observer:
        assert type(observer) is PlainLines
        observer.line("staging: rolling ray-staging/ranker back", about("staging", RANKER))
        stream.flush()
        assert "\x1b[" not in read_all(main)


def test_a_terminal_gets_the_live_wave_and_coloured_lines() -> None:
    waiting = WaveEvent(StepKind.WAITING, 1, 2, ((RANKER, Action.SERVE_UPDATE),))
    with terminal() as (stream, main):
        with sync_display(stream, nothing, [], environ={"TERM": "xterm"}) as observer:
            assert isinstance(observer, LiveLines)
            observer.wave("staging", waiting)
            observer.line(
                "staging: wave 0: applied ray-staging/ranker (serve-update) at 0123456789ab",
                about("staging", RANKER, wave=0, action=Action.SERVE_UPDATE),
            )
            observer.line("staging: 0123456789ab failed: ranker Degraded", about("staging"))
            time.sleep(0.5)  # the live line redraws 12.5 times a second
            shown = read_all(main)
        shown += read_all(main)
    assert "staging: wave 1 of 2: waiting for ray-staging/ranker" in shown
    assert "applied ray-staging/ranker (serve-update)" in shown
    assert "\x1b[36m" in shown  # the apply in cyan
    assert "\x1b[31m" in shown  # the failure in red


@pytest.mark.parametrize(
    ("text", "fields", "style"),
    [
        ("staging: 0123456789ab failed: x", {}, "red"),
        ("staging: 0123456789ab succeeded: 2 applied", {}, "green"),
        ("staging: warning: no capacity", {}, "yellow"),
        ("staging: pruned ray-staging/old", {"action": "prune"}, "cyan"),
        ("revision 0123456789ab: environments staging", {}, ""),
    ],
)
def test_line_colours(text: str, fields: dict[str, str], style: str) -> None:
    assert style_of(text, fields) == style


XTERM = {"TERM": "xterm"}


def test_work_off_a_terminal_prints_steps_only_when_verbose() -> None:
    for verbose, expected in ((True, "staging: healed\n"), (False, "")):
        err = io.StringIO()
        with work_display(err, "checking drift", verbose=verbose, environ=XTERM) as progress:
            progress("staging: healed")
        assert err.getvalue() == expected
    out = io.StringIO()
    assert not print_table(out, ("PR",), [("#1",)], environ=XTERM)
    assert not print_coloured(out, ["staging: no drift from 0123456789ab"], environ=XTERM)
    assert out.getvalue() == ""  # the caller writes its plain columns


def test_work_on_a_terminal_shows_its_latest_step() -> None:
    with terminal() as (stream, main):
        with work_display(stream, "checking drift", verbose=True, environ=XTERM) as progress:
            progress("staging: 0123456789ab failed: heal refused")
            time.sleep(0.5)
            shown = read_all(main)
        shown += read_all(main)
    assert "checking drift: staging: 0123456789ab failed: heal refused" in shown
    assert "\x1b[31m" in shown  # the failure in red


def test_a_terminal_gets_a_table_and_a_coloured_report() -> None:
    with terminal() as (stream, main):
        assert print_table(
            stream,
            ("PR", "SERVICE", "HEALTH"),
            [
                ("#7", "ray-previews/pr-7-ranker", "Healthy"),
                ("#8", "ray-previews/pr-8-x", "Degraded"),
            ],
            ["green", "red"],
            environ=XTERM,
        )
        report = [
            "staging: 1 drifted from 0123456789ab",
            "  modified   ray-staging/ranker [FIGHTING: not corrected]",
        ]
        assert print_coloured(stream, report, environ=XTERM)
        stream.flush()
        shown = read_all(main)
    assert "pr-7-ranker" in shown
    assert "HEALTH" in shown
    assert "\x1b[32m" in shown  # the Healthy row green
    assert "\x1b[31m" in shown  # the Degraded row and the fight red


@pytest.mark.parametrize(
    ("text", "style"),
    [
        ("staging: no drift from 0123456789ab", "green"),
        ("staging: 2 drifted from 0123456789ab", "yellow"),
        ("  modified   ray-staging/ranker [FIGHTING: not corrected]", "red"),
        ("  healed: succeeded: 1 applied", "green"),
        ("staging: check failed: 403", "red"),
        ("staging: not checked: never rolled out", ""),
    ],
)
def test_drift_colours(text: str, style: str) -> None:
    assert drift_style(text) == style
