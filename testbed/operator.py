"""The real KubeRay operator on the test bed, with stand-ins for what this machine lacks.

Like KubeRay's own envtest suite, nothing runs Ray here. Three stand-ins make the operator's
world complete enough for it to reconcile RayServices for real:

- :class:`FakeKubelet` marks the pods the operator creates Running and Ready (status
  subresource) with a pod IP from the documentation range. Nothing ever connects to it.
- :class:`FakeEndpoints` writes the Endpoints of every Service with a selector, from the Ready
  pods it selects (KubeRay v1.5 counts serve endpoints from Endpoints).
- :class:`ServeProxy` is what the operator reaches through ``HTTP_PROXY``: the Ray dashboard's
  ``/api/serve/applications/`` per cluster (by Host header ``<cluster>-head-svc.<ns>…:8265``)
  and the serve proxy's ``/-/healthz`` on the head pod. Applications submitted by PUT go
  DEPLOYING → RUNNING after a delay, or to a failure a rule injects. Every PUT is recorded.

In the real-Ray mode (given a :class:`testbed.rayhost.RayHosts`), the kubelet stand-in starts a
real Ray head for each head pod and marks the pod Ready only once its dashboard answers, and
:class:`ServeProxy` forwards the operator's calls to that head: dashboard calls by Host header,
``/-/healthz`` by pod IP → pod → head. Worker pods get no Ray worker: the head's logical CPUs
run the test apps, and the operator never calls a worker.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kubernetes import client

from gitsync.model import ServiceKey
from testbed.controlplane import _Process, _tail, free_port, spawn
from testbed.rayhost import RayHosts, forward
from testbed.simulator import FailureRule


@dataclass
class Submission:
    cluster: str
    namespace: str
    config: dict[str, Any]
    at: float


@dataclass
class _App:
    status: str
    message: str
    deployments: list[str]
    done_at: float
    outcome: tuple[str, str]


@dataclass
class ServeState:
    """Ray Serve per cluster, as the dashboard would report it."""

    deploy_seconds: float = 0.4
    rules: list[FailureRule] = field(default_factory=list)
    submissions: list[Submission] = field(default_factory=list)
    apps: dict[str, dict[str, _App]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def put(self, cluster: str, namespace: str, config: dict[str, Any]) -> None:
        now = time.monotonic()
        with self.lock:
            self.submissions.append(Submission(cluster, namespace, config, now))
            current = self.apps.setdefault(cluster, {})
            wanted = {str(a.get("name") or "default"): a for a in config.get("applications") or []}
            service = cluster.rsplit("-", 1)[0]
            for name, app in wanted.items():
                outcome = ("RUNNING", "")
                for rule in self.rules:
                    if rule.matches(ServiceKey(namespace, service), name, app.get("import_path")):
                        outcome = (rule.status, rule.message)
                        break
                deployments = [d["name"] for d in app.get("deployments") or [] if d.get("name")]
                old = current.get(name)
                if old is not None and old.outcome == outcome and old.status == outcome[0]:
                    continue
                current[name] = _App(
                    "DEPLOYING", "", deployments or [name], now + self.deploy_seconds, outcome
                )
            for name in list(current):
                if name not in wanted:
                    del current[name]

    def details(self, cluster: str) -> dict[str, Any]:
        now = time.monotonic()
        with self.lock:
            apps = self.apps.get(cluster, {})
            for app in apps.values():
                if app.status == "DEPLOYING" and now >= app.done_at:
                    app.status, app.message = app.outcome
            result = {}
            for name, app in apps.items():
                dep_status = {"RUNNING": "HEALTHY", "DEPLOYING": "UPDATING"}.get(
                    app.status, "UNHEALTHY"
                )
                result[name] = {
                    "name": name,
                    "status": app.status,
                    "message": app.message,
                    "deployments": {
                        d: {
                            "name": d,
                            "status": dep_status,
                            "message": app.message if dep_status == "UNHEALTHY" else "",
                        }
                        for d in app.deployments
                    },
                }
            return {"applications": result, "deploy_mode": "MULTI_APP"}


class ServeProxy:
    """An HTTP proxy on 127.0.0.1 that is the Ray dashboard and serve proxy of every cluster:
    :class:`ServeState` answers, or with ``hosts`` each cluster's real Ray head does."""

    def __init__(self, state: ServeState, hosts: RayHosts | None = None) -> None:
        self.state = state
        self.hosts = hosts
        self.port = free_port()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return

            def _reply(self, code: int, body: dict[str, Any] | str) -> None:
                data = (json.dumps(body) if isinstance(body, dict) else body).encode()
                self.send_response(code)
                self.send_header(
                    "Content-Type", "application/json" if isinstance(body, dict) else "text/plain"
                )
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _target(self) -> tuple[str, str, str]:
                url = urlsplit(self.path)
                host = url.hostname or (self.headers.get("Host") or "").split(":")[0]
                proxy.state.requests.append(f"{self.command} {host}{url.path}")
                parts = host.split(".")
                cluster = parts[0].removesuffix("-head-svc")
                namespace = parts[1] if len(parts) > 1 else ""
                return cluster, namespace, url.path

            def _to_ray(self, body: bytes | None) -> None:
                """Forwards to the real head: by pod IP for the serve proxy's health check,
                by the head Service's name for the dashboard."""
                assert proxy.hosts is not None
                url = urlsplit(self.path)
                host = url.hostname or (self.headers.get("Host") or "").split(":")[0]
                target = url.path + (f"?{url.query}" if url.query else "")
                proxy.state.requests.append(f"{self.command} {host}{url.path}")
                if url.path.endswith("/-/healthz"):
                    head = proxy.hosts.by_ip(host)
                    port = head.serve_port if head else 0
                else:
                    parts = host.split(".")
                    cluster = parts[0].removesuffix("-head-svc")
                    namespace = parts[1] if len(parts) > 1 else ""
                    head = proxy.hosts.by_cluster(namespace, cluster)
                    port = head.dashboard_port if head else 0
                    if head and body is not None and self.command == "PUT":
                        config = proxy.hosts.rewrite_put(head, json.loads(body or b"{}"))
                        proxy.state.submissions.append(
                            Submission(cluster, namespace, config, time.monotonic())
                        )
                        body = json.dumps(config).encode()
                if head is None or head.ready_at is None:
                    self._reply(502, {"error": f"no Ray head for {host}"})
                    return
                headers = {"Content-Type": self.headers.get("Content-Type") or "application/json"}
                try:
                    code, data, kind = forward(self.command, port, target, body, headers, 30)
                except OSError as exc:
                    self._reply(502, {"error": f"{head.cluster}: {exc}"})
                    return
                # The operator's client gives up after 2 s (a PUT can take longer): its socket
                # may be gone by now, as it would be for a real dashboard.
                with contextlib.suppress(OSError):
                    self.send_response(code)
                    self.send_header("Content-Type", kind)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)

            def do_GET(self) -> None:
                if proxy.hosts is not None:
                    self._to_ray(None)
                    return
                cluster, _, path = self._target()
                if path.endswith("/-/healthz"):
                    self._reply(200, "success")
                elif path.rstrip("/").endswith("/api/serve/applications"):
                    self._reply(200, proxy.state.details(cluster))
                else:
                    self._reply(404, {"error": f"not served by the test bed: {path}"})

            def do_PUT(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if proxy.hosts is not None:
                    self._to_ray(self.rfile.read(length))
                    return
                cluster, namespace, path = self._target()
                body = json.loads(self.rfile.read(length) or b"{}")
                if path.rstrip("/").endswith("/api/serve/applications"):
                    proxy.state.put(cluster, namespace, body)
                    self._reply(200, {})
                else:
                    self._reply(404, {"error": path})

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> ServeProxy:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Loop:
    def __init__(self, api: client.ApiClient, namespaces: list[str], interval: float = 0.2) -> None:
        self.core = client.CoreV1Api(api)
        self.namespaces = namespaces
        self.interval = interval
        self.stop_event = threading.Event()
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> _Loop:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(10)

    def _run(self) -> None:
        while not self.stop_event.wait(self.interval):
            for namespace in list(self.namespaces):
                try:
                    self.tick(namespace)
                except client.ApiException as exc:
                    if exc.status not in (404, 409):
                        self.errors.append(f"{namespace}: {exc.status} {exc.reason}")

    def tick(self, namespace: str) -> None:
        raise NotImplementedError


class FakeKubelet(_Loop):
    """Pods become Running and Ready with an IP; nothing is ever started, unless ``hosts`` is
    given: then each head pod gets a real Ray head and turns Ready when that head answers, and
    the pods of a RayCluster that is gone are deleted (the garbage collector's cascade, which
    this control plane without kube-controller-manager lacks), stopping their heads."""

    def __init__(
        self,
        api: client.ApiClient,
        namespaces: list[str],
        interval: float = 0.2,
        hosts: RayHosts | None = None,
    ) -> None:
        super().__init__(api, namespaces, interval)
        self.next_ip = 10
        self.hosts = hosts
        self.custom = client.CustomObjectsApi(api)

    def tick(self, namespace: str) -> None:
        pods = self.core.list_namespaced_pod(namespace).items
        if self.hosts is not None:
            self._collect(namespace, pods)
        for pod in pods:
            if pod.metadata.deletion_timestamp is not None:
                self.core.delete_namespaced_pod(
                    pod.metadata.name, namespace, grace_period_seconds=0
                )
                continue
            labels = pod.metadata.labels or {}
            head = self.hosts is not None and labels.get("ray.io/node-type") == "head"
            if pod.status and pod.status.phase == "Running":
                ready = any(
                    c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []
                )
                if (
                    head
                    and not ready
                    and self.hosts
                    and self.hosts.ready(namespace, pod.metadata.name)
                ):
                    self._patch(pod, namespace, pod.status.pod_ip, ready=True)
                continue
            if head and self.hosts and not self.hosts.can_start():
                continue  # at most max_heads heads at once: this pod stays Pending
            self.next_ip += 1
            ip = f"192.0.2.{self.next_ip % 250 + 2}"  # TEST-NET-1: never routed, never contacted
            cluster = labels.get("ray.io/cluster", "")
            if head and self.hosts:
                try:
                    self.hosts.start(namespace, pod.metadata.name, cluster, ip)
                except OSError as exc:  # no Ray to run: the pod stays Pending, the test fails
                    message = f"cannot start a Ray head for {pod.metadata.name}: {exc}"
                    if message not in self.hosts.errors:
                        self.hosts.errors.append(message)
                    continue
            elif self.hosts and cluster:
                self.hosts.add_worker(namespace, cluster, ip)
            self._patch(pod, namespace, ip, ready=not head)

    def _patch(self, pod: Any, namespace: str, ip: str, *, ready: bool) -> None:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        conditions = [
            {"type": kind, "status": "True", "lastTransitionTime": now}
            for kind in ("PodScheduled", "Initialized")
        ] + [
            {"type": kind, "status": str(ready), "lastTransitionTime": now}
            for kind in ("ContainersReady", "Ready")
        ]
        containers = [
            {
                "name": c.name,
                "ready": ready,
                "restartCount": 0,
                "image": c.image,
                "imageID": "",
                "started": True,
                "state": {"running": {"startedAt": now}},
            }
            for c in pod.spec.containers
        ]
        body = {
            "status": {
                "phase": "Running",
                "podIP": ip,
                "podIPs": [{"ip": ip}],
                "hostIP": "192.0.2.1",
                "startTime": now,
                "conditions": conditions,
                "containerStatuses": containers,
            }
        }
        self.core.patch_namespaced_pod_status(pod.metadata.name, namespace, body)

    def _collect(self, namespace: str, pods: list[Any]) -> None:
        """Deletes the pods of RayClusters that are gone; stops the heads of pods that are."""
        assert self.hosts is not None
        clusters = {
            o["metadata"]["name"]
            for o in self.custom.list_namespaced_custom_object(
                "ray.io", "v1", namespace, "rayclusters"
            )["items"]
        }
        present = set()
        for pod in pods:
            owner = (pod.metadata.labels or {}).get("ray.io/cluster")
            if owner and owner not in clusters:
                self.core.delete_namespaced_pod(
                    pod.metadata.name, namespace, grace_period_seconds=0
                )
            elif pod.metadata.deletion_timestamp is None:
                present.add(pod.metadata.name)
        for ns, name in list(self.hosts.heads):
            if ns == namespace and name not in present:
                self.hosts.stop(ns, name)


class FakeEndpoints(_Loop):
    """Endpoints of every Service with a selector, from the Ready pods it selects."""

    def tick(self, namespace: str) -> None:
        pods = self.core.list_namespaced_pod(namespace).items
        for service in self.core.list_namespaced_service(namespace).items:
            selector = service.spec.selector or {}
            if not selector:
                continue
            ready = [
                p
                for p in pods
                if all((p.metadata.labels or {}).get(k) == v for k, v in selector.items())
                and p.status
                and p.status.pod_ip
                and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
            ]
            addresses = sorted(
                (
                    {
                        "ip": p.status.pod_ip,
                        "targetRef": {
                            "kind": "Pod",
                            "name": p.metadata.name,
                            "namespace": namespace,
                        },
                    }
                    for p in ready
                ),
                key=lambda a: a["ip"],
            )
            ports = [
                {
                    "name": p.name,
                    "port": p.target_port if isinstance(p.target_port, int) else p.port,
                    "protocol": p.protocol or "TCP",
                }
                for p in service.spec.ports or []
            ]
            body = {
                "metadata": {"name": service.metadata.name, "namespace": namespace},
                "subsets": [{"addresses": addresses, "ports": ports}] if addresses else [],
            }
            try:
                current = self.core.read_namespaced_endpoints(service.metadata.name, namespace)
                existing = [a.ip for s in current.subsets or [] for a in s.addresses or []]
                if existing != [a["ip"] for a in addresses]:
                    self.core.replace_namespaced_endpoints(service.metadata.name, namespace, body)
            except client.ApiException as exc:
                if exc.status != 404:
                    raise
                self.core.create_namespaced_endpoints(namespace, body)


@dataclass
class Operator:
    """The operator process, reaching the dashboards through :class:`ServeProxy`."""

    binary: Path
    kubeconfig: Path
    namespaces: list[str]
    proxy_port: int
    logdir: Path
    env: dict[str, str] = field(default_factory=dict)
    _process: _Process | None = None

    def start(self) -> Operator:
        self.logdir.mkdir(parents=True, exist_ok=True)
        log = self.logdir / "kuberay-operator.log"
        argv = [
            str(self.binary),
            "-kubeconfig",
            str(self.kubeconfig),
            "-enable-leader-election=false",
            f"-watch-namespace={','.join(self.namespaces)}",
            "-metrics-addr=0",
            f"-health-probe-bind-address=127.0.0.1:{free_port()}",
        ]
        environment = {
            **os.environ,
            "HTTP_PROXY": f"http://127.0.0.1:{self.proxy_port}",
            "http_proxy": f"http://127.0.0.1:{self.proxy_port}",
            "NO_PROXY": "",
            "no_proxy": "",
            **self.env,
        }
        self._process = spawn("kuberay-operator", argv, log, environment)
        time.sleep(0.5)
        if self._process.popen.poll() is not None:
            raise RuntimeError(f"the KubeRay operator exited at once:\n{_tail(log)}")
        return self

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None

    def log(self) -> str:
        return (self.logdir / "kuberay-operator.log").read_text(errors="replace")
