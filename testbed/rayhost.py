"""Real Ray heads for the real KubeRay operator: the test bed's real-Ray mode.

When the kubelet stand-in (:class:`testbed.operator.FakeKubelet`, given a :class:`RayHosts`)
sees a RayCluster's head pod, :meth:`RayHosts.start` runs ``ray start --head --block`` for it
from the test bed's Ray venv (``ray[serve]``, installed by testbed/build.sh): in its own
session (process group), every port explicit and free, ``--node-ip-address=127.0.0.1``, a
short temp dir of its own (Ray's socket paths have a length limit), and the checkout on
``PYTHONPATH`` so the Serve apps of testbed/serve_apps import without a network. The pod turns
Ready only once the head's dashboard answers ``GET /api/serve/applications/``; a head that is
not Ready yet would answer the operator's calls with errors, and KubeRay backs off
exponentially after those.

With ``spares`` the test bed keeps that many heads started ahead of any pod (within
``max_heads``): a new head pod takes one that is already up, as if its container had started
at once, and another is started behind it. Each is a fresh ``ray start`` used by one pod only;
its apps learn their cluster's name from a file in its temp dir, written when a pod takes it.

A head is stopped by SIGKILL to its process group, and then to any process that still carries
its tag in its environment (Ray's workers outlive the raylet by a few seconds otherwise):
never ``ray stop``, which stops every Ray on the machine.

:class:`ServiceProxy` is the kube-proxy stand-in: one loopback HTTP listener per
``<rayservice>-serve-svc`` Service, forwarding each request to a Ready address of that
Service's Endpoints as they are now (pod IP → head → its Serve HTTP port), so traffic follows
KubeRay's switch of the Service at promotion.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from kubernetes import client

from testbed import CHECKOUT
from testbed.controlplane import _Process, _tail, free_port, spawn

HEAD_TAG = "GITSYNC_RAY_HEAD"  # in every head's environment, inherited by its Ray processes
CLUSTER_ENV = "GITSYNC_RAY_CLUSTER"  # read by testbed/serve_apps
MARKERS_ENV = "GITSYNC_RAY_MARKERS"  # where testbed/serve_apps/crashy.py leaves its marker
CLUSTER_FILE = "cluster"  # in a spare head's temp dir: its cluster's name, once a pod takes it


@dataclass
class RayHead:
    """One ``ray start --head --block`` for one head pod."""

    namespace: str
    pod: str
    cluster: str
    tempdir: Path
    dashboard_port: int
    serve_port: int
    gcs_port: int
    process: _Process
    started: float
    ready_at: float | None = None
    stopped_at: float | None = None
    attempt: int = 1

    @property
    def tag(self) -> str:
        return str(self.tempdir)

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def alive(self) -> bool:
        return self.process.popen.poll() is None

    def answers(self, timeout: float = 5.0) -> bool:
        """Whether the dashboard answers a Serve GET (what gates the pod's readiness)."""
        try:
            with urllib.request.urlopen(  # noqa: S310 (a loopback URL of our own)
                f"{self.dashboard}/api/serve/applications/", timeout=timeout
            ) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError, http.client.HTTPException):
            return False

    def ours(self, timeout: float = 5.0) -> bool:
        """Whether the dashboard on our port is this head's: its session lives in our temp
        dir. Ports are chosen free but bound seconds later; on a busy machine another Ray's
        dashboard can take one first, and would answer the readiness GET in its place."""
        try:
            with urllib.request.urlopen(  # noqa: S310 (a loopback URL of our own)
                f"{self.dashboard}/api/version", timeout=timeout
            ) as response:
                session = str(json.load(response).get("session_name") or "")
        except (OSError, ValueError, http.client.HTTPException):
            return False
        return bool(session) and (self.tempdir / session).is_dir()

    def log(self) -> str:
        return _tail(self.process.log, 60)


def _tagged(tag: str) -> list[int]:
    """Pids of the processes whose environment carries ``HEAD_TAG=tag``."""
    needle = f"{HEAD_TAG}={tag}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            pids.append(int(entry.name))
    return pids


