"""The agent's log setup: APScheduler's by-design skipped-run warnings do not flood it, and
JSON lines carry what a progress line is about as keys."""

from __future__ import annotations

import json
import logging

from gitsync.logs import JsonFormatter, ScheduledRunsFilter
from gitsync.model import Action, ServiceKey
from gitsync.progress import about


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


def test_a_lines_fields_are_those_its_call_site_gives() -> None:
    key = ServiceKey("ray-staging", "ranker")
    assert about("staging", key, SHA, wave=0, action=Action.SERVE_UPDATE) == {
        "environment": "staging",
        "service": "ray-staging/ranker",
        "revision": SHA,
        "wave": 0,
        "action": "serve-update",
    }
    assert about("staging") == {"environment": "staging"}


def test_json_lines_carry_the_fields_as_keys() -> None:
    line = f"staging: wave 0: applied ray-staging/ranker at {SHA[:12]}"
    fields = about("staging", ServiceKey("ray-staging", "ranker"), SHA, wave=0, action="create")
    entry = logging.makeLogRecord({"name": "gitsync.agent", "levelno": logging.INFO,
                                   "levelname": "INFO", "msg": "%s", "args": (line,), **fields})  # fmt: skip
    document = json.loads(JsonFormatter().format(entry))
    assert document["message"] == line
    assert document["wave"] == 0  # a number stays a number
    assert (document["environment"], document["service"], document["revision"]) == (
        "staging",
        "ray-staging/ranker",
        SHA,
    )
    assert document["action"] == "create"
