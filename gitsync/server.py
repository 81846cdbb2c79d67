"""The agent's HTTP server: ``/healthz``, ``/readyz``, ``/metrics``, ``/webhooks`` and the
status page (``/``, ``/environments/…``, ``/api/v1/…``, ``/ui/…``: :mod:`gitsync.web.site`).

Owns HTTP only: request size limits, routing, and turning a webhook :class:`Verdict` into a
trigger and an answer. Deciding whether a webhook is authentic is :mod:`gitsync.webhooks`'.
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
import io
import json
import logging
import math
import socket
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gitsync.errors import GitsyncError
from gitsync.metrics import Metrics
from gitsync.relay import RELAYED, relay
from gitsync.source.auth import read_token
from gitsync.source.config import TokenAuth
from gitsync.web.site import StatusSite
from gitsync.webhooks import MAX_BODY_BYTES, Action, Verdict, event_label, judge

# An oversized webhook body is read and dropped up to this size so the sender sees the 413.
DRAIN_BYTES = 8 * MAX_BODY_BYTES
# Connections served at once (a thread each). Over it a connection is answered 503 at once:
# clients that open connections and send nothing (each holds its thread up to the 30 s read
# timeout, again and again) cannot grow the agent's threads without bound.
MAX_CONNECTIONS = 64
# Of those, one client address may hold at most this many: a single slow or hostile client
# cannot take every slot (an ingress controller, one address for many senders, fits in it).
MAX_PER_CLIENT = 16
# The whole request head (request line and headers), and then the whole body, must arrive
# within these: the socket timeout alone is per read, and a client sending a byte every 20 s
# would hold its slot for ever. An idle keep-alive connection is closed after HEAD_SECONDS.
HEAD_SECONDS = 10.0
BODY_SECONDS = 30.0
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 31\r\nConnection: close\r\n\r\ntoo many connections, try again\n"
)

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


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default accept backlog is 5: a burst of webhooks (or page loads) from a
    # dozen senders overflowed it, and the connections over it waited a SYN retransmit (1 s)
    # or were reset. The kernel caps this at net.core.somaxconn.
    request_queue_size = 128

    def __init__(
        self, *args: Any, max_connections: int = MAX_CONNECTIONS,
        per_client: int = MAX_PER_CLIENT, **kwargs: Any,
    ) -> None:  # fmt: skip
        super().__init__(*args, **kwargs)
        self.max_connections, self.per_client = max_connections, per_client
        self.slots = threading.BoundedSemaphore(max_connections)
        self.clients: dict[str, int] = {}  # open connections per client address
        self.clients_lock = threading.Lock()
        self.refused = 0

    def _take(self, address: str) -> str | None:
        """A slot for a connection from ``address``, or why there is none."""
        with self.clients_lock:
            if self.clients.get(address, 0) >= self.per_client:
                return f"{self.per_client} connections from {address}"
            if not self.slots.acquire(blocking=False):
                return f"{self.max_connections} connections at once"
            self.clients[address] = self.clients.get(address, 0) + 1
            return None

    def _give_back(self, address: str) -> None:
        with self.clients_lock:
            left = self.clients.get(address, 1) - 1
            if left > 0:
                self.clients[address] = left
            else:
                self.clients.pop(address, None)
            self.slots.release()

    def process_request(self, request: Any, client_address: Any) -> None:
        address = str(client_address[0]) if isinstance(client_address, tuple) else ""
        why = self._take(address)
        if why is not None:
            self.refused += 1
            if self.refused % 100 == 1:  # the first, then every hundredth: not a log flood
                log.warning("http: %s; refused %d so far with 503", why, self.refused)
            try:
                request.settimeout(1.0)
                request.sendall(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._give_back(address)  # the thread never started
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._give_back(str(client_address[0]) if isinstance(client_address, tuple) else "")

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that hangs up or stalls is not an error of ours (socketserver would print
        a traceback to stderr for each); anything else is logged with its traceback."""
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            log.debug("http client %s went away: %s", client_address, sys.exc_info()[1])
            return
        log.exception("http request from %s failed", client_address)


