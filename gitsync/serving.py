"""The agent's HTTP listeners: an ASGI app served by uvicorn on an event loop of its own, in a
thread beside the agent's, with the limits an internet-facing port needs.

Owns connections and bytes, not routes: how many connections are served at once and from one
client address (over either, a 503 with ``Retry-After`` at once, before any byte is read); how
long a request's head, then its body, may take to arrive in whole (a deadline each, so a client
trickling a byte at a time cannot hold a connection); how large a head (h11's buffer) and a
body (:class:`BodyLimit`, counting the stream) may be; a malformed head answered with the
status it deserves (411 for a bad ``Content-Length``, 431 for a head too large) instead of a
bare 400; and stopping within a grace period. uvicorn and h11 parse HTTP and run the
keep-alive; :mod:`gitsync.server` routes. uvicorn never installs signal handlers here (it does
so only on the main thread): SIGTERM stays the agent's (:func:`gitsync.cli.run_agent`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("gitsync.server")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

# Connections served at once. Over it a connection is answered 503 at once: clients that open
# connections and send nothing cannot grow what the agent holds without bound.
MAX_CONNECTIONS = 64
# Of those, one client address may hold at most this many: a single slow or hostile client
# cannot take every slot (an ingress controller, one address for many senders, fits in it).
MAX_PER_CLIENT = 16
# The whole request head (request line and headers), and then the whole body, must arrive
# within these: a client sending a byte every few seconds would otherwise hold its connection
# for ever. An idle keep-alive connection is closed after HEAD_SECONDS.
HEAD_SECONDS = 10.0
BODY_SECONDS = 30.0
# A request head (request line and headers) larger than this is answered 431 (h11's buffer).
MAX_HEAD_BYTES = 64 << 10
# More header lines than this is answered 431 (http.server's limit, which webhooks fit in).
MAX_HEADERS = 100
# Stopping: requests in flight get this long to finish (at most: `gitsync run` gives them what
# is left of its grace period), then are dropped.
GRACE_SECONDS = 5.0
# The listener's socket queue for connections not yet accepted: a burst of webhooks (or page
# loads) from a dozen senders fits. The kernel caps it at net.core.somaxconn.
BACKLOG = 128
# A refused connection is closed this long after its 503 at the latest (sooner when the
# client hangs up): closing at once, with its request unread, would reset it, and the client
# could lose the 503 it was sent.
REFUSED_LINGER_SECONDS = 1.0

BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 31\r\nConnection: close\r\n\r\ntoo many connections, try again\n"
)


@dataclass(frozen=True)
class Limits:
    """One listener's limits (the defaults are the main port's)."""

    max_connections: int = MAX_CONNECTIONS
    per_client: int = MAX_PER_CLIENT
    head_seconds: float = HEAD_SECONDS
    body_seconds: float = BODY_SECONDS
    max_head_bytes: int = MAX_HEAD_BYTES
    max_headers: int = MAX_HEADERS
    max_body_bytes: int = 1 << 20
    drain_bytes: int = 8 << 20  # an oversized body read and dropped, so its sender sees the 413
    grace_seconds: float = GRACE_SECONDS


class Gate:
    """Connection slots: at most ``max_connections`` at once, ``per_client`` of them per
    client address. Taken and given back on the listener's event loop only."""

    def __init__(self, max_connections: int, per_client: int) -> None:
        self.max_connections, self.per_client = max_connections, per_client
        self.open = 0
        self.clients: dict[str, int] = {}  # open connections per client address
        self.refused = 0

    def take(self, address: str) -> str | None:
        """A slot for a connection from ``address``, or why there is none."""
        if self.clients.get(address, 0) >= self.per_client:
            return f"{self.per_client} connections from {address}"
        if self.open >= self.max_connections:
            return f"{self.max_connections} connections at once"
        self.open += 1
        self.clients[address] = self.clients.get(address, 0) + 1
        return None

    def give_back(self, address: str) -> None:
        self.open -= 1
        left = self.clients.get(address, 1) - 1
        if left > 0:
            self.clients[address] = left
        else:
            self.clients.pop(address, None)


