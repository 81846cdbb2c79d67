"""The agent's log setup: APScheduler's by-design skipped-run warnings do not flood it."""

from __future__ import annotations

import json
import logging

import pytest

from gitsync.logs import JsonFormatter, ScheduledRunsFilter, line_fields


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


SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            f"staging: wave 0: applied ray-staging/ranker (serve-update) at {SHA[:12]}",
            {"environment": "staging", "service": "ray-staging/ranker", "revision": SHA},
        ),
        (
            "staging: ray-staging/ranker Healthy: all apps RUNNING (3s)",
            {"environment": "staging", "service": "ray-staging/ranker"},
        ),
        (
            f"production: {'fedcba987654'} succeeded: 3 services",
            {"environment": "production", "revision": "fedcba987654"},
        ),
        ("revision 0123456789ab: environments staging, production", {"revision": SHA}),
        # Unknown names are not fields: another environment, a path, a service not planned.
        ("canary: applied ray-staging/other from environments/staging", {}),
    ],
)
def test_progress_lines_yield_the_fields_they_name(line: str, expected: dict[str, str]) -> None:
    fields = line_fields(line, {"staging", "production"}, {"ray-staging/ranker"}, SHA)
    assert fields == expected


def test_json_lines_carry_the_fields_as_keys() -> None:
    line = f"staging: wave 0: applied ray-staging/ranker at {SHA[:12]}"
    fields = line_fields(line, {"staging"}, {"ray-staging/ranker"}, SHA)
    entry = logging.makeLogRecord({"name": "gitsync.agent", "levelno": logging.INFO,
                                   "levelname": "INFO", "msg": "%s", "args": (line,), **fields})  # fmt: skip
    document = json.loads(JsonFormatter().format(entry))
    assert document["message"] == line
    assert (document["environment"], document["service"], document["revision"]) == (
        "staging",
        "ray-staging/ranker",
        SHA,
    )
