"""What the CLI shows on a terminal while it works and when it is done: for ``gitsync sync
--once`` rich's live status line (the wave being applied or waited on, with a spinner and the
time it has taken) above which the progress lines scroll, coloured by what they say; for
``drift`` and ``previews --reconcile`` a status line naming the latest step; ``drift``'s
report coloured and ``previews``' list as a table sized to the terminal. Plain lines, as
before, when the stream is not a terminal, ``NO_COLOR`` is set or ``TERM`` is ``dumb``: logs,
pipes and CI see no escape codes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TextIO

from rich import box
from rich.console import Console
from rich.status import Status
from rich.table import Table
from rich.text import Text

from gitsync.model import ServiceKey, StepKind, WaveEvent
from gitsync.plan import Plan
from gitsync.progress import NO_FIELDS, Fields, Quiet

Record = Callable[[ServiceKey, str, str, str], None]


class PlainLines(Quiet):
    """Progress lines to ``write``, Events to ``record``, the plans kept."""

    def __init__(self, write: Callable[[str], None], record: Record, plans: list[Plan]) -> None:
        self.write, self.record, self.plans = write, record, plans

    def line(self, text: str, fields: Fields = NO_FIELDS) -> None:
        self.write(text)

    def recorded(self, key: ServiceKey, kind: str, reason: str, message: str) -> None:
        self.record(key, kind, reason, message)

    def planned(self, plan: Plan) -> None:
        self.plans.append(plan)


def style_of(text: str, fields: Fields) -> str:
    """A line's colour: failures red, warnings and skips yellow, successes green, applies
    and prunes cyan, the rest plain."""
    if any(word in text for word in (" failed", " rolled-back", "Degraded", "not rolled out")):
        return "red"
    if "warning:" in text or fields.get("action") == "skipped" or "superseded" in text:
        return "yellow"
    if " succeeded" in text or " up to date" in text or " Healthy" in text:
        return "green"
    if "action" in fields:
        return "cyan"
    return ""


class LiveLines(PlainLines):
    """:class:`PlainLines` on a terminal: each line coloured, under a live status line saying
    which wave of which environment is being applied or waited on."""

    def __init__(self, console: Console, record: Record, plans: list[Plan]) -> None:
        self.console, self.began = console, time.monotonic()
        self.status = Status("planning", console=console, spinner="dots")
        super().__init__(lambda text: None, record, plans)

    def line(self, text: str, fields: Fields = NO_FIELDS) -> None:
        stamp = f"[{time.monotonic() - self.began:6.1f}s] "
        line = Text.assemble((stamp, "dim"), (text, style_of(text, fields)))
        self.console.print(line, soft_wrap=True)

    def wave(self, environment: str, event: WaveEvent) -> None:
        doing = "waiting for" if event.kind is StepKind.WAITING else "applying"
        services = ", ".join(str(key) for key, _ in event.actions[:3])
        more = f" and {len(event.actions) - 3} more" if len(event.actions) > 3 else ""
        self.status.update(
            f"{environment}: wave {event.index} of {event.total}: {doing} {services}{more}"
        )

    def started(self, environment: str) -> None:
        self.status.update(f"{environment}: starting")


def on_terminal(stream: TextIO, environ: dict[str, str] | None = None) -> bool:
    """Whether ``stream`` gets the live display: a terminal, colour not refused."""
    env = os.environ if environ is None else environ
    if env.get("NO_COLOR") or env.get("TERM") == "dumb":
        return False
    return stream.isatty()


@contextmanager
def sync_display(
    err: TextIO, record: Record, plans: list[Plan], environ: dict[str, str] | None = None
) -> Iterator[PlainLines]:
    """The observer for one ``sync --once``: :class:`LiveLines` (its status line running
    until the block ends) on a terminal, else :class:`PlainLines` with elapsed seconds."""
    if not on_terminal(err, environ):
        began = time.monotonic()

        def write(text: str) -> None:
            err.write(f"[{time.monotonic() - began:6.1f}s] {text}\n")
            err.flush()

        yield PlainLines(write, record, plans)
        return
    live = LiveLines(Console(file=err, highlight=False), record, plans)
    with live.status:
        yield live


@contextmanager
def work_display(
    err: TextIO, what: str, *, verbose: bool, environ: dict[str, str] | None = None
) -> Iterator[Callable[[str], None]]:
    """The progress of long work (``drift`` over many services, ``previews --reconcile``): on
    a terminal a live status line naming ``what`` and its latest step, the steps printed
    (coloured) above it when ``verbose``; elsewhere the steps as plain lines when
    ``verbose``, nothing otherwise."""
    if not on_terminal(err, environ):

        def plain(text: str) -> None:
            if verbose:
                err.write(text + "\n")
                err.flush()

        yield plain
        return
    console = Console(file=err, highlight=False)
    status = Status(what, console=console, spinner="dots")

    def live(text: str) -> None:
        status.update(f"{what}: {text}")
        if verbose:
            console.print(Text(text, style=style_of(text, NO_FIELDS)), soft_wrap=True)

    with status:
        yield live


def health_style(health: str) -> str:
    return {"Healthy": "green", "Degraded": "red", "Missing": "red"}.get(health, "yellow")


def print_table(
    out: TextIO,
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    styles: Sequence[str] = (),
    environ: dict[str, str] | None = None,
) -> bool:
    """``rows`` as a rich table sized to the terminal, row ``i`` in ``styles[i]``; False
    (nothing written) when ``out`` is not a terminal: the caller writes its plain columns."""
    if not on_terminal(out, environ):
        return False
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for i, row in enumerate(rows):
        table.add_row(*row, style=styles[i] if i < len(styles) else None)
    Console(file=out, highlight=False).print(table)
    return True


def print_coloured(
    out: TextIO, lines: Sequence[str], environ: dict[str, str] | None = None
) -> bool:
    """``lines`` coloured by what they say (:func:`drift_style`) on a terminal; False
    (nothing written) elsewhere."""
    if not on_terminal(out, environ):
        return False
    console = Console(file=out, highlight=False)
    for text in lines:
        console.print(Text(text, style=drift_style(text)), soft_wrap=True)
    return True


def drift_style(text: str) -> str:
    """A drift report line's colour: failures and fights red, drift yellow, none green."""
    if "check failed" in text or "FIGHTING" in text:
        return "red"
    if " no drift " in text or text.startswith("  healed:"):
        return "green"
    if " drifted from " in text or text.startswith("  "):
        return "yellow"
    return ""
