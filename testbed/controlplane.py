"""A real Kubernetes control plane on loopback: etcd + kube-apiserver, KubeRay's CRDs installed.

The same approach as controller-runtime's envtest: throwaway PKI, free ports, a kubeconfig
with an admin client certificate, no nodes, no controllers. Every process is started in its
own session and stopped by pid, also when the caller fails.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import yaml
from kubernetes import client
from kubernetes import config as kube_config

from testbed import crds
from testbed import pki as pki_mod
from testbed.binaries import Binaries, ensure_binaries

FIELD_MANAGER = "gitsync-testbed"


class ControlPlaneError(RuntimeError):
    """The control plane did not come up; the message carries the tail of the process log."""


def _die_with_parent(argv: list[str]) -> list[str]:
    """Prefixes ``setpriv --pdeathsig SIGKILL`` (util-linux, in every Debian) so the process
    is killed when the one that started it dies: a test run killed with SIGKILL leaves no etcd
    or kube-apiserver behind. SIGKILL, not SIGTERM: kube-apiserver's graceful shutdown hangs
    once etcd is gone, and the data is throwaway anyway. The prefix execs, so the pid stays."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "SIGKILL", "--", *argv] if setpriv else argv


def spawn(
    name: str,
    argv: list[str],
    log: Path,
    env: dict[str, str] | None = None,
    *,
    append: bool = False,
) -> _Process:
    """Starts one test-bed process in its own session, dying with its parent, its output in
    ``log`` (added to it with ``append``); stopped by pid with :meth:`_Process.stop`."""
    log_file = log.open("ab" if append else "wb")
    popen = subprocess.Popen(
        _die_with_parent(argv),
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )
    return _Process(name, popen, log, log_file)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    log_file: IO[bytes]

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout)
        self.log_file.close()