class _DeadlineReader(io.RawIOBase):
    """A socket read under one deadline for a whole request head (or body): each read may
    wait only for what is left of it, so trickling bytes does not extend it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.deadline = time.monotonic() + HEAD_SECONDS

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request deadline passed")
        self.sock.settimeout(left)
        return self.sock.recv_into(buffer)


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
        self.head_seconds, self.body_seconds = head_seconds, body_seconds
        self._deliveries: OrderedDict[str, None] = OrderedDict()
        self._rejections = Throttle(REJECTION_LOG_SECONDS)
        self._limiter = PollLimiter(*poll_limit)
        self._trailing: set[tuple[str, Action]] = set()  # (source, action) with a timer armed
        self._lock = threading.Lock()
        self.received: list[float] = []  # monotonic times of accepted push webhooks
        self.httpd = _HTTPServer((host, port), self._handler())
        self.probes = (
            None
            if probes is None
            else _HTTPServer(
                probes,
                self._handler(probes_only=True),
                max_connections=8,
                per_client=8,
            )
        )
        self.metrics_httpd = (
            None
            if metrics_listen is None
            else _HTTPServer(
                metrics_listen, self._handler(metrics_only=True), max_connections=8, per_client=8
            )
        )
        self._threads = [
            threading.Thread(
                target=lambda httpd=httpd: httpd.serve_forever(poll_interval=0.2),
                name=name,
                daemon=True,
            )
            for name, httpd in (
                ("gitsync-http", self.httpd),
                ("gitsync-probes", self.probes),
                ("gitsync-metrics", self.metrics_httpd),
            )
            if httpd is not None
        ]

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def probe_port(self) -> int | None:
        return None if self.probes is None else int(self.probes.server_address[1])

    @property
    def metrics_port(self) -> int | None:
        return None if self.metrics_httpd is None else int(self.metrics_httpd.server_address[1])

    def metrics_answer(self, authorization: str, *, own_port: bool) -> tuple[int, str]:
        """(status, why) for a GET /metrics: 200 ""; 404 on the main port when it has a port
        of its own; 401 without the bearer token; 500 when the token cannot be read."""
        if self.metrics_httpd is not None and not own_port:
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
        for thread in self._threads:
            thread.start()
        log.info("listening on %s:%d", *self.httpd.server_address[:2])
        if self.probes is not None:
            log.info("probes on %s:%d", *self.probes.server_address[:2])
        if self.metrics_httpd is not None:
            log.info("metrics on %s:%d", *self.metrics_httpd.server_address[:2])
        return self

    def stop(self) -> None:
        for httpd in (self.httpd, self.probes, self.metrics_httpd):
            if httpd is not None:
                httpd.shutdown()
                httpd.server_close()

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

    def _handler(
        self, *, probes_only: bool = False, metrics_only: bool = False
    ) -> type[BaseHTTPRequestHandler]:
        class Handler(_Handler):
            pass

        Handler.agent, Handler.probes_only, Handler.metrics_only = self, probes_only, metrics_only
        return Handler


class _Handler(BaseHTTPRequestHandler):
    """One connection to an :class:`AgentServer` port; :meth:`AgentServer._handler` binds
    the server and what the port serves."""

    protocol_version = "HTTP/1.1"
    server_version = "gitsync"
    timeout = 30  # seconds per socket read: a stalled client cannot hold a thread forever
    agent: ClassVar[AgentServer]
    probes_only: ClassVar[bool] = False  # only /healthz and /readyz
    metrics_only: ClassVar[bool] = False  # only /metrics

    def setup(self) -> None:
        super().setup()
        self.reader = _DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self.reader)

    def handle_one_request(self) -> None:
        # The next request's head, from now (an idle keep-alive connection included).
        self.reader.deadline = time.monotonic() + self.agent.head_seconds
        super().handle_one_request()

    def parse_request(self) -> bool:
        ok = super().parse_request()
        self.reader.deadline = time.monotonic() + self.agent.body_seconds  # head read
        self.connection.settimeout(self.timeout)  # for writing the answer
        return ok

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if self.probes_only and path not in ("/healthz", "/readyz"):
            self._json(404, {"error": "not found: this port serves /healthz and /readyz"})
        elif self.metrics_only and path != "/metrics":
            self._json(404, {"error": "not found: this port serves /metrics"})
        elif path == "/metrics":
            status, why = self.agent.metrics_answer(
                self.headers.get("Authorization", ""), own_port=self.metrics_only
            )
            if status == 200:
                body = generate_latest(self.agent.metrics.registry)
                self._send(200, body, CONTENT_TYPE_LATEST)
            else:
                challenge = {"WWW-Authenticate": 'Bearer realm="gitsync"'}
                self._json(status, {"error": why}, challenge if status == 401 else None)
        elif path == "/healthz":
            ok = self.agent.hooks.healthy()
            self._json(200 if ok else 503, {"status": "ok" if ok else "unhealthy"})
        elif path == "/readyz":
            ok = self.agent.hooks.ready()
            self._json(200 if ok else 503, {"status": "ready" if ok else "not ready"})
        elif self.agent.site is not None and self.agent.site.serves(path):
            headers = {k.lower(): v for k, v in self.headers.items()}
            answer = self.agent.site.handle(path, headers)
            self._send(answer.status, answer.body, answer.content_type, answer.headers)
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if self.probes_only or path not in ("/webhooks", "/webhook"):
            self._json(404, {"error": "not found"})
            return
        try:
            length = int(self.headers.get("Content-Length") or "")
        except ValueError:
            length = -1
        if length < 0:  # read(-1) would read until the client hangs up
            self.close_connection = True
            self._json(411, {"error": "Content-Length required (a whole number ≥ 0)"})
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        if length > MAX_BODY_BYTES:
            status, body = self.agent.webhook(
                headers, b"", length=length, source=self.client_address[0]
            )
            self._discard(length)
            self.close_connection = True
            self._json(status, body)
            return
        status, body = self.agent.webhook(
            headers, self.rfile.read(length), source=self.client_address[0]
        )
        # Relaying found no leader: the forge may redeliver after a leader is elected.
        retry = {503: "2", 429: str(body.get("retry_after", 1))}.get(status)
        self._json(status, body, {"Retry-After": retry} if retry else None)

    def _discard(self, length: int) -> None:
        """Read and drop an oversized body, up to DRAIN_BYTES, before answering 413.

        Closing a socket with unread data makes the kernel send a reset, and a client
        still writing its body then sees a broken pipe instead of the 413 (Go's
        net/http drains for the same reason). Beyond DRAIN_BYTES the body is left
        unread and the connection closed: refusing must stay cheaper than accepting.
        """
        left = min(length, DRAIN_BYTES)
        while left > 0:
            chunk = self.rfile.read(min(left, 64 << 10))
            if not chunk:
                return
            left -= len(chunk)

    def _json(self, status: int, body: object, headers: Mapping[str, str] | None = None) -> None:
        self._send(status, json.dumps(body).encode(), "application/json", headers)

    def _send(
        self,
        status: int,
        payload: bytes,
        content_type: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("http %s", format % args)
