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
            return self._launch(namespace, pod, cluster, ip, 1)

    def _launch(
        self, namespace: str, pod: str, cluster: str, ip: str, attempt: int, *, wait: bool = True
    ) -> RayHead:
        """Starts the head (the lock held): ports, temp dir and process all new; ``wait``:
        with a thread of its own awaiting its readiness."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Short: Ray's session socket paths must stay under the 107-byte AF_UNIX limit.
        tempdir = Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))
        ports = {name: free_port() for name in _PORTS}
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
        log = self.workdir / f"{namespace}-{pod}-{attempt}.log"
        head = RayHead(
            namespace,
            pod,
            cluster,
            tempdir,
            ports["dashboard-port"],
            free_port(),
            ports["port"],
            spawn(f"ray-head-{pod}", argv, log, env),
            time.monotonic(),
            attempt=attempt,
        )
        self.heads[(namespace, pod)] = head
        self.ips[ip] = (namespace, pod)
        if wait:
            threading.Thread(target=self._await_ready, args=(head,), daemon=True).start()
        return head

    def _await_ready(self, head: RayHead) -> None:
        # `setpriv --pdeathsig` (controlplane.spawn) kills a process when the *thread* that
        # started it exits: a head this thread starts again must not outlive the thread.
        restarted = False
        while True:
            deadline = head.started + self.ready_timeout
            again = None
            while again is None and time.monotonic() < deadline and head.stopped_at is None:
                if not head.alive():
                    # `ray start` gives its raylet a fixed 30 s to register with the GCS
                    # (ray/_private/node.py); the first start from a freshly installed venv on
                    # a busy 2-core machine can miss it. Another start, then it is an error.
                    with self.lock:
                        current = self.heads.get((head.namespace, head.pod)) is head
                        if current and head.attempt < self.attempts:
                            self.retried.append(f"ray head for {head.pod} exited:\n{head.log()}")
                            ip = next((i for i, k in self.ips.items()
                                       if k == (head.namespace, head.pod)), "")  # fmt: skip
                            _kill(head)
                            again = self._launch(
                                head.namespace, head.pod, head.cluster, ip, head.attempt + 1,
                                wait=False,
                            )  # fmt: skip
                    if again is None:
                        self.errors.append(f"ray head for {head.pod} exited:\n{head.log()}")
                        return
                elif head.answers():
                    head.ready_at = time.monotonic()
                    break
                else:
                    time.sleep(0.5)
            if again is not None:
                head, restarted = again, True
                continue
            if head.ready_at is None and head.stopped_at is None:
                self.errors.append(
                    f"ray head for {head.pod} not answering after {self.ready_timeout} s:\n"
                    f"{head.log()}"
                )
            break
        while restarted and head.stopped_at is None and head.alive():
            time.sleep(1)

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

    def stop_all(self) -> None:
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