@dataclass
class ControlPlane:
    """Start with :meth:`start` (or ``with``); :attr:`kubeconfig` is then usable by any client."""

    binaries: Binaries | None = None
    workdir: Path | None = None
    verbose: bool = True
    crds: bool = True  # install KubeRay's CRDs from the module cache
    kubeconfig: Path = field(init=False)
    api_url: str = field(init=False, default="")
    startup_seconds: float = field(init=False, default=0.0)
    _processes: list[_Process] = field(init=False, default_factory=list)
    # name → (argv, readiness probe, what ready means): a stopped process starts again as it
    # first did, on the same ports and data directory
    _how: dict[str, tuple[list[str], Any, str, float]] = field(init=False, default_factory=dict)
    _tmp: tempfile.TemporaryDirectory[str] | None = field(init=False, default=None)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> ControlPlane:
        if self.binaries is None:
            self.binaries = ensure_binaries(quiet=not self.verbose)
        if self.workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="gitsync-testbed-")
            self.workdir = Path(self._tmp.name)
        self.workdir.mkdir(parents=True, exist_ok=True)
        began = time.monotonic()
        try:
            certs = pki_mod.generate(self.workdir / "pki")
            etcd_url = self._start_etcd()
            self._start_apiserver(etcd_url, certs)
            self.kubeconfig = self._write_kubeconfig(certs)
            crds_began = time.monotonic()
            if self.crds:
                self.install_crds(self.binaries.kuberay_crds)
            crd_seconds = time.monotonic() - crds_began
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        self._log(
            f"control plane up in {self.startup_seconds:.1f} s "
            f"(CRDs {crd_seconds:.1f} s) at {self.api_url}; kubeconfig {self.kubeconfig}"
        )
        return self

    def stop(self) -> None:
        for process in reversed(self._processes):
            process.stop()
        self._processes.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def pids(self) -> dict[str, int]:
        return {p.name: p.popen.pid for p in self._processes}

    def stop_process(self, name: str) -> None:
        """Stops ``etcd`` or ``kube-apiserver`` by pid (SIGTERM, then SIGKILL), leaving its
        data directory and ports for :meth:`start_process`."""
        process = next(p for p in self._processes if p.name == name)
        process.stop()
        self._processes.remove(process)

    def start_process(self, name: str) -> None:
        """Starts a process :meth:`stop_process` stopped, as before, and waits until it is
        ready again (etcd healthy; kube-apiserver answering ``/readyz``)."""
        assert name not in self.pids, f"{name} is running"
        argv, probe, what, timeout = self._how[name]
        process = self._spawn(name, argv, append=True)
        # Back in its place: etcd stops after kube-apiserver (whose graceful shutdown hangs
        # without etcd until its SIGKILL).
        self._processes.remove(process)
        self._processes.insert(list(self._how).index(name), process)
        self._wait(process, probe, what, timeout)

    # -- clients ---------------------------------------------------------------------------

    def api_client(self) -> client.ApiClient:
        """A fresh client for this control plane (callers close it)."""
        configuration = client.Configuration()
        kube_config.load_kube_config(str(self.kubeconfig), client_configuration=configuration)
        return client.ApiClient(configuration)

    def token_kubeconfig(self, token: str, path: Path) -> Path:
        """A kubeconfig for this control plane that authenticates with a bearer ``token``
        instead of the admin certificate (a service account's, or a wrong one: 401)."""
        document = yaml.safe_load(self.kubeconfig.read_text())
        document["users"] = [{"name": "token", "user": {"token": token}}]
        document["contexts"] = [
            {"name": "token", "context": {"cluster": "testbed", "user": "token"}}
        ]
        document["current-context"] = "token"
        path.write_text(yaml.safe_dump(document))
        path.chmod(0o600)
        return path

    def service_account_kubeconfig(self, namespace: str, name: str, path: Path) -> Path:
        """Creates the ServiceAccount ``namespace/name`` (no RBAC: it may do nothing a
        Role does not grant) and writes a kubeconfig with a token for it (TokenRequest)."""
        with self.api_client() as api:
            core = client.CoreV1Api(api)
            with contextlib.suppress(client.ApiException):  # 409: it exists already
                core.create_namespaced_service_account(
                    namespace, {"metadata": {"name": name, "namespace": namespace}}
                )
            answer = core.create_namespaced_service_account_token(
                name, namespace, {"spec": {"expirationSeconds": 3600}}
            )
        return self.token_kubeconfig(answer.status.token, path)

    def kubectl(
        self, *args: str, check: bool = True, input_text: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        assert self.binaries is not None
        return subprocess.run(
            [str(self.binaries.kubectl), "--kubeconfig", str(self.kubeconfig), *args],
            input=input_text,
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )

    # -- internals -------------------------------------------------------------------------

    def _log(self, message: str) -> None:
        if self.verbose:
            sys.stderr.write(f"testbed: {message}\n")

    def _spawn(self, name: str, argv: list[str], *, append: bool = False) -> _Process:
        assert self.workdir is not None
        process = spawn(name, argv, self.workdir / f"{name}.log", append=append)
        self._processes.append(process)
        (self.workdir / f"{name}.pid").write_text(str(process.popen.pid))
        return process

    def _wait(self, process: _Process, probe: Any, what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        last_error = ""
        while time.monotonic() < deadline:
            if process.popen.poll() is not None:
                raise ControlPlaneError(
                    f"{process.name} exited with {process.popen.returncode} before {what}:\n"
                    f"{_tail(process.log)}"
                )
            try:
                if probe():
                    return
            except (OSError, urllib.error.URLError, ssl.SSLError) as exc:
                last_error = str(exc)
            time.sleep(0.1)
        raise ControlPlaneError(
            f"{process.name} did not become {what} in {timeout:.0f} s ({last_error}):\n"
            f"{_tail(process.log)}"
        )

    def _start_etcd(self) -> str:
        assert self.binaries is not None
        assert self.workdir is not None
        client_port, peer_port = free_port(), free_port()
        client_url, peer_url = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
        process = self._spawn(
            "etcd",
            [
                str(self.binaries.etcd),
                "--name=testbed",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=testbed={peer_url}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )

        def healthy() -> bool:
            with urllib.request.urlopen(f"{client_url}/health", timeout=2) as response:  # noqa: S310
                return bool(json.load(response).get("health") == "true")

        self._how["etcd"] = (list(process.popen.args), healthy, "healthy", 60.0)  # type: ignore[arg-type]
        self._wait(process, healthy, "healthy")
        return client_url

    def _start_apiserver(self, etcd_url: str, certs: pki_mod.Pki) -> None:
        assert self.binaries is not None
        assert self.workdir is not None
        port = free_port()
        self.api_url = f"https://127.0.0.1:{port}"
        process = self._spawn(
            "kube-apiserver",
            [
                str(self.binaries.kube_apiserver),
                f"--etcd-servers={etcd_url}",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={port}",
                f"--tls-cert-file={certs.serving_cert}",
                f"--tls-private-key-file={certs.serving_key}",
                f"--client-ca-file={certs.ca_cert}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={certs.sa_public}",
                f"--service-account-signing-key-file={certs.sa_private}",
                # A documentation range: the test bed has no nodes and no Service traffic.
                "--service-cluster-ip-range=10.96.0.0/16",
                "--authorization-mode=RBAC",
                "--endpoint-reconciler-type=none",
                "--disable-admission-plugins=ServiceAccount",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
            ],
        )
        context = ssl.create_default_context(cafile=str(certs.ca_cert))
        context.load_cert_chain(str(certs.admin_cert), str(certs.admin_key))

        def ready() -> bool:
            request = urllib.request.Request(f"{self.api_url}/readyz")  # noqa: S310
            try:
                with urllib.request.urlopen(request, timeout=2, context=context) as response:  # noqa: S310
                    return bool(response.status == 200)
            except urllib.error.HTTPError:
                return False

        self._how["kube-apiserver"] = (list(process.popen.args), ready, "ready (/readyz)", 90.0)  # type: ignore[arg-type]
        self._wait(process, ready, "ready (/readyz)", timeout=90)

    def _write_kubeconfig(self, certs: pki_mod.Pki) -> Path:
        assert self.workdir is not None

        def b64(path: Path) -> str:
            return base64.b64encode(path.read_bytes()).decode()

        document = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "testbed",
                    "cluster": {
                        "server": self.api_url,
                        "certificate-authority-data": b64(certs.ca_cert),
                    },
                }
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {
                        "client-certificate-data": b64(certs.admin_cert),
                        "client-key-data": b64(certs.admin_key),
                    },
                }
            ],
            "contexts": [{"name": "testbed", "context": {"cluster": "testbed", "user": "admin"}}],
            "current-context": "testbed",
        }
        path = self.workdir / "kubeconfig"
        path.write_text(yaml.safe_dump(document))
        path.chmod(0o600)
        return path

    def install_crds(self, directory: Path, timeout: float = 60.0) -> list[str]:
        """Server-side applies every CRD in ``directory`` and waits until each is Established
        and served by discovery. The RayService CRD is about 1 MB: client-side apply would
        overflow the last-applied annotation, so this never uses it."""
        names: list[str] = []
        with self.api_client() as api:
            extensions = client.ApiextensionsV1Api(api)
            for path in sorted(directory.glob("*.yaml")):
                for document in crds.documents(path):
                    if document.get("kind") != "CustomResourceDefinition":
                        continue
                    name = document["metadata"]["name"]
                    extensions.patch_custom_resource_definition(
                        name,
                        document,
                        field_manager=FIELD_MANAGER,
                        force=True,
                        _content_type="application/apply-patch+yaml",
                    )
                    names.append(name)
            deadline = time.monotonic() + timeout
            pending = set(names)
            while pending and time.monotonic() < deadline:
                for name in list(pending):
                    # Read as JSON, not as the client's models: turning a 1 MB schema into
                    # model objects costs about a second of CPU per read.
                    response = extensions.read_custom_resource_definition(
                        name, _preload_content=False
                    )
                    crd = json.loads(response.data)
                    status = crd.get("status") or {}
                    conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
                    if conditions.get("Established") == "True" and self._discovered(api, crd):
                        pending.discard(name)
                if pending:
                    time.sleep(0.1)
            if pending:
                raise ControlPlaneError(
                    f"CRDs not established in {timeout:.0f} s: {sorted(pending)}"
                )
        return names

    @staticmethod
    def _discovered(api: client.ApiClient, crd: dict[str, Any]) -> bool:
        spec = crd["spec"]
        group, plural = spec["group"], spec["names"]["plural"]
        versions = [v["name"] for v in spec["versions"] if v.get("served")]
        for version in versions:
            try:
                resources = client.CustomObjectsApi(api).get_api_resources(group, version)
            except client.ApiException:
                return False
            if plural not in {r.name for r in resources.resources}:
                return False
        return True
