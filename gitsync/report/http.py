"""The one HTTP door the forge providers use: JSON over urllib3, retries, rate limits.

Owns the connection pool, the ``User-Agent``, timeouts, and the retry policy: connection
errors, 5xx, 429 and rate-limited 403s are retried with exponential backoff, waiting what the
forge asks for instead when it says (``Retry-After``, or ``X-RateLimit-Reset``/``RateLimit-Reset``
with the remaining count at 0). Other 4xx are permanent. Headers are never logged: they carry
the token. A quick request (status reads, which a rollout or a promotion gate waits on) is
tried once with a short timeout: its callers carry on without the answer, or read again at
their next poll, rather than hold up a rollout for minutes while a forge hangs.

The loop is written out rather than handed to ``urllib3.Retry`` or tenacity: ``Retry`` honours
``Retry-After`` only on 413, 429 and 503 (not GitHub's rate-limited 403, nor the reset
headers), does not cap the wait the server asks for, and resends the same headers where each
attempt here asks for fresh credentials; tenacity would still need this module's wait and its
retry predicate, and the redacted reason and ``on_retry`` hook per attempt.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import urllib3

from gitsync import __version__
from gitsync.errors import ForgeError
from gitsync.source.redact import redact

log = logging.getLogger(__name__)

USER_AGENT = f"gitsync/{__version__}"
RETRY_STATUSES = frozenset({500, 502, 503, 504, 429})


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: Any  # decoded JSON, or None

    def header(self, name: str) -> str:
        """A response header by case-insensitive name ("" when absent)."""
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), "")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    backoff: float = 1.0  # first wait; doubles each attempt, with ±20% jitter
    max_wait: float = 300.0  # longest single wait, whatever a header asks for


def wait_requested(status: int, headers: Mapping[str, str], now: float) -> float | None:
    """Seconds the forge asked us to wait, or None when it did not say.

    GitHub: ``Retry-After`` (secondary limits) or ``x-ratelimit-remaining: 0`` with
    ``x-ratelimit-reset`` (epoch seconds). GitLab: ``Retry-After``, ``RateLimit-Reset``.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    retry_after = lowered.get("retry-after")
    if retry_after:
        if retry_after.strip().isdigit():
            return float(retry_after)
        try:
            when = email.utils.parsedate_to_datetime(retry_after).timestamp()
        except (TypeError, ValueError):
            return None
        return max(0.0, when - now)
    remaining = lowered.get("x-ratelimit-remaining", lowered.get("ratelimit-remaining"))
    reset = lowered.get("x-ratelimit-reset", lowered.get("ratelimit-reset"))
    if remaining == "0" and reset and reset.strip().isdigit():
        return max(0.0, float(reset) - now)
    return None


def is_rate_limited(status: int, headers: Mapping[str, str]) -> bool:
    lowered = {k.lower(): v for k, v in headers.items()}
    if status == 429:
        return True
    return status == 403 and (
        "retry-after" in lowered
        or lowered.get("x-ratelimit-remaining", lowered.get("ratelimit-remaining")) == "0"
    )


QUICK = RetryPolicy(attempts=1)
QUICK_TIMEOUT = 5.0  # seconds: the longest a quick request holds up its caller
MAX_PAGES = 10  # a listing read page by page stops here (1,000 commit contexts at 100 a page)


@dataclass
class JsonClient:
    """JSON requests against one forge API base URL."""

    base_url: str
    headers: Callable[[], Mapping[str, str]]  # called per request: tokens rotate
    timeout: float = 10.0
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    sleep: Callable[[float], None] = time.sleep
    on_retry: Callable[[str], None] = lambda reason: None
    pool: urllib3.PoolManager = field(
        default_factory=lambda: urllib3.PoolManager(num_pools=4, maxsize=4, retries=False)
    )

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        fields: Mapping[str, str] | None = None,
        ok: tuple[int, ...] = (200, 201),
        quick: bool = False,
    ) -> Response:
        """``quick``: one attempt, at most ``QUICK_TIMEOUT`` seconds."""
        url = self.base_url.rstrip("/") + path
        what = f"{method} {url}"
        policy = QUICK if quick else self.policy
        timeout = min(self.timeout, QUICK_TIMEOUT) if quick else self.timeout
        for attempt in range(1, policy.attempts + 1):
            headers, payload = self._prepared(body)
            try:
                raw = self.pool.request(
                    method,
                    url,
                    body=payload,
                    fields=fields,
                    headers=headers,
                    timeout=urllib3.Timeout(total=timeout),
                    redirect=False,
                )
            except urllib3.exceptions.HTTPError as exc:
                reason = f"{what}: {type(exc).__name__}: {exc}"
                delay = None
            else:
                if raw.status in ok:
                    return Response(raw.status, dict(raw.headers), _json(raw.data))
                reason = f"{what}: HTTP {raw.status}: {_excerpt(raw.data)}"
                if raw.status not in RETRY_STATUSES and not is_rate_limited(
                    raw.status, raw.headers
                ):
                    raise ForgeError(
                        redact(reason, _credentials(headers)),
                        status=raw.status,
                        body=_json(raw.data),
                    )
                delay = wait_requested(raw.status, raw.headers, time.time())
            # A forge may quote the credential back ("token gho_… is invalid"): never pass it on.
            reason = redact(reason, _credentials(headers))
            if attempt == policy.attempts:
                raise ForgeError(f"{reason} (gave up after {attempt} attempts)")
            wait = delay if delay is not None else self._backoff(attempt)
            wait = min(wait, policy.max_wait)
            log.warning("forge request failed, retrying in %.1fs: %s", wait, reason)
            self.on_retry(reason)
            self.sleep(wait)
        raise AssertionError("unreachable")

    def _prepared(self, body: Any) -> tuple[dict[str, str], bytes | None]:
        """One attempt's headers (fresh credentials) and its JSON payload, if any."""
        headers = {
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
            **self.headers(),
        }
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        return headers, payload

    def _backoff(self, attempt: int) -> float:
        return float(self.policy.backoff * 2 ** (attempt - 1) * random.uniform(0.8, 1.2))  # noqa: S311 - jitter, not crypto


def _credentials(headers: Mapping[str, str]) -> list[str]:
    """The secret parts of the auth headers: whole values, and the token after a scheme."""
    found = []
    for name, value in headers.items():
        if name.lower() in ("authorization", "private-token", "proxy-authorization"):
            found += [value, value.partition(" ")[2]]
    return [f for f in found if len(f) >= 8]


def _json(data: bytes) -> Any:
    if not data:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return None


def _excerpt(data: bytes) -> str:
    text = " ".join(data.decode("utf-8", "replace").split())
    return text[:300] or "(empty body)"
