"""Delivering notifications (Slack, Teams, signed webhooks) without ever blocking or failing a
rollout.

:class:`Notifier` filters each :class:`~gitsync.notify.Notice` per target and queues it;
one thread per target posts its queue in order, so a receiver that hangs delays only its own
messages. Each queue is bounded (``queue_size``): when it is full the oldest message goes,
counted ``dropped``. A delivery is retried on connection errors, timeouts, 408, 429 and
5xx, with exponential backoff and jitter, waiting what the receiver asks for instead when it
says (``Retry-After``, capped); another 4xx is ``rejected`` at once (asking again would be
refused again). Every attempt has the target's timeout, connect to answer.

Secrets: the URL (a Slack or Teams webhook URL is itself a token) and the signing secret are
read from their file or variable at each attempt, so a rotated Secret is picked up, and
never reach a log line: messages name the target, never its URL, and what a receiver or the
HTTP library says is redacted of both. :meth:`Notifier.close` drains the queues until a
deadline (the agent's share of its shutdown grace period), then counts what is left
``dropped``.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import urllib3

from gitsync.config import NotificationTarget
from gitsync.metrics import Metrics
from gitsync.notify import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    LinkTemplates,
    Notice,
    message_for,
    sign,
    wanted,
    with_links,
)
from gitsync.report.http import USER_AGENT, wait_requested
from gitsync.source.config import TokenAuth
from gitsync.source.redact import redact

log = logging.getLogger(__name__)

QUEUE_SIZE = 256  # messages waiting per target; past it the oldest is dropped
ATTEMPTS = 5  # deliveries of one message before it is given up (counted failed)
BACKOFF = 1.0  # seconds before the second attempt; doubles, with ±20 % jitter
MAX_WAIT = 60.0  # the longest wait between two attempts, whatever Retry-After asks
RETRIED = frozenset({408, 429})  # and every 5xx


class Unreadable(Exception):
    """A target's URL or secret cannot be read (the message says from where, never what)."""


@dataclass(frozen=True)
class _Queued:
    notice: Notice
    delivery: str  # the delivery's id, the same on every attempt
    at: str  # when it happened, UTC ISO 8601


def read_secret(source: TokenAuth, what: str) -> str:
    """The value of ``source`` (a file or an environment variable), read now."""
    if source.token_file is not None:
        try:
            value = source.token_file.read_text().strip()
        except OSError as exc:
            raise Unreadable(
                f"cannot read the {what} from {source.origin}: {exc.strerror}"
            ) from None
    else:
        value = os.environ.get(source.token_env or "", "").strip()
    if not value:
        raise Unreadable(f"the {what} from {source.origin} is empty")
    return value