@dataclass
class RayHosts:
    """The real Ray heads of the test bed, by head pod, cluster and fake pod IP."""

    ray_python: Path
    workdir: Path
    num_cpus: int = 2
    max_heads: int = 2  # CPU is scarce: a swap needs two heads at once, never more
    ready_timeout: float = 180.0  # the first head on a cold machine can be slow
    heads: dict[tuple[str, str], RayHead] = field(default_factory=dict)  # (namespace, pod)
    ips: dict[str, tuple[str, str]] = field(default_factory=dict)  # pod IP → (namespace, pod)
    # worker pod IP → (namespace, cluster): the serve Service selects worker pods too, and
    # their Serve proxy would route to the cluster's replicas; here the head's proxy does
    workers: dict[str, tuple[str, str]] = field(default_factory=dict)
    stopped: list[RayHead] = field(default_factory=list)
    rewrites: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # cluster, options
    errors: list[str] = field(default_factory=list)
    attempts: int = 2  # starts per head pod before its exit is an error
    retried: list[str] = field(default_factory=list)  # heads that exited and were started again
    lock: threading.RLock = field(default_factory=threading.RLock)
    spares: int = 0  # heads kept started ahead of any pod (counted in max_heads)
    idle: list[RayHead] = field(default_factory=list)  # spares no pod has taken yet
    spare_names: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def ray(self) -> Path:
        return self.ray_python.parent / "ray"

    def can_start(self) -> bool:
        with self.lock:
            return len(self.heads) < self.max_heads

    def start(self, namespace: str, pod: str, cluster: str, ip: str) -> RayHead:
        with self.lock:
            existing = self.heads.get((namespace, pod))
            if existing is not None:
                return existing
            if self.idle:
                return self._adopt(self.idle.pop(0), namespace, pod, cluster, ip)
            return self._launch(namespace, pod, cluster, ip, 1)

    def refill(self) -> RayHead | None:
        """Starts a spare if there are fewer than ``spares`` idle ones and ``max_heads`` heads
        in all, and no head is starting: two starts at once on a busy machine can both miss
        the 30 s ``ray start`` gives its raylet (it is called again when a head is ready)."""
        with self.lock:
            heads = [*self.heads.values(), *self.idle]
            starting = any(h.ready_at is None and h.stopped_at is None for h in heads)
            if not starting and len(self.idle) < self.spares and len(heads) < self.max_heads:
                return self._launch("", "", "", "", 1)
            return None

    def _adopt(self, head: RayHead, namespace: str, pod: str, cluster: str, ip: str) -> RayHead:
        """A spare becomes the head of this pod (the lock held); another spare starts."""
        head.namespace, head.pod, head.cluster = namespace, pod, cluster
        (head.tempdir / CLUSTER_FILE).write_text(cluster)
        self.heads[(namespace, pod)] = head
        self.ips[ip] = (namespace, pod)
        self.refill()
        return head

    def _launch(self, namespace: str, pod: str, cluster: str, ip: str, attempt: int) -> RayHead:
        """Starts the head (the lock held): ports, temp dir and process all new."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Short: Ray's session socket paths must stay under the 107-byte AF_UNIX limit.
        tempdir = Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))
        ports = {name: ray_port() for name in _PORTS}
        argv = [
            str(self.ray),
            "start",
            "--head",
            "--block",
            "--disable-usage-stats",
            "--node-ip-address=127.0.0.1",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--num-cpus={self.num_cpus}",
            f"--temp-dir={tempdir}",
            *(f"--{name}={port}" for name, port in ports.items()),
        ]
        env = {
            **os.environ,
            "PYTHONPATH": str(CHECKOUT),
            "RAY_USAGE_STATS_ENABLED": "0",
            HEAD_TAG: str(tempdir),
            CLUSTER_ENV: cluster,
            MARKERS_ENV: str(tempdir),
        }
        for proxy_var in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
            env.pop(proxy_var, None)
        name = f"{namespace}-{pod}" if pod else f"spare-{next(self.spare_names)}"
        log = self.workdir / f"{name}-{attempt}.log"
        head = RayHead(
            namespace,
            pod,
            cluster,
            tempdir,
            ports["dashboard-port"],
            ray_port(),
            ports["port"],
            spawn(f"ray-head-{pod or name}", argv, log, env),
            time.monotonic(),
            attempt=attempt,
        )
        if pod:
            self.heads[(namespace, pod)] = head
            self.ips[ip] = (namespace, pod)
        else:
            self.idle.append(head)
        threading.Thread(target=self._await_ready, args=(head,), daemon=True).start()
        return head

    def _await_ready(self, head: RayHead) -> None:
        deadline = head.started + self.ready_timeout
        while time.monotonic() < deadline and head.stopped_at is None:
            answering = head.answers()
            if answering and head.ours():
                head.ready_at = time.monotonic()
                _outlive(self.refill())
                return
            if not head.alive() or answering:  # answering, but another Ray on our port
                # `ray start` gives its raylet a fixed 30 s to register with the GCS
                # (ray/_private/node.py); the first start from a freshly installed venv on a
                # busy 2-core machine can miss it. One more start, then it is an error.
                with self.lock:
                    current = self.heads.get((head.namespace, head.pod)) is head
                    spare = any(idle is head for idle in self.idle)
                    if spare:  # a new spare replaces it
                        self.idle = [idle for idle in self.idle if idle is not head]
                    again = None
                    if (current or spare) and head.attempt < self.attempts:
                        self.retried.append(f"ray head for {head.pod} exited:\n{head.log()}")
                        ip = next((i for i, k in self.ips.items()
                                   if k == (head.namespace, head.pod)), "")  # fmt: skip
                        _kill(head)
                        again = self._launch(
                            head.namespace, head.pod, head.cluster, ip, head.attempt + 1
                        )
                    elif spare:
                        self.errors.append(f"ray head for a spare exited:\n{head.log()}")
                        _kill(head)
                        self.stopped.append(head)
                        return
                if again is not None:
                    _outlive(again)
                    return
                self.errors.append(f"ray head for {head.pod} exited:\n{head.log()}")
                return
            time.sleep(0.5)
        if head.stopped_at is None:
            self.errors.append(
                f"ray head for {head.pod} not answering after {self.ready_timeout} s:\n{head.log()}"
            )

    def ready(self, namespace: str, pod: str) -> bool:
        head = self.heads.get((namespace, pod))
        return head is not None and head.ready_at is not None

    def by_cluster(self, namespace: str, cluster: str) -> RayHead | None:
        with self.lock:
            for head in self.heads.values():
                if head.cluster == cluster and (not namespace or head.namespace == namespace):
                    return head
            return None

    def by_ip(self, ip: str) -> RayHead | None:
        """The head of the pod with this IP, or of the cluster of the worker pod with it."""
        with self.lock:
            key = self.ips.get(ip)
            if key is not None:
                return self.heads.get(key)
            worker = self.workers.get(ip)
            return self.by_cluster(*worker) if worker else None

    def add_worker(self, namespace: str, cluster: str, ip: str) -> None:
        with self.lock:
            self.workers[ip] = (namespace, cluster)

    def stop(self, namespace: str, pod: str) -> None:
        with self.lock:
            head = self.heads.pop((namespace, pod), None)
            for ip, key in list(self.ips.items()):
                if key == (namespace, pod):
                    del self.ips[ip]
        if head is not None:
            _kill(head)
            self.stopped.append(head)
            self.refill()

    def stop_all(self) -> None:
        with self.lock:
            self.spares, idle, self.idle = 0, self.idle, []
        for head in idle:
            _kill(head)
            self.stopped.append(head)
        for namespace, pod in list(self.heads):
            self.stop(namespace, pod)

    def leftovers(self) -> list[int]:
        """Pids still carrying the tag of a head this test bed started (none, once stopped)."""
        return [pid for head in self.stopped for pid in _tagged(head.tag)]

    def rewrite_put(self, head: RayHead, body: dict[str, Any]) -> dict[str, Any]:
        """The PUT body with ``http_options`` pointing Serve's HTTP proxy at this head's own
        port: Serve fixes that port at its first start, and in a pod every head has 8000."""
        options = {**(body.get("http_options") or {}), "host": "127.0.0.1"}
        options["port"] = head.serve_port
        self.rewrites.append((head.cluster, options))
        return {**body, "http_options": options}


_PORTS = (
    "port",  # GCS
    "dashboard-port",
    "ray-client-server-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "runtime-env-agent-port",
    "metrics-export-port",
    "node-manager-port",
    "object-manager-port",
)


# A head's ports, Serve's HTTP port above all (bound only at the first PUT, perhaps minutes
# after the head started), come from a range no one else picks from: not the kernel's
# ephemeral range (32768-60999 here), where every listener bound to port 0 and every client
# socket lands (Ray's own gRPC servers among them; one took a spare head's Serve port before
# Serve did, and every request to that service met an HTTP/2 server), and not Ray's worker
# ports (10002-19999 by default). Each process starts at its own place in the range.
_RAY_PORTS = range(20000, 32768)
_next_ray_port = itertools.count(os.getpid() * 7919)
_ray_port_lock = threading.Lock()


def ray_port() -> int:
    """A free port for a Ray head, from :data:`_RAY_PORTS` in turn."""
    with _ray_port_lock:
        for _ in range(len(_RAY_PORTS)):
            port = _RAY_PORTS[next(_next_ray_port) % len(_RAY_PORTS)]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError(f"no free port in {_RAY_PORTS}")


def _outlive(head: RayHead | None) -> None:
    """Returns once ``head`` (started by this thread) is stopped: setpriv's parent-death signal
    (controlplane.spawn) follows the thread that started a process, not the process, so a
    head started from a short-lived thread would die with it."""
    while head is not None and head.stopped_at is None:
        time.sleep(1)


def _kill(head: RayHead) -> None:
    head.stopped_at = time.monotonic()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(head.process.popen.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        head.process.popen.wait(10)
    head.process.log_file.close()
    shutil.rmtree(head.tempdir, ignore_errors=True)
    # Workers the raylet started in sessions of their own: by the tag they inherited.
    deadline = time.monotonic() + 10
    while (pids := _tagged(head.tag)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    shutil.rmtree(head.tempdir, ignore_errors=True)


def forward(
    method: str,
    port: int,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
    timeout: float,
) -> tuple[int, bytes, str]:
    """One HTTP request to 127.0.0.1:port; the status, body and content type."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return (
            response.status,
            response.read(),
            response.getheader("Content-Type") or "application/octet-stream",
        )
    finally:
        connection.close()


