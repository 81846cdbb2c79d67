"""The agent's log setup: APScheduler's by-design skipped-run warnings do not flood it."""

from __future__ import annotations

import logging

from gitsync.logs import ScheduledRunsFilter


def record(level: int, message: str) -> logging.LogRecord:
    return logging.makeLogRecord(
        {"name": "apscheduler.scheduler", "levelno": level, "levelname": "X", "msg": message}
    )


def test_skipped_and_missed_runs_are_demoted_other_warnings_stay() -> None:
    quiet = ScheduledRunsFilter()
    logging.getLogger("apscheduler.scheduler").setLevel(logging.WARNING)
    skipped = record(
        logging.WARNING,
        'Execution of job "Agent.poll (trigger: interval[0:00:30], next run at: …)" skipped: '
        "maximum number of running instances reached (1)",
    )
    missed = record(logging.WARNING, 'Run time of job "Agent.drift" was missed by 0:00:03')
    other = record(logging.WARNING, "something else went wrong")
    assert not quiet.filter(skipped)
    assert (skipped.levelno, skipped.levelname) == (logging.DEBUG, "DEBUG")
    assert not quiet.filter(missed)
    assert quiet.filter(other)
    assert other.levelno == logging.WARNING
    logging.getLogger("apscheduler.scheduler").setLevel(logging.DEBUG)
    try:
        assert quiet.filter(record(logging.WARNING, "… was missed by 0:00:01"))  # --log-level debug
    finally:
        logging.getLogger("apscheduler.scheduler").setLevel(logging.NOTSET)
