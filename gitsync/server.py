"""The agent's HTTP server: ``/healthz``, ``/readyz``, ``/metrics``, ``/webhooks`` and the
status page (``/``, ``/environments/…``, ``/api/v1/…``, ``/ui/…``: :mod:`gitsync.web.site`),
as Starlette apps, one per port, served by :mod:`gitsync.serving` (uvicorn, with the
connection, deadline and size limits).

Owns the routes, and turning a webhook :class:`Verdict` into a trigger and an answer.
Deciding whether a webhook is authentic is :mod:`gitsync.webhooks`'.
Delivery IDs already seen are answered once and ignored after. The ID is a header the
signature does not cover, so a captured request replayed with a new ID passes: the polls and
preview passes webhooks trigger are therefore rate-limited per source address (a token
bucket each, :class:`PollLimiter`); one over the limit is answered 429 and, on the leader,
turned into a single trailing trigger when the bucket refills, so no push is lost.
A replica that does not lead relays verified pushes and pull-request events to the leader
(:mod:`gitsync.relay`) and answers with its answer, or 503 with Retry-After.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gitsync.errors import GitsyncError
from gitsync.metrics import Metrics
from gitsync.relay import RELAYED, relay
from gitsync.serving import (
    BODY_SECONDS,
    GRACE_SECONDS,
    HEAD_SECONDS,
    MAX_CONNECTIONS,
    MAX_PER_CLIENT,
    Limits,
    Listener,
)
from gitsync.source.auth import read_token
from gitsync.source.config import TokenAuth
from gitsync.web.site import StatusSite
from gitsync.webhooks import MAX_BODY_BYTES, Action, Verdict, event_label, judge

__all__ = ["BODY_SECONDS", "HEAD_SECONDS", "MAX_CONNECTIONS", "MAX_PER_CLIENT", "AgentServer"]

# An oversized webhook body is read and dropped up to this size so the sender sees the 413.
DRAIN_BYTES = 8 * MAX_BODY_BYTES
# The probe and metrics listeners: few clients (the kubelet, Prometheus), few connections.
SIDE_CONNECTIONS = 8

log = logging.getLogger(__name__)

REMEMBERED_DELIVERIES = 1024
REJECTION_LOG_SECONDS = 10.0


def printable(text: str, limit: int = 80) -> str:
    """A header value fit for a log line: no control characters (no forged lines), short."""
    clean = "".join(c if c.isprintable() else "?" for c in text[: limit + 1])
    return clean if len(clean) <= limit else clean[:limit] + "…"


class Throttle:
    """At most one log line per key per ``seconds``; the next one says how many it hid.
    Rejected webhooks are counted in metrics one by one; a flood of forged ones must not
    flood the log too."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._last: dict[object, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def allow(self, key: object, now: float) -> int | None:
        """None: stay quiet. Else: log, with this many similar events hidden since the last."""
        with self._lock:
            last, hidden = self._last.get(key, (float("-inf"), 0))
            if now - last < self.seconds:
                self._last[key] = (last, hidden + 1)
                return None
            if len(self._last) > 1024:  # keys are few (provider and status); stay bounded anyway
                self._last.clear()
            self._last[key] = (now, 0)
            return hidden


# Webhook-triggered polls per source address: a burst of POLL_BURST, then one per
# POLL_SECONDS. A forge sends one delivery per push; more is a replay or a flood, and each
# trigger costs the Git server an ls-remote.
POLL_BURST = 5
POLL_SECONDS = 2.0


class PollLimiter:
    """A token bucket per source: ``burst`` triggers at once, refilled one per ``seconds``.
    Pure but for its lock: the time is passed in. At most ``sources`` buckets are kept (the
    least recently used is dropped: a new source starts with a full bucket)."""

    def __init__(self, burst: int, seconds: float, sources: int = 1024) -> None:
        self.burst, self.seconds, self.sources = burst, seconds, sources
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, source: str, now: float) -> float:
        """0.0: allowed (a token taken). Else: the seconds until the next token."""
        with self._lock:
            tokens, since = self._buckets.pop(source, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - since) / self.seconds)
            wait = 0.0 if tokens >= 1.0 else (1.0 - tokens) * self.seconds
            self._buckets[source] = (tokens - 1.0 if wait == 0.0 else tokens, now)
            while len(self._buckets) > self.sources:
                self._buckets.popitem(last=False)
            return wait