class _H11(h11.Connection):
    """h11's connection, remembering why it refused a request (uvicorn answers each such
    refusal with a bare 400; :meth:`_Connection.send_400_response` tells them apart)."""

    error: h11.RemoteProtocolError | None = None

    def next_event(self) -> Any:
        try:
            return super().next_event()
        except h11.RemoteProtocolError as exc:
            self.error = exc
            raise


def _refusal(error: h11.RemoteProtocolError | None) -> tuple[int, str]:
    """The status and message for a request head h11 refused."""
    if error is not None and error.error_status_hint == 431:
        return 431, "request head too large"
    if error is not None and "Content-Length" in str(error):
        return 411, "Content-Length required (a whole number ≥ 0)"
    return 400, "malformed HTTP request"


class _Connection(H11Protocol):
    """One client connection: uvicorn's h11 protocol, behind the :class:`Gate` and under the
    head and body deadlines. :func:`protocol` binds a listener's gate and limits."""

    gate: ClassVar[Gate]
    limits: ClassVar[Limits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn: _H11 = _H11(h11.SERVER, self.limits.max_head_bytes)
        self._address = ""
        self._slot = self._refused = False
        self._phase: object = None  # what the deadline runs for: h11's state of the client
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._address = self.client[0] if self.client else ""
        why = self.gate.take(self._address)
        if why is None:
            self._slot = True
            self._watch()
            return
        self._refused = True
        self.gate.refused += 1
        if self.gate.refused % 100 == 1:  # the first, then every hundredth: not a log flood
            log.warning("http: %s; refused %d so far with 503", why, self.gate.refused)
        transport.write(BUSY)
        if transport.can_write_eof():
            transport.write_eof()
        self._deadline = self.loop.call_later(REFUSED_LINGER_SECONDS, transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        if self._slot:
            self._slot = False
            self.gate.give_back(self._address)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # read and dropped until the client hangs up or the linger ends
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def send_400_response(self, msg: str) -> None:
        status, text = _refusal(self.conn.error)
        log.debug("http %s: %s (%s)", status, text, self.conn.error)
        body = json.dumps({"error": text}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        reason = HTTPStatus(status).phrase.encode()
        head = h11.Response(status_code=status, headers=headers, reason=reason)
        try:
            for event in (head, h11.Data(data=body), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event) or b"")
        except h11.LocalProtocolError:  # an answer had begun: nothing more can be said
            pass
        self.transport.close()

    def _watch(self) -> None:
        """(Re)arms the deadline when the client's state changed: HEAD_SECONDS for a whole
        head (from the connection, or from the previous answer), then BODY_SECONDS for the
        whole body; none while the answer is being made."""
        phase = self.conn.their_state
        if phase is self._phase:
            return
        self._phase = phase
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        seconds = {h11.IDLE: self.limits.head_seconds, h11.SEND_BODY: self.limits.body_seconds}
        if phase in seconds:
            self._deadline = self.loop.call_later(seconds[phase], self._expired, phase)

    def _expired(self, phase: object) -> None:
        what = "head" if phase is h11.IDLE else "body"
        log.debug("http client %s: the request's %s did not arrive in time", self.client, what)
        self.transport.close()


def protocol(gate: Gate, limits: Limits) -> type[H11Protocol]:
    """The protocol class of one listener: uvicorn makes one per connection."""
    return type("Connection", (_Connection,), {"gate": gate, "limits": limits})


class BodyLimit:
    """ASGI middleware: no request body larger than ``max_bytes`` reaches the app, and no head
    with more than ``max_headers`` lines or ``max_head_bytes`` bytes (431). A declared
    ``Content-Length`` over the limit is the app's to answer without reading (a webhook's 413
    is the webhook's verdict); the stream itself is counted, and a body growing past the
    limit is answered 413 (if nothing was answered yet) while the app sees the client gone.

    An answer begun before the body was read in whole waits until the rest of the body, up to
    ``drain_bytes``, is read and dropped (the client then sees it after its whole body, as
    from a server that read it): closing a connection with unread data makes the
    kernel send a reset, and a client still writing its body then sees a broken pipe instead
    of the answer (Go's net/http drains for the same reason). Beyond ``drain_bytes`` the rest
    is left unread: refusing must stay cheaper than accepting."""

    def __init__(self, app: App, limits: Limits) -> None:
        self.app, self.max_bytes, self.drain_bytes = app, limits.max_body_bytes, limits.drain_bytes
        self.max_headers, self.max_head_bytes = limits.max_headers, limits.max_head_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if len(scope["headers"]) > self.max_headers:
            text = f"more than {self.max_headers} header lines"
            await self._refuse(receive, send, 431, text, drain=_has_body(scope))
            return
        # h11 bounds a head that arrives in pieces; one that came in whole is measured here.
        size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
        size += sum(len(name) + len(value) + 4 for name, value in scope["headers"])
        if size > self.max_head_bytes:
            text = f"request head larger than {self.max_head_bytes} bytes"
            await self._refuse(receive, send, 431, text, drain=_has_body(scope))
            return
        seen = 0
        read = started = over = False

        async def counted() -> Message:
            nonlocal seen, read, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                read = not message.get("more_body", False)
                if seen > self.max_bytes:
                    over = True
                    if not started:
                        text = f"body larger than {self.max_bytes} bytes"
                        await self._refuse(receive, send, 413, text, drain=not read)
                    return {"type": "http.disconnect"}
            return message

        async def watched(message: Message) -> None:
            nonlocal started, read
            if over:
                return
            if message["type"] == "http.response.start":
                started = True
                if not read and _has_body(scope):
                    read = True  # no app here reads a body after it has begun to answer
                    await self._drain(receive)
            await send(message)

        await self.app(scope, counted, watched)

    async def _drain(self, receive: Receive) -> None:
        left = self.drain_bytes
        while left > 0:
            message = await receive()
            if message["type"] != "http.request":
                return
            left -= len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    async def _refuse(
        self, receive: Receive, send: Send, status: int, text: str, *, drain: bool
    ) -> None:
        body = json.dumps({"error": text}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        if drain:
            await self._drain(receive)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _has_body(scope: Scope) -> bool:
    """Whether the request declared a body (a Content-Length above 0, or chunked)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return value.strip() not in (b"0", b"")
        if name == b"transfer-encoding":
            return True
    return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free one); OSError when the address is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=BACKLOG)
    sock.set_inheritable(False)
    return sock


class Listener:
    """One port: ``app`` served by uvicorn on its own event loop in thread ``name``."""

    def __init__(self, name: str, host: str, port: int, app: App, limits: Limits) -> None:
        self.name, self.limits = name, limits
        self.gate = Gate(limits.max_connections, limits.per_client)
        self.sock = bind(host, port)
        self.address: tuple[str, int] = self.sock.getsockname()[:2]
        config = uvicorn.Config(
            BodyLimit(app, limits),
            http=protocol(self.gate, limits),
            loop="asyncio",
            ws="none",
            lifespan="off",
            interface="asgi3",
            log_config=None,  # gitsync's logging stays as configured (no dictConfig)
            log_level=logging.ERROR,  # uvicorn's own lines: only an app's exceptions
            access_log=False,
            server_header=False,
            headers=[("Server", "gitsync")],
            proxy_headers=False,  # the client address is the peer's: the gate counts it
            backlog=BACKLOG,
            timeout_keep_alive=max(1, round(limits.head_seconds)),
            timeout_graceful_shutdown=max(1, round(limits.grace_seconds)),
            h11_max_incomplete_event_size=limits.max_head_bytes,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._serve, name=name, daemon=True)

    @property
    def port(self) -> int:
        return int(self.address[1])

    def _serve(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        except BaseException:  # a daemon thread's error would otherwise go to stderr only
            log.exception("http listener %s stopped", self.name)

    def start(self, timeout: float = 10.0) -> None:
        """Starts serving; returns once the event loop accepts connections (those made
        before are already queued on the bound socket)."""
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)
        if not self.server.started:
            raise OSError(f"the HTTP listener {self.name} did not start")

    def stop(self, by: float) -> None:
        """Stops accepting and lets requests in flight finish until ``by`` (monotonic), then
        drops them: a sender stalled mid-body does not hold the agent's exit."""
        self.server.should_exit = True
        if self.thread.ident is not None:  # started
            self.thread.join(max(0.0, by - time.monotonic()))
            if self.thread.is_alive():
                self.server.force_exit = True
                self.thread.join(1.0)
        self.sock.close()
