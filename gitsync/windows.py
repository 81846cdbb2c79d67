"""Change windows: when an environment may be rolled out (``windows:`` in gitsync.yaml).

Owns evaluating the windows the repository config declares (``manifests/repoconfig.py``
checks their shape): is a time inside each window, is the environment open then, and when it
opens next. A window opens at each time its cron ``schedule`` fires, in its ``timeZone``, and
stays open for its ``duration``. As Argo CD's sync windows: the environment is closed while
any ``deny`` window is open, and, when it declares ``allow`` windows, while none of them is.

The cron expressions are APScheduler's (``CronTrigger``, already the agent's scheduler, so no
second cron implementation), with one correction: in a crontab's day-of-week field 0 and 7
are Sunday, but APScheduler 3 counts 0 as Monday; numbers there are turned into day names
before APScheduler reads them (:func:`trigger`). Pure but for ``zoneinfo``'s time-zone data:
the caller passes the time, so tests need no wall clock.
"""

from __future__ import annotations

import datetime
import re
import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass

from apscheduler.triggers.cron import CronTrigger

from gitsync.manifests.repoconfig import REPO_CONFIG_FILE, ChangeWindow, RepoConfig
from gitsync.model import Problem

_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# How far ahead the next opening is looked for: a window that never opens within a year (an
# allow window on 30 February) leaves the environment closed "for more than a year".
HORIZON = datetime.timedelta(days=366)
MAX_STEPS = 64


_DAY_ITEM = re.compile(r"(\*|[0-7]|[a-z]{3})(?:-([0-7]|[a-z]{3}))?(?:/(\d+))?")


def _day(text: str) -> int:
    if text.isdigit():
        return int(text) % 7  # 0 and 7: Sunday
    if text not in _DAYS:
        raise ValueError(f"{text!r} is not a day of the week")
    return _DAYS.index(text)


def _day_names(field: str) -> str:
    """A crontab day-of-week field as the days it means, by name, for APScheduler: crontab
    counts from Sunday (0 or 7), APScheduler 3 from Monday, and a range or step over the
    numbers (``0-6``, ``*/2``) means other days, or nothing valid, read its way. Each item
    (``*``, ``3``, ``mon``, ``1-5``, ``fri-mon``, ``*/2``, ``1-5/2``) is expanded in crontab's
    terms first; ValueError when an item is not one."""
    days: set[int] = set()
    for item in field.lower().split(","):
        match = _DAY_ITEM.fullmatch(item)
        if match is None:
            raise ValueError(f"{item!r} is not a day-of-week item")
        first, last, step = match.groups()
        start, stop = (0, 6) if first == "*" else (_day(first), _day(last or first))
        if first != "*" and last is not None and last.isdigit() and int(last) == 7:
            stop = 7  # 5-7: Friday to Sunday
        span = range(start, stop + 1) if start <= stop else [*range(start, 7), *range(stop + 1)]
        days |= {d % 7 for d in list(span)[:: int(step or 1)]}
    return "*" if len(days) == 7 else ",".join(_DAYS[d] for d in sorted(days))


def crontab(schedule: str, zone: datetime.tzinfo) -> CronTrigger:
    """A 5-field crontab expression as an APScheduler trigger in ``zone``, its day-of-week
    read as crontab reads it (:func:`_day_names`); ValueError when it is not valid."""
    fields = schedule.split()
    if len(fields) != 5:
        raise ValueError("a schedule has 5 fields: minute hour day-of-month month day-of-week")
    minute, hour, day, month, weekday = fields
    return CronTrigger(
        minute=minute, hour=hour, day=day, month=month, day_of_week=_day_names(weekday),
        timezone=zone,
    )  # fmt: skip


def trigger(window: ChangeWindow) -> CronTrigger:
    """The window's schedule as a trigger; ValueError (or KeyError for the time zone) when
    the expression or the zone is not valid."""
    return crontab(window.schedule, zoneinfo.ZoneInfo(window.timezone))


def _next(
    cron: CronTrigger, previous: datetime.datetime | None, now: datetime.datetime
) -> datetime.datetime | None:
    """APScheduler's next fire time after ``now`` (or at it), typed."""
    fire: datetime.datetime | None = cron.get_next_fire_time(previous, now)
    return fire


def problems(config: RepoConfig) -> list[Problem]:
    """Every window whose schedule or time zone cannot be read, at its line in gitsync.yaml."""
    found = []
    for env in config.environments:
        for window in env.windows:
            try:
                zoneinfo.ZoneInfo(window.timezone)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                why = f"timeZone {window.timezone!r} is not an IANA time zone (e.g. Europe/Berlin)"
                found.append(Problem(REPO_CONFIG_FILE, window.line, f"{env.name}: {why}"))
                continue
            try:
                trigger(window)
            except ValueError as exc:
                why = f"schedule {window.schedule!r} is not a cron expression: {exc}"
                found.append(Problem(REPO_CONFIG_FILE, window.line, f"{env.name}: {why}"))
    return found


def open_until(window: ChangeWindow, now: datetime.datetime) -> datetime.datetime | None:
    """When the window, open at ``now``, closes; None when it is not open at ``now``."""
    cron = trigger(window)
    span = datetime.timedelta(seconds=window.duration)
    fire = _next(cron, None, now - span)
    latest = None
    while fire is not None and fire <= now:  # the last opening at or before now counts
        latest = fire
        fire = _next(cron, fire, fire + datetime.timedelta(seconds=1))
    if latest is None or now >= latest + span:
        return None
    return latest + span


@dataclass(frozen=True)
class Verdict:
    open: bool
    why: str = ""  # closed: the window that closes it, for people
    opens: datetime.datetime | None = None  # closed: when it opens next (None: not in a year)


def _describe(window: ChangeWindow) -> str:
    hours = window.duration / 3600
    span = f"{hours:g}h" if hours >= 1 else f"{window.duration / 60:g}m"
    return f"{window.kind} {window.schedule} for {span} {window.timezone}"


def _closed_by(windows: Sequence[ChangeWindow], now: datetime.datetime) -> str:
    for window in windows:
        if window.kind == "deny" and open_until(window, now) is not None:
            return f"deny window {_describe(window)}"
    allows = [w for w in windows if w.kind == "allow"]
    if allows and all(open_until(w, now) is None for w in allows):
        return "outside every allow window (" + "; ".join(_describe(w) for w in allows) + ")"
    return ""


def _candidates(windows: Sequence[ChangeWindow], at: datetime.datetime) -> list[datetime.datetime]:
    """Times after ``at`` when the verdict may change: an open deny window closing, an allow
    window opening."""
    found = set()
    for window in windows:
        if window.kind == "deny":
            until = open_until(window, at)
            if until is not None:
                found.add(until)
        else:
            fire = _next(trigger(window), None, at + datetime.timedelta(seconds=1))
            if fire is not None:
                found.add(fire)
    return sorted(t for t in found if t > at)


def verdict(windows: Sequence[ChangeWindow], now: datetime.datetime) -> Verdict:
    """Whether an environment with ``windows`` may roll out at ``now`` (aware), and if not,
    why and when it opens next (within ``HORIZON``; ``MAX_STEPS`` rounds of candidates)."""
    why = _closed_by(windows, now)
    if not why:
        return Verdict(True)
    at = now
    for _ in range(MAX_STEPS):
        candidates = _candidates(windows, at)
        if not candidates or candidates[0] - now > HORIZON:
            break
        for candidate in candidates:
            if not _closed_by(windows, candidate):
                return Verdict(False, why, candidate)
        at = candidates[-1]
    return Verdict(False, why, None)