class _Channel:
    """One target: its queue, its thread, its deliveries."""

    def __init__(
        self,
        target: NotificationTarget,
        metrics: Metrics,
        pool: urllib3.PoolManager,
        *,
        queue_size: int,
        attempts: int,
        backoff: float,
        max_wait: float,
    ) -> None:
        self.target, self.metrics, self.pool = target, metrics, pool
        self.queue_size, self.attempts = queue_size, attempts
        self.backoff, self.max_wait = backoff, max_wait
        self._queue: deque[_Queued] = deque()
        self._cond = threading.Condition()
        self._busy = False
        self._closed = threading.Event()
        self._deadline: float | None = None  # set by close: nothing is tried past it
        self._thread = threading.Thread(
            target=self._work, name=f"gitsync-notify-{target.name}", daemon=True
        )
        self._thread.start()

    def put(self, item: _Queued) -> None:
        with self._cond:
            if self._closed.is_set():
                self._count("dropped")
                return
            if len(self._queue) >= self.queue_size:
                old = self._queue.popleft()
                self._count("dropped")
                log.warning(
                    "notification target %s: queue full (%d), dropped the oldest message "
                    "(%s, %s)",
                    self.target.name, self.queue_size, old.notice.event, old.notice.environment,
                )  # fmt: skip
            self._queue.append(item)
            self._cond.notify_all()

    def limit(self, deadline: float) -> None:
        """From now on no attempt, and no wait for one, goes past ``deadline``."""
        with self._cond:
            self._deadline = deadline
            self._cond.notify_all()

    def drain(self, deadline: float) -> bool:
        """Waits until everything queued is handled, until ``deadline``; True if it was."""
        with self._cond:
            while self._busy or self._queue:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def stop(self, join: float) -> int:
        """Stops the thread; what is still queued is dropped (and counted). Returns how many."""
        with self._cond:
            left = len(self._queue)
            for _ in range(left):
                self._count("dropped")
            self._queue.clear()
            self._closed.set()
            self._cond.notify_all()
        if left:
            log.warning(
                "notification target %s: %d message(s) not delivered before shutdown, dropped",
                self.target.name, left,
            )  # fmt: skip
        self._thread.join(timeout=join)
        return left

    # -- the thread ----------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed.is_set():
                    self._cond.wait()
                if self._closed.is_set():
                    return
                item = self._queue.popleft()
                self._busy = True
            try:
                self._deliver(item)
            except Exception:  # a bug here must not end the thread: later messages still go
                log.exception("notification target %s: delivery failed", self.target.name)
                self._count("failed")
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _deliver(self, item: _Queued) -> None:
        target, notice = self.target, item.notice
        what = f"{notice.event} ({notice.environment} {notice.revision[:12]})".replace(" )", ")")
        payload = message_for(target.type, notice, item.delivery, item.at)
        body = json.dumps(payload, ensure_ascii=False).encode()
        for attempt in range(1, self.attempts + 1):
            timeout = self._timeout()
            if timeout is None:
                self._give_up(what, "the agent stopped before it was delivered")
                return
            try:
                url, headers, secrets = self._request(item, body)
            except Unreadable as exc:
                log.error("notification %s to %s not sent: %s", what, target.name, exc)
                self._count("failed")
                return
            try:
                answer = self.pool.request(
                    "POST", url, body=body, headers=headers,
                    timeout=urllib3.Timeout(total=timeout), retries=False, redirect=False,
                )  # fmt: skip
            except urllib3.exceptions.HTTPError as exc:
                reason = redact(f"{type(exc).__name__}: {exc}", secrets)
                delay = None
            else:
                if 200 <= answer.status < 300:
                    log.info("notification %s delivered to %s", what, target.name)
                    self._count("delivered")
                    return
                reason = redact(f"HTTP {answer.status}: {_excerpt(answer.data)}", secrets)
                if answer.status < 500 and answer.status not in RETRIED:
                    log.error(
                        "notification %s refused by %s (%s), not sent again: check the "
                        "target's URL and the receiver",
                        what, target.name, reason,
                    )  # fmt: skip
                    self._count("rejected")
                    return
                delay = wait_requested(answer.status, answer.headers, time.time())
            if attempt == self.attempts:
                log.warning(
                    "notification %s to %s failed after %d attempts: %s",
                    what, target.name, attempt, reason,
                )  # fmt: skip
                self._count("failed")
                return
            wait = min(delay if delay is not None else self._backoff(attempt), self.max_wait)
            if self._deadline is not None and time.monotonic() + wait >= self._deadline:
                self._give_up(what, f"the agent stops before the next attempt: {reason}")
                return
            log.warning(
                "notification %s to %s failed, retrying in %.1fs: %s",
                what, target.name, wait, reason,
            )  # fmt: skip
            if self._closed.wait(wait):
                self._give_up(what, "the agent stopped before it was delivered")
                return

    def _request(self, item: _Queued, body: bytes) -> tuple[str, dict[str, str], list[str]]:
        """The URL, this attempt's headers (a fresh timestamp and signature) and the values
        to redact from whatever is logged about it."""
        target = self.target
        url = read_secret(target.url_from, "URL") if target.url_from is not None else target.url
        parts = urlsplit(url)
        secrets = [url, parts.path + (f"?{parts.query}" if parts.query else ""), parts.query]
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if target.type == "webhook":
            headers[EVENT_HEADER] = str(item.notice.event)
            headers[DELIVERY_HEADER] = item.delivery
            if target.secret is not None:
                secret = read_secret(target.secret, "signing secret")
                secrets.append(secret)
                timestamp = int(time.time())
                headers[TIMESTAMP_HEADER] = str(timestamp)
                headers[SIGNATURE_HEADER] = sign(secret.encode(), timestamp, body)
        return url, headers, [s for s in secrets if len(s) >= 4 and s != "/"]

    def _timeout(self) -> float | None:
        """This attempt's timeout: the target's, cut to the deadline; None past it."""
        if self._closed.is_set():
            return None
        if self._deadline is None:
            return self.target.timeout
        left = self._deadline - time.monotonic()
        return min(self.target.timeout, left) if left > 0.05 else None

    def _backoff(self, attempt: int) -> float:
        return float(self.backoff * 2 ** (attempt - 1) * random.uniform(0.8, 1.2))  # noqa: S311 - jitter, not crypto

    def _give_up(self, what: str, why: str) -> None:
        log.warning("notification %s to %s dropped: %s", what, self.target.name, why)
        self._count("dropped")

    def _count(self, result: str) -> None:
        self.metrics.notifications.labels(self.target.name, result).inc()


class Notifier:
    """The agent's notifications: :meth:`notify` returns at once, whatever the receivers do."""

    def __init__(
        self,
        targets: Sequence[NotificationTarget],
        metrics: Metrics | None = None,
        links: LinkTemplates | None = None,
        *,
        queue_size: int = QUEUE_SIZE,
        attempts: int = ATTEMPTS,
        backoff: float = BACKOFF,
        max_wait: float = MAX_WAIT,
    ) -> None:
        self.metrics = metrics or Metrics()
        self.links = links or LinkTemplates()
        self.targets = tuple(targets)
        # One connection per target at most (each has one thread), even when they share a host.
        size = max(1, len(targets))
        pool = urllib3.PoolManager(num_pools=max(4, size), maxsize=size, retries=False)
        self._channels = [
            _Channel(
                target,
                self.metrics,
                pool,
                queue_size=queue_size,
                attempts=attempts,
                backoff=backoff,
                max_wait=max_wait,
            )
            for target in targets
        ]

    def notify(self, notice: Notice) -> None:
        """Queues ``notice`` for each target whose filters want it."""
        item = _Queued(
            with_links(notice, self.links),
            uuid.uuid4().hex,
            datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        for channel in self._channels:
            target = channel.target
            if wanted(notice, target.environments, target.events):
                channel.put(item)

    def close(self, timeout: float) -> int:
        """Delivers what is queued within ``timeout`` seconds (no attempt or wait goes past
        it), then stops. Returns how many messages were left undelivered (each counted
        ``dropped``)."""
        deadline = time.monotonic() + timeout
        for channel in self._channels:
            channel.limit(deadline)
        for channel in self._channels:
            channel.drain(deadline)
        return sum(channel.stop(join=0.5) for channel in self._channels)


def _excerpt(data: bytes) -> str:
    text = " ".join(data.decode("utf-8", "replace").split())
    return text[:200] or "(empty body)"