@dataclass
class Hooks:
    """What the server needs from the agent."""

    secret: Callable[[], bytes | None]  # read per request: a rotated Secret is picked up
    repository_url: str
    branch: str
    poll: Callable[[], None]
    previews: Callable[[], None]
    healthy: Callable[[], bool]
    ready: Callable[[], bool]
    # None while this replica leads (it handles webhooks itself); else the base URL the
    # leader published, "" when no leader is known.
    leader_url: Callable[[], str | None] = lambda: None
    # Why the leader URL must not be relayed to (None: it may): webhooks.relayNetworks, else
    # the Lease holder's own pod (gitsync.kube.peers).
    relay_refused: Callable[[str], str | None] = lambda url: None


class AgentServer:
    def __init__(
        self,
        host: str,
        port: int,
        hooks: Hooks,
        metrics: Metrics,
        site: StatusSite | None = None,
        *,
        probes: tuple[str, int] | None = None,
        head_seconds: float = HEAD_SECONDS,
        body_seconds: float = BODY_SECONDS,
        poll_limit: tuple[int, float] = (POLL_BURST, POLL_SECONDS),
        metrics_listen: tuple[str, int] | None = None,
        metrics_token: TokenAuth | None = None,
    ) -> None:
        """``probes``: ``/healthz`` and ``/readyz`` also on a listener of their own (host, port;
        port 0: any free one), which webhook and page traffic cannot fill: the kubelet's
        probes answer while the main port is flooded. ``metrics_listen``: ``/metrics`` only
        on a listener of its own; ``metrics_token``: ``/metrics`` needs this bearer token."""
        self.hooks, self.metrics, self.site = hooks, metrics, site
        self.metrics_token = metrics_token
        self._deliveries: OrderedDict[str, None] = OrderedDict()
        self._rejections = Throttle(REJECTION_LOG_SECONDS)
        self._limiter = PollLimiter(*poll_limit)
        self._trailing: set[tuple[str, Action]] = set()  # (source, action) with a timer armed
        self._lock = threading.Lock()
        self.received: list[float] = []  # monotonic times of accepted push webhooks
        limits = Limits(
            head_seconds=head_seconds,
            body_seconds=body_seconds,
            max_body_bytes=MAX_BODY_BYTES,
            drain_bytes=DRAIN_BYTES,
        )
        side = replace(limits, max_connections=SIDE_CONNECTIONS, per_client=SIDE_CONNECTIONS)
        # Each bound now (an address in use fails here, and frees those bound before it),
        # served from start().
        self.listener = Listener("gitsync-http", host, port, self._app(), limits)
        self.probes: Listener | None = None
        self.metrics_listener: Listener | None = None
        try:
            if probes is not None:
                self.probes = Listener("gitsync-probes", *probes, self._probes_app(), side)
            if metrics_listen is not None:
                self.metrics_listener = Listener(
                    "gitsync-metrics", *metrics_listen, self._metrics_app(), side
                )
        except OSError:
            self.stop(0)
            raise

    @property
    def _listeners(self) -> list[Listener]:
        found = (self.listener, self.probes, self.metrics_listener)
        return [listener for listener in found if listener is not None]

    @property
    def port(self) -> int:
        return self.listener.port

    @property
    def probe_port(self) -> int | None:
        return None if self.probes is None else self.probes.port

    @property
    def metrics_port(self) -> int | None:
        return None if self.metrics_listener is None else self.metrics_listener.port

    def metrics_answer(self, authorization: str, *, own_port: bool) -> tuple[int, str]:
        """(status, why) for a GET /metrics: 200 ""; 404 on the main port when it has a port
        of its own; 401 without the bearer token; 500 when the token cannot be read."""
        if self.metrics_listener is not None and not own_port:
            return 404, "not found: /metrics is served on metrics.listen"
        if self.metrics_token is None:
            return 200, ""
        try:
            expected = read_token(self.metrics_token)
        except GitsyncError as exc:
            log.error("/metrics auth: cannot read the token: %s", type(exc).__name__)
            return 500, "the metrics token cannot be read (metrics.auth)"
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), expected.encode()
        ):
            return 200, ""
        return 401, "authentication required"

    def start(self) -> AgentServer:
        for listener in self._listeners:
            listener.start()
        log.info("listening on %s:%d", *self.listener.address)
        if self.probes is not None:
            log.info("probes on %s:%d", *self.probes.address)
        if self.metrics_listener is not None:
            log.info("metrics on %s:%d", *self.metrics_listener.address)
        return self

    def stop(self, timeout: float = GRACE_SECONDS) -> None:
        """Stops accepting and lets requests in flight finish within ``timeout`` seconds."""
        by = time.monotonic() + timeout
        for listener in self._listeners:
            listener.server.should_exit = True
        for listener in self._listeners:
            listener.stop(by)

    def _seen(self, delivery: str) -> bool:
        if not delivery:
            return False
        with self._lock:
            if delivery in self._deliveries:
                return True
            self._deliveries[delivery] = None
            while len(self._deliveries) > REMEMBERED_DELIVERIES:
                self._deliveries.popitem(last=False)
        return False

    def _trail(self, source: str, action: Action, wait: float) -> None:
        """One trigger of ``action`` once ``source``'s bucket has refilled, however many
        requests were limited meanwhile: a push limited now is still polled."""
        key = (source, action)
        with self._lock:
            if key in self._trailing:
                return
            self._trailing.add(key)

        def fire() -> None:
            with self._lock:
                self._trailing.discard(key)
            (self.hooks.poll if action is Action.POLL else self.hooks.previews)()

        timer = threading.Timer(wait, fire)
        timer.daemon = True
        timer.start()

    def webhook(
        self,
        headers: dict[str, str],
        body: bytes,
        *,
        length: int | None = None,
        source: str = "",
    ) -> tuple[int, dict[str, object]]:
        """``source``: the client address the request came from (its rate limit's key)."""
        secret = self.hooks.secret()
        if secret is None:
            return 404, {"error": "webhooks are not configured (webhooks.secretFile)"}
        verdict = judge(
            headers, body, secret, self.hooks.repository_url, self.hooks.branch, length=length,
            now=time.time(),
        )  # fmt: skip
        if verdict.status >= 400:
            self._log_rejected(verdict)
            return self._answered(verdict, f"rejected-{verdict.status}")
        if verdict.action is Action.IGNORE:
            return self._answered(verdict, str(verdict.action))
        if (leader := self.hooks.leader_url()) is not None:
            return self._relayed(verdict, leader, headers, body, secret, source)
        if self._seen(verdict.delivery):
            return self._answered(verdict, "duplicate")
        if wait := self._limiter.take(source, time.monotonic()):
            return self._limited(verdict, source, wait, leading=True)
        if verdict.action is Action.POLL:
            self.received.append(time.monotonic())
            self.hooks.poll()
        elif verdict.action is Action.PREVIEWS:
            self.hooks.previews()
        return self._answered(verdict, str(verdict.action))

    def _log_rejected(self, verdict: Verdict) -> None:
        """A warning for a rejected webhook, throttled per provider and status."""
        similar = self._rejections.allow((verdict.provider, verdict.status), time.monotonic())
        if similar is not None:
            log.warning(
                "webhook rejected provider=%s event=%s status=%d reason=%s%s",
                verdict.provider, printable(verdict.event), verdict.status, verdict.reason,
                f" (+{similar} like it in the last {REJECTION_LOG_SECONDS:.0f} s)"
                if similar else "",
            )  # fmt: skip

    def _answered(self, verdict: Verdict, result: str) -> tuple[int, dict[str, object]]:
        """Count and log a webhook this replica answered itself, and its answer."""
        event, delivery = printable(verdict.event), printable(verdict.delivery)
        self.metrics.webhooks.labels(verdict.provider, event_label(verdict.event), result).inc()
        log.log(
            logging.DEBUG if verdict.status >= 400 else logging.INFO,
            "webhook provider=%s event=%s delivery=%s result=%s reason=%s",
            verdict.provider, event, delivery, result, printable(verdict.reason, 200),
            extra={"provider": verdict.provider, "event": event, "delivery": delivery,
                   "result": result},
        )  # fmt: skip
        return verdict.status, {"result": result, "reason": verdict.reason}

    def _relayed(
        self,
        verdict: Verdict,
        leader: str,
        headers: dict[str, str],
        body: bytes,
        secret: bytes,
        source: str,
    ) -> tuple[int, dict[str, object]]:
        """A trigger this standby received: rate-limited, then relayed to the leader."""
        if wait := self._limiter.take(source, time.monotonic()):
            return self._limited(verdict, source, wait, leading=False)
        status, answer = self._relay(leader, headers, body, secret)
        result = str(answer["result"])
        event, delivery = printable(verdict.event), printable(verdict.delivery)
        self.metrics.webhooks.labels(verdict.provider, event_label(verdict.event), result).inc()
        log.info(
            "webhook provider=%s event=%s delivery=%s result=%s status=%d",
            verdict.provider, event, delivery, result, status,
            extra={"provider": verdict.provider, "event": event, "delivery": delivery,
                   "result": result},
        )  # fmt: skip
        return status, answer

    def _limited(
        self, verdict: Verdict, source: str, wait: float, *, leading: bool
    ) -> tuple[int, dict[str, object]]:
        """429 for a trigger over ``source``'s rate; the leader still polls once afterwards
        (a standby does not relay it: the leader's next poll picks the push up)."""
        if leading:
            self._trail(source, verdict.action, wait)
        result = "rate-limited"
        self.metrics.webhooks.labels(verdict.provider, event_label(verdict.event), result).inc()
        similar = self._rejections.allow(("rate-limited", source), time.monotonic())
        if similar is not None:
            log.warning(
                "webhook rate-limited provider=%s event=%s delivery=%s source=%s%s",
                verdict.provider, printable(verdict.event), printable(verdict.delivery),
                printable(source),
                f" (+{similar} like it in the last {REJECTION_LOG_SECONDS:.0f} s)"
                if similar else "",
            )  # fmt: skip
        then = "it runs once when the limit allows" if leading else "the next poll picks it up"
        reason = (
            f"over {self._limiter.burst} triggers from {source or 'one source'}, then one per "
            f"{self._limiter.seconds:g} s; {then}"
        )
        return 429, {"result": result, "reason": reason, "retry_after": max(1, math.ceil(wait))}

    def _relay(
        self, leader: str, headers: dict[str, str], body: bytes, secret: bytes
    ) -> tuple[int, dict[str, object]]:
        """The leader's answer to a verified webhook this standby received; 503 (the sender
        retries, or the next poll picks the push up) when there is none."""
        if not leader:
            reason = "this replica does not lead and no leader is known"
        elif RELAYED in headers:
            reason = "relayed here, but this replica does not lead either"
        elif refused := self.hooks.relay_refused(leader):
            reason = refused
            log.warning("webhook not relayed: %s", printable(refused, 300))
        elif (answer := relay(leader, headers, body, secret, now=time.time())) is not None:
            status, payload = answer
            return status, {**payload, "result": "relayed", "leader": payload.get("result")}
        else:
            reason = f"the leader at {leader} did not answer"
        return 503, {"result": "relay-failed", "reason": reason}

    # -- HTTP ----------------------------------------------------------------------------------

    def _app(self) -> Starlette:
        """The main port: webhooks, probes, /metrics, the status page."""
        routes: list[BaseRoute] = [
            Route("/healthz", self._healthz, methods=["GET"]),
            Route("/readyz", self._readyz, methods=["GET"]),
            Route("/metrics", self._metrics, methods=["GET"]),
            *(Route(path, self._webhook, methods=["POST"]) for path in WEBHOOK_PATHS),
        ]
        if self.site is not None:
            routes += [Route(path, self._page, methods=["GET"]) for path in SITE_PATHS]
        return _starlette(routes, "not found")

    def _probes_app(self) -> Starlette:
        """The probes' port: /healthz and /readyz only."""
        routes: list[BaseRoute] = [
            Route("/healthz", self._healthz, methods=["GET"]),
            Route("/readyz", self._readyz, methods=["GET"]),
        ]
        return _starlette(routes, "not found: this port serves /healthz and /readyz")

    def _metrics_app(self) -> Starlette:
        """metrics.listen's port: /metrics only."""
        routes: list[BaseRoute] = [Route("/metrics", self._own_metrics, methods=["GET"])]
        return _starlette(routes, "not found: this port serves /metrics")

    async def _healthz(self, request: Request) -> Response:
        ok = self.hooks.healthy()  # cheap, never blocks: answered on the event loop
        return _json(200 if ok else 503, {"status": "ok" if ok else "unhealthy"})

    async def _readyz(self, request: Request) -> Response:
        ok = self.hooks.ready()
        return _json(200 if ok else 503, {"status": "ready" if ok else "not ready"})

    def _metrics(self, request: Request, *, own_port: bool = False) -> Response:
        status, why = self.metrics_answer(
            request.headers.get("authorization", ""), own_port=own_port
        )
        if status == 200:
            body = generate_latest(self.metrics.registry)
            return Response(body, 200, media_type=CONTENT_TYPE_LATEST)
        challenge = {"WWW-Authenticate": 'Bearer realm="gitsync"'}
        return _json(status, {"error": why}, challenge if status == 401 else None)

    def _own_metrics(self, request: Request) -> Response:
        return self._metrics(request, own_port=True)

    def _page(self, request: Request) -> Response:
        """A status page GET, as the client wrote the path (percent-escapes kept: an
        environment's name is unquoted once, by the site)."""
        assert self.site is not None
        path = request.scope.get("raw_path", request.url.path.encode()).decode("latin-1")
        answer = self.site.handle(path, dict(request.headers.items()))
        return Response(answer.body, answer.status, dict(answer.headers), answer.content_type)

    async def _webhook(self, request: Request) -> Response:
        """POST /webhooks: the body is read only when its declared size is within the limit;
        a larger one is judged from its headers (413), its rest dropped (serving.BodyLimit)."""
        try:
            length = int(request.headers.get("content-length") or "")
        except ValueError:
            length = -1
        if length < 0:  # chunked: h11 answers a malformed Content-Length itself (411)
            return _json(411, {"error": "Content-Length required (a whole number ≥ 0)"},
                         {"Connection": "close"})  # fmt: skip
        headers = dict(request.headers.items())
        source = request.client.host if request.client else ""
        if length > MAX_BODY_BYTES:
            status, answer = await run_in_threadpool(
                self.webhook, headers, b"", length=length, source=source
            )
            return _json(status, answer, {"Connection": "close"})
        try:
            body = await request.body()
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is left to read it
        status, answer = await run_in_threadpool(self.webhook, headers, body, source=source)
        # Relaying found no leader: the forge may redeliver after a leader is elected.
        retry = {503: "2", 429: str(answer.get("retry_after", 1))}.get(status)
        return _json(status, answer, {"Retry-After": retry} if retry else None)


WEBHOOK_PATHS = ("/webhooks", "/webhooks/", "/webhook", "/webhook/")
# The status page's paths (gitsync.web.site routes within them).
SITE_PATHS = ("/", "/environments/{rest:path}", "/api/v1/{rest:path}", "/ui/{rest:path}")


def _json(status: int, body: object, headers: Mapping[str, str] | None = None) -> Response:
    return Response(json.dumps(body).encode(), status, dict(headers or {}), "application/json")


def _starlette(routes: list[BaseRoute], not_found: str) -> Starlette:
    """An app of ``routes``; any other path is a JSON 404 saying ``not found``, a path served
    with another method a JSON 405 with ``Allow``."""

    async def refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 405:
            return _json(405, {"error": "method not allowed"}, exc.headers)
        return _json(exc.status_code, {"error": not_found if exc.status_code == 404 else
                                       str(exc.detail)})  # fmt: skip

    app = Starlette(routes=routes, exception_handlers={HTTPException: refused})
    app.router.redirect_slashes = False  # /webhooks/ is served as it is, never redirected
    return app
