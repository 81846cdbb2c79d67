"""Logging for the command line and the agent: text or one JSON object per line.

In JSON, a record's ``extra=`` fields are keys beside the message: the agent logs each progress
line with the :data:`gitsync.progress.Fields` its call site gave (environment, service,
revision, wave, action), webhook lines with the provider, event and delivery."""

from __future__ import annotations

import datetime
import json
import logging
import sys

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
# APScheduler warns each time a job's run is skipped because its previous run is still going
# ("maximum number of running instances reached") or ran late ("was missed by"). The agent's
# jobs never overlap with themselves and coalesce by design: a pass longer than the poll
# interval is expected, so these are DEBUG, not one WARNING per interval.
_BY_DESIGN = ("maximum number of running instances reached", "was missed by")


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