class ServiceProxy:
    """The kube-proxy stand-in: a loopback listener per ``*-serve-svc`` Service, each request
    sent to one of the Service's Endpoints addresses as they are when it arrives."""

    def __init__(
        self,
        api: client.ApiClient,
        hosts: RayHosts,
        namespaces: list[str],
        interval: float = 0.1,
    ) -> None:
        self.core = client.CoreV1Api(api)
        self.hosts = hosts
        self.namespaces = namespaces
        self.interval = interval
        self.addresses: dict[tuple[str, str], list[str]] = {}  # (namespace, service) → IPs
        self.listeners: dict[tuple[str, str], ThreadingHTTPServer] = {}
        self.errors: list[str] = []
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.counter = itertools.count()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> ServiceProxy:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(10)
        for server in self.listeners.values():
            server.shutdown()
            server.server_close()

    def url(self, namespace: str, service: str, timeout: float = 30.0) -> str:
        """The listener of ``<service>-serve-svc`` (waits for the Service to appear)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            server = self.listeners.get((namespace, f"{service}-serve-svc"))
            if server is not None:
                return f"http://127.0.0.1:{server.server_address[1]}"
            time.sleep(0.2)
        raise TimeoutError(f"no Service {namespace}/{service}-serve-svc after {timeout} s")

    def _run(self) -> None:
        while not self.stop_event.wait(self.interval):
            for namespace in list(self.namespaces):
                try:
                    self._refresh(namespace)
                except client.ApiException as exc:
                    self.errors.append(f"{namespace}: {exc.status} {exc.reason}")

    def _refresh(self, namespace: str) -> None:
        for endpoints in self.core.list_namespaced_endpoints(namespace).items:
            name = endpoints.metadata.name
            if not name.endswith("-serve-svc"):
                continue
            ips = [a.ip for s in endpoints.subsets or [] for a in s.addresses or []]
            with self.lock:
                self.addresses[(namespace, name)] = ips
            if (namespace, name) not in self.listeners:
                self.listeners[(namespace, name)] = self._listen(namespace, name)

    def _listen(self, namespace: str, service: str) -> ThreadingHTTPServer:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return

            def do_GET(self) -> None:
                with proxy.lock:
                    ips = list(proxy.addresses.get((namespace, service), []))
                head = None
                if ips:
                    head = proxy.hosts.by_ip(ips[next(proxy.counter) % len(ips)])
                if head is None:  # no endpoint: kube-proxy rejects the connection
                    self._reply(503, b"no endpoints", "text/plain")
                    return
                try:
                    status, data, kind = forward("GET", head.serve_port, self.path, None, {}, 30)
                except OSError as exc:
                    self._reply(502, f"{head.cluster}: {exc}".encode(), "text/plain")
                    return
                self._reply(status, data, kind)

            def _reply(self, code: int, data: bytes, kind: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


def serve_status(head: RayHead, timeout: float = 10.0) -> dict[str, Any]:
    """The head's ``/api/serve/applications/`` as JSON (for tests and errors)."""
    with urllib.request.urlopen(  # noqa: S310 (a loopback URL of our own)
        f"{head.dashboard}/api/serve/applications/", timeout=timeout
    ) as response:
        data: dict[str, Any] = json.load(response)
        return data
