"""A TCP proxy on a fixed loopback port in front of a real Git server, with a fault mode:
``pass`` (forward), ``down`` (nothing listens: connection refused), ``hang`` (accept, never
answer), ``slow`` (forward, 100 ms per 1 KiB chunk), ``garbage`` (answer every request with
an HTTP 200 of random bytes) and ``error500`` (answer every request with an HTTP 500).
:meth:`FaultProxy.stall` stalls the connections open now without closing them (nothing
forwarded either way, as behind a middlebox that lost its state) while new ones pass.
A real Git server (or forge) behind it and a real client in front: the proxy only breaks
the wire between them, as a network or a server would.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable

CHUNK = 1024


class FaultProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.mode = "pass"
        self._listener: socket.socket | None = None
        self._closed = threading.Event()
        self._open: set[socket.socket] = set()  # connections being forwarded
        self._stalled: set[socket.socket] = set()  # forwarding nothing, left open
        self._lock = threading.Lock()
        self.port = 0
        self._listen()

    def set(self, mode: str) -> None:
        assert mode in ("pass", "down", "hang", "slow", "garbage", "error500"), mode
        if mode == "down":
            self._stop_listening()
        elif self._listener is None:
            self._listen()
        self.mode = mode
        if mode not in ("pass", "slow"):
            # A kept-alive connection (a forge client's pool) would bypass the fault.
            with self._lock:
                for conn in self._open:
                    with contextlib.suppress(OSError):
                        conn.shutdown(socket.SHUT_RDWR)

    def stall(self) -> int:
        """Stalls every connection open now (the count); new connections pass."""
        with self._lock:
            self._stalled |= self._open
            return len(self._stalled)

    def _held(self, conn: socket.socket) -> bool:
        return conn in self._stalled and not self._closed.is_set()

    def close(self) -> None:
        self._closed.set()
        self._stop_listening()

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _stop_listening(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed: "down"
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            mode = self.mode
            if mode == "hang":
                while not self._closed.is_set() and self.mode == "hang":
                    time.sleep(0.05)
                return
            if mode == "garbage":
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    conn.recv(65536)
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-git-upload-pack-"
                        b"advertisement\r\nContent-Length: 4096\r\n\r\n" + os.urandom(4096)
                    )
                return
            if mode == "error500":
                body = b'{"message":"internal server error"}'
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    conn.recv(65536)
                    conn.sendall(
                        b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json"
                        b"\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                    )
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=30)
            except OSError:
                return
            with self._lock:
                self._open.add(conn)
            with upstream:
                delay = 0.1 if mode == "slow" else 0.0
                held = lambda: self._held(conn)  # noqa: E731
                back = threading.Thread(
                    target=_pipe, args=(upstream, conn, delay, held), daemon=True
                )
                back.start()
                _pipe(conn, upstream, 0.0, held)
                back.join(60)
            with self._lock:
                self._open.discard(conn)
                self._stalled.discard(conn)


def _pipe(
    source: socket.socket,
    sink: socket.socket,
    delay: float,
    held: Callable[[], bool] = lambda: False,
) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(CHUNK if delay else 65536):
            if delay:
                time.sleep(delay)
            while held():  # stalled: kept open, nothing forwarded
                time.sleep(0.05)
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)
