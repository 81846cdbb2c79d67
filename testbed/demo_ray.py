"""``make demo RAY=real``: the demo's story on real Ray Serve behind the real KubeRay operator.

Instead of the KubeRay simulator, the test bed's real-Ray mode (testbed/rayhost.py,
testbed/operator.py, as tests/integration/test_real_ray.py runs it): the KubeRay operator
v1.5.0 reconciles the RayServices, a kubelet stand-in starts a real ``ray start --head`` from
the test bed's Ray venv for every head pod the operator creates (its process group SIGKILLed
when the pod goes, never ``ray stop``), the operator's dashboard and health calls reach those
heads, and a kube-proxy stand-in serves each ``<service>-serve-svc`` on a loopback port, so the
story can show Serve's own answers.

The repository the demo seeds is a variant of examples/plain-layout/ that real Ray on two cores
can run (:func:`variant`, each change checked against the example text and named in a comment
at the top of every file):

- every ``import_path`` gets the prefix ``testbed.serve_apps.demo.``: the examples' apps are a
  team's own, fetched from ``working_dir`` archives on example.com that do not exist;
  testbed/serve_apps/demo/ has a module for each import path, with the same deployments, on the
  heads' ``PYTHONPATH``. A typo in an import path stays a typo (a real ModuleNotFoundError);
- the remote ``working_dir`` goes (the heads have no network), other ``runtime_env`` keys stay;
- a replica asks for 0.1 CPU instead of 1, and every deployment runs one replica (production's
  3 and 4 would be a Ray worker process each, ~150 MB and a second of CPU to start): two
  logical CPUs per head run every app;
- the summarizer is left out: it asks Serve for a GPU (``num_gpus: 1``) and there is none, so
  its replica would never be placed. The pull-request chapter previews the embedder instead.

Images and ``rayVersion`` stay as the examples have them: every head runs the test bed's Ray
2.60.0 whatever the image says (an image change still makes KubeRay build a new cluster).
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client

from testbed.binaries import Binaries
from testbed.operator import FakeEndpoints, FakeKubelet, Operator, ServeProxy, ServeState
from testbed.rayhost import RayHead, RayHosts, ServiceProxy

APPS = "testbed.serve_apps.demo"
LEFT_OUT = ("summarizer",)  # asks for a GPU
# Two environments of two services, and a swap's second cluster in each, and a preview: six
# heads at most (a seventh head pod would wait, Pending, for one to go).
MAX_HEADS = 6
ATTEMPTS = 4
HEADER = (
    "# For real Ray on two cores (make demo RAY=real, testbed/demo_ray.py): import paths under\n"
    "# testbed.serve_apps.demo, no remote working_dir, 0.1 CPU and one replica per deployment.\n"
)


def import_path(path: str) -> str:
    """An example import path as the real-Ray variant names it."""
    return f"{APPS}.{path}"


def variant(text: str) -> str:
    """One example RayService file for real Ray on two cores (the module's docstring)."""
    lines = text.splitlines()
    kept: list[str] = []
    for number, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("working_dir:"):
            continue
        if stripped == "runtime_env:":
            indent = len(line) - len(line.lstrip())
            rest = [
                other
                for other in lines[number + 1 :]
                if other.strip() and not other.strip().startswith("working_dir:")
            ]
            if not rest or len(rest[0]) - len(rest[0].lstrip()) <= indent:
                continue  # only a working_dir under it: the whole runtime_env goes
        kept.append(line)
    result = "\n".join(kept) + "\n"
    result, imports = re.subn(r"(import_path: )(\S+)", rf"\g<1>{APPS}.\g<2>", result)
    result = re.sub(r"(\n\s+num_cpus: )1\n", r"\g<1>0.1\n", result)
    result = re.sub(r"(\n\s+num_replicas: )\d+\n", r"\g<1>1\n", result)
    if not imports or "working_dir" in result or re.search(r"num_cpus: [1-9]", result):
        raise ValueError("the example no longer reads as the real-Ray variant expects")
    return HEADER + result


def seed_variant(work: Path) -> list[str]:
    """Rewrites the seeded example repository at ``work``; returns the files left out."""
    removed = []
    for path in sorted(work.glob("environments/*/*.yaml")):
        if path.stem in LEFT_OUT:
            path.unlink()
            removed.append(str(path.relative_to(work)))
        else:
            path.write_text(variant(path.read_text()))
    return removed


@dataclass
class Traffic:
    """GET requests through a serve-svc stand-in, one after another; every answer counted."""

    url: str
    answers: list[tuple[int, str]] = field(default_factory=list)  # (HTTP status, cluster)
    stop_event: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Traffic:
        threading.Thread(target=self._run, name="demo-traffic", daemon=True).start()
        return self

    def stop(self) -> None:
        self.stop_event.set()

    def _run(self) -> None:
        while not self.stop_event.is_set():
            try:
                with urllib.request.urlopen(self.url, timeout=30) as response:  # noqa: S310
                    body = json.load(response)
                    self.answers.append((response.status, str(body.get("cluster"))))
            except urllib.error.HTTPError as exc:
                self.answers.append((exc.code, ""))
            except (OSError, ValueError):
                self.answers.append((0, ""))
            self.stop_event.wait(0.1)

    @property
    def failed(self) -> int:
        return sum(1 for status, _ in self.answers if status != 200)

    def clusters(self) -> list[str]:
        """The clusters that answered, in order, each once per run of answers."""
        order: list[str] = []
        for status, cluster in list(self.answers):
            if status == 200 and (not order or order[-1] != cluster):
                order.append(cluster)
        return order


@dataclass
class RealRay:
    """The real operator, the Ray heads and the stand-ins around them, running."""

    hosts: RayHosts
    services: ServiceProxy
    proxy: ServeProxy
    kubelet: FakeKubelet
    endpoints: FakeEndpoints
    operator: Operator

    def errors(self) -> list[str]:
        """Why a head could not start or stopped answering (the story stops on the first)."""
        return [*self.hosts.errors, *self.kubelet.errors, *self.services.errors]

    def url(self, namespace: str, service: str) -> str:
        """The loopback URL of ``<service>-serve-svc.<namespace>:8000``."""
        return self.services.url(namespace, service, timeout=60)

    def get(self, namespace: str, service: str, path: str) -> tuple[int, str]:
        """One request through the serve Service: its status and body."""
        try:
            with urllib.request.urlopen(  # noqa: S310 (a loopback URL of our own)
                self.url(namespace, service) + path, timeout=30
            ) as response:
                return int(response.status), response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
        except (OSError, TimeoutError) as exc:
            return 0, str(exc)

    def head(self, namespace: str, cluster: str) -> RayHead | None:
        return self.hosts.by_cluster(namespace, cluster)

    def pids(self) -> dict[str, int]:
        process = self.operator._process
        return {"kuberay-operator": process.popen.pid} if process else {}


@contextlib.contextmanager
def real_ray(
    api: client.ApiClient,
    binaries: Binaries,
    kubeconfig: Path,
    namespaces: list[str],
    workdir: Path,
) -> Iterator[RealRay]:
    """Starts the operator and the stand-ins; on exit stops them all and every Ray head."""
    # Four starts per head pod before its exit stops the story: `ray start` gives its raylet
    # a fixed 30 s to register, which a 2-core machine under heavy load can miss more than
    # once in a story that starts seven heads.
    hosts = RayHosts(
        binaries.ray_python, workdir / "ray-heads", max_heads=MAX_HEADS, attempts=ATTEMPTS
    )
    with contextlib.ExitStack() as stack:
        stack.callback(lambda: record_heads(hosts, workdir / "ray-heads.txt"))  # runs last
        proxy = ServeProxy(ServeState(), hosts).start()
        stack.callback(proxy.stop)
        # Registered before the kubelet's stop, so it runs after it: no head starts once
        # they are being stopped.
        stack.callback(hosts.stop_all)
        kubelet = FakeKubelet(api, namespaces, hosts=hosts)
        kubelet.start()
        stack.callback(kubelet.stop)
        endpoints = FakeEndpoints(api, namespaces)
        endpoints.start()
        stack.callback(endpoints.stop)
        services = ServiceProxy(api, hosts, namespaces).start()
        stack.callback(services.stop)
        operator = Operator(
            binaries.kuberay_operator, kubeconfig, namespaces, proxy.port, workdir / "operator"
        )
        stack.callback(operator.stop)
        operator.start()
        yield RealRay(hosts, services, proxy, kubelet, endpoints, operator)


def record_heads(hosts: RayHosts, path: Path) -> None:
    """``path``: every head started, ``namespace/pod pid tag`` a line (the tag is in the
    environment of each of its processes: what a check for leftovers looks for)."""
    with hosts.lock:
        heads = [*hosts.stopped, *hosts.heads.values()]
    path.write_text(
        "".join(f"{h.namespace}/{h.pod} {h.process.popen.pid} {h.tag}\n" for h in heads)
    )


def answer_line(status: int, body: str) -> str:
    """Serve's answer as the story prints it: the JSON on one line, or the error."""
    if status != 200:
        return f"HTTP {status}: {body.strip()[:300]}"
    try:
        return json.dumps(json.loads(body))
    except ValueError:
        return body.strip()[:300]


def answer_field(body: str, key: str) -> Any:
    try:
        return json.loads(body).get(key)
    except (ValueError, AttributeError):
        return None
