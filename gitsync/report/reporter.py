"""Posting statuses without ever blocking or failing a rollout.

:class:`Reporter` queues each status and returns at once; one worker thread posts them in
order. Per (commit, context) only the newest queued status is kept (an older one not yet
posted is obsolete), an identical consecutive status is skipped (checked against what the
forge already shows the first time a commit is seen, so a restarted agent does not repeat
itself), and a failed post is retried with backoff, then logged and counted — and kept: it is
delivered again later (after ``redeliver`` seconds, doubling up to ``REDELIVER_LONGEST``)
until it is posted or a newer status for the same commit and context replaces it, so a forge
that is down for an hour still ends up showing the last status. Shutdown hands what is
still waiting back to its caller (the agent stores it for the next leader). A permanent
refusal (HTTP 400, 401, 403 without rate limiting, 404, 410, 422) is not kept: asking again
would be refused again, so it is logged once at ERROR, counted ``rejected`` and not
delivered again. Tokens never reach a log line: providers raise errors
built from URLs and status codes only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from gitsync.errors import GitsyncError, Permanent
from gitsync.metrics import Metrics
from gitsync.report.provider import Provider
from gitsync.report.status import CommitStatus

log = logging.getLogger(__name__)

REMEMBERED_REVISIONS = 64  # commits whose last statuses are kept for deduplication
REDELIVER_LONGEST = 300.0  # the longest wait between two deliveries of a failed status
ASKED_LIMIT = 1024  # (revision, context) pairs whose last requested status is remembered


@dataclass(frozen=True)
class _Pending:
    status: CommitStatus
    queued: float  # monotonic time of the event it reports
    due: float = 0.0  # monotonic time before which it is not delivered (a redelivery)
    rounds: int = 0  # deliveries that failed so far


class Reporter:
    def __init__(
        self,
        provider: Provider,
        metrics: Metrics | None = None,
        *,
        attempts: int = 3,
        backoff: float = 1.0,
        redeliver: float = 10.0,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.provider = provider
        self.metrics = metrics or Metrics()
        self.attempts, self.backoff, self.redeliver = attempts, backoff, redeliver
        self._queue: OrderedDict[tuple[str, str], _Pending] = OrderedDict()
        self._last: dict[tuple[str, str], CommitStatus] = {}
        self._seeded: OrderedDict[str, None] = OrderedDict()  # newest last, bounded
        # the last status this agent asked for per (revision, context), newest last, bounded
        self._asked: OrderedDict[tuple[str, str], CommitStatus] = OrderedDict()
        self._cond = threading.Condition()
        self._busy = False
        self._current: tuple[str, _Pending] | None = None  # the status being posted
        self._closed = threading.Event()
        self._sleep = sleep or self._closed.wait
        self._thread = threading.Thread(target=self._work, name="gitsync-reporter", daemon=True)
        self._thread.start()

    # -- the rollout's side: never blocks ----------------------------------------------------

    def post(self, revision: str, status: CommitStatus) -> None:
        with self._cond:
            key = (revision, status.context)
            if key in self._queue:
                self._count(self._queue[key].status, "dropped")
            self._queue[key] = _Pending(status, time.monotonic())
            self._asked[key] = status
            self._asked.move_to_end(key)
            while len(self._asked) > ASKED_LIMIT:
                self._asked.popitem(last=False)
            self._cond.notify_all()

    def asked(self, revision: str, context: str) -> CommitStatus | None:
        """The last status this agent posted (or queued) for ``context`` on ``revision``."""
        with self._cond:
            return self._asked.get((revision, context))

    def statuses(self, revision: str) -> Mapping[str, CommitStatus]:
        """What the forge shows on ``revision`` now (a read: may raise ForgeError)."""
        return self.provider.statuses(revision)

    def flush(self, timeout: float) -> bool:
        """Waits until everything queued is posted, or failed and waits for its redelivery;
        False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._busy or any(p.rounds == 0 for p in self._queue.values()):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout: float = 30.0) -> list[tuple[str, CommitStatus]]:
        """Posts what is queued within ``timeout`` seconds (a failed post waits for no
        redelivery), then stops the worker. Returns the statuses not known to be posted —
        queued, waiting for a redelivery, or in flight on a forge that has not answered — as
        (revision, status), oldest first, for the caller to keep (the agent stores them for
        the next leader); each is counted ``dropped`` here."""
        deadline = time.monotonic() + timeout
        flushed = self.flush(timeout)
        with self._cond:
            left = [(rev, p) for (rev, _), p in self._queue.items()]
            if self._current is not None and not flushed:
                left.insert(0, self._current)
            if left:
                log.warning("commit statuses not posted before shutdown: %d", len(left))
            for _, pending in left:
                self._count(pending.status, "dropped")
            self._queue.clear()
            self._closed.set()
            self._cond.notify_all()
        self._thread.join(timeout=max(0.0, min(5.0, deadline - time.monotonic())))
        return [(rev, p.status) for rev, p in sorted(left, key=lambda item: item[1].queued)]

    # -- the worker --------------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        """Statuses whose delivery failed, waiting to be delivered again."""
        with self._cond:
            return sum(1 for p in self._queue.values() if p.rounds)

    def _next(self) -> tuple[tuple[str, str], _Pending] | None:
        """The first queued status that is due, else None (the caller waits)."""
        now = time.monotonic()
        return next(((k, p) for k, p in self._queue.items() if p.due <= now), None)

    def _work(self) -> None:
        while True:
            with self._cond:
                while (found := self._next()) is None and not self._closed.is_set():
                    due = min((p.due for p in self._queue.values()), default=None)
                    self._cond.wait(None if due is None else max(0.01, due - time.monotonic()))
                if self._closed.is_set() or found is None:
                    return
                (revision, context), pending = found
                del self._queue[(revision, context)]
                self._busy = True
                self._current = (revision, pending)
            try:
                self._deliver(revision, pending)
            finally:
                with self._cond:
                    self._busy = False
                    self._current = None
                    self._cond.notify_all()

    def _deliver(self, revision: str, pending: _Pending) -> None:
        status, key = pending.status, (revision, pending.status.context)
        self._seed(revision)
        if self._last.get(key) == status:
            self._count(status, "skipped")
            return
        for attempt in range(1, self.attempts + 1):
            try:
                self.provider.post(revision, status)
            except GitsyncError as exc:
                if isinstance(rule := exc.retry, Permanent):
                    log.error(
                        "commit status %s on %s refused by %s with %s, not delivered "
                        "again (check the token, its scope and the repository): %s",
                        status.context,
                        revision[:12],
                        self.provider.name,
                        rule.answer,
                        exc,
                    )
                    self._count(status, "rejected")
                    return
                with self._cond:
                    newer = key in self._queue
                if newer or attempt == self.attempts or self._closed.is_set():
                    result = "dropped" if newer else "failed"
                    again = "" if newer else self._again(revision, pending)
                    log.warning(
                        "commit status %s on %s not posted (%s%s): %s",
                        status.context,
                        revision[:12],
                        result,
                        again,
                        exc,
                    )
                    self._count(status, result)
                    return
                self.metrics.status_retries.labels(self.provider.name).inc()
                self._sleep(self.backoff * 2 ** (attempt - 1))
                continue
            self._last[key] = status
            self._count(status, "posted")
            self.metrics.status_latency.labels(self.provider.name).observe(
                time.monotonic() - pending.queued
            )
            log.info(
                "status posted provider=%s revision=%s context=%s state=%s description=%r",
                self.provider.name,
                revision[:12],
                status.context,
                status.state,
                status.description,
            )
            return

    def _again(self, revision: str, pending: _Pending) -> str:
        """Queues a failed status for a later delivery, unless a newer one took its place."""
        wait = min(self.redeliver * 2**pending.rounds, REDELIVER_LONGEST)
        with self._cond:
            key = (revision, pending.status.context)
            if key in self._queue or self._closed.is_set():
                return ""
            self._queue[key] = replace(
                pending, due=time.monotonic() + wait, rounds=pending.rounds + 1
            )
            self._cond.notify_all()
        return f"; delivered again in {wait:.0f}s"

    def _seed(self, revision: str) -> None:
        """The first time a commit is seen, learn what the forge already shows on it."""
        if revision in self._seeded:
            return
        self._seeded[revision] = None
        while len(self._seeded) > REMEMBERED_REVISIONS:  # an agent runs for months
            old, _ = self._seeded.popitem(last=False)
            for key in [k for k in self._last if k[0] == old]:
                del self._last[key]
        try:
            shown = self.provider.statuses(revision)
        except GitsyncError as exc:
            log.debug("cannot read statuses of %s: %s", revision[:12], exc)
            return
        for ctx, status in shown.items():
            self._last.setdefault((revision, ctx), status)

    def _count(self, status: CommitStatus, result: str) -> None:
        self.metrics.status_posts.labels(self.provider.name, result, str(status.state)).inc()
