"""Logging for the command line and the agent: key=value text or one JSON object per line."""

from __future__ import annotations

import datetime
import json
import logging
import re
import sys
from collections.abc import Collection

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
# APScheduler warns each time a job's run is skipped because its previous run is still going
# ("maximum number of running instances reached") or ran late ("was missed by"). The agent's
# jobs never overlap with themselves and coalesce by design: a pass longer than the poll
# interval is expected, so these are DEBUG, not one WARNING per interval.
_BY_DESIGN = ("maximum number of running instances reached", "was missed by")


# What a progress line names: "staging: wave 0: applied ray-staging/ranker at 0123456789ab".
_SERVICE = re.compile(r"(?<![\w./-])([a-z0-9][a-z0-9.-]*/[a-z0-9][a-z0-9.-]*)")
_REVISION = re.compile(r"(?<![0-9a-f])([0-9a-f]{12}|[0-9a-f]{40})(?![0-9a-f])")


def line_fields(
    line: str, environments: Collection[str], services: Collection[str], revision: str = ""
) -> dict[str, str]:
    """The structured fields of a progress line, as keys for JSON logs: ``environment`` (the
    line's ``name:`` prefix, when it is a known environment), ``service`` (the first known
    ``namespace/name`` it names) and ``revision`` (a commit it names; the full SHA when it is
    the pass's ``revision``). Only names the caller knows count: a path or a ratio that looks
    like one is not a field."""
    fields: dict[str, str] = {}
    head, sep, _ = line.partition(": ")
    if sep and head in environments:
        fields["environment"] = head
    service = next((m for m in _SERVICE.findall(line) if m in services), None)
    if service is not None:
        fields["service"] = service
    if match := _REVISION.search(line):
        short = match.group(1)
        fields["revision"] = revision if revision and revision.startswith(short) else short
    return fields


class ScheduledRunsFilter(logging.Filter):
    """Demotes APScheduler's skipped- and missed-run warnings to DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and any(
            text in record.getMessage() for text in _BY_DESIGN
        ):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).strftime(
                "%Y-%m-%dT%H:%M:%S.%fZ"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        document.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str, ensure_ascii=False)


def configure(fmt: str = "text", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("apscheduler", "urllib3", "kubernetes"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    handler.addFilter(ScheduledRunsFilter())
