"""Leader election against the test bed's real API server: stepping down when renewals hang,
taking over an expired Lease, not stealing a live one whatever the holder's clock says, and
releasing on shutdown. Short durations (seconds) keep it quick; the ratios are the shipped ones.
"""

from __future__ import annotations

import datetime
import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from kubernetes import client

from gitsync.kube.client import api_client
from gitsync.kube.lease import LEADER_URL, LeaderElector
from gitsync.kube.peers import LeaderPods
from testbed.controlplane import ControlPlane

LEASE = "gitsync-lease-test"


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class Campaign:
    """An elector running in its own thread, recording when it started and stopped leading."""

    def __init__(self, api: client.ApiClient, namespace: str, identity: str, **timing: float):
        self.started: list[float] = []
        self.stopped: list[float] = []
        self.elector = LeaderElector(
            api, namespace, LEASE, identity,
            lease_seconds=timing.get("lease", 3.0), renew_deadline=timing.get("renew", 2.0),
            retry=timing.get("retry", 0.3),
            on_started=lambda: self.started.append(time.monotonic()),
            on_stopped=lambda: self.stopped.append(time.monotonic()),
            advertise_url=f"http://{identity}:8080",
        )  # fmt: skip
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.elector.run, args=(self.stop,), daemon=True)

    def __enter__(self) -> Campaign:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


def lease(api: client.ApiClient, namespace: str) -> client.V1Lease:
    return client.CoordinationV1Api(api).read_namespaced_lease(LEASE, namespace)


def hold(api: client.ApiClient, namespace: str, holder: str, renewed: datetime.datetime) -> None:
    """Writes the Lease as another replica (``holder``) renewing it, its clock saying
    ``renewed``; two-second duration."""
    coordination = client.CoordinationV1Api(api)
    moment = renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    body = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": LEASE, "namespace": namespace},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 2, "renewTime": moment,
                 "acquireTime": moment},
    }  # fmt: skip
    try:
        current = coordination.read_namespaced_lease(LEASE, namespace)
    except client.ApiException as exc:
        if exc.status != 404:
            raise
        coordination.create_namespaced_lease(namespace, body)
        return
    body["metadata"]["resourceVersion"] = current.metadata.resource_version
    coordination.replace_namespaced_lease(LEASE, namespace, body)


class StallingProxy:
    """A TCP proxy in front of the API server that can stop passing bytes on (a partition, or
    an API server that accepts connections and never answers)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.stalled = threading.Event()
        self.closed = False
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                downstream, _ = self.listener.accept()
                upstream = socket.create_connection(self.target)
            except OSError:
                return
            self.sockets += [downstream, upstream]
            for source, sink in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                while self.stalled.is_set() and not self.closed:
                    time.sleep(0.02)  # hold the bytes: the peer waits for an answer
                sink.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def proxied(control_plane: ControlPlane) -> Iterator[tuple[client.ApiClient, StallingProxy]]:
    """The agent's own API client (its transport retries and timeouts), through the proxy."""
    through = api_client(control_plane.kubeconfig)
    target = urlsplit(through.configuration.host)
    proxy = StallingProxy((target.hostname or "127.0.0.1", target.port or 443))
    through.configuration.host = f"https://127.0.0.1:{proxy.port}"
    with through:
        yield through, proxy
    proxy.close()


def test_a_leader_whose_renewals_hang_steps_down_before_its_lease_can_expire(
    api: client.ApiClient, namespace: str, proxied: tuple[client.ApiClient, StallingProxy]
) -> None:
    through, proxy = proxied
    with Campaign(through, namespace, "leader", lease=3.0, renew=2.0, retry=0.3) as leader:
        wait_for(lambda: leader.started, 10, "leadership")
        last_renewal = lease(api, namespace).spec.renew_time
        proxy.stalled.set()  # every API call from now on hangs
        stalled = time.monotonic()
        wait_for(lambda: not leader.elector.is_leading(), 5, "is_leading() to turn false")
        # Not leading any more within renew_deadline of the last renewal (plus one retry: the
        # last renewal may have started that long before the stall).
        assert time.monotonic() - stalled <= 2.0 + 0.3 + 0.2
        # The renewal stuck in its API call times out, and the agent is told to stop.
        wait_for(lambda: leader.stopped, 5, "on_stopped")
        assert leader.stopped[0] - stalled < 3.0  # before the Lease (3 s) can expire
        assert lease(api, namespace).spec.renew_time == last_renewal  # never renewed since
        proxy.stalled.clear()


def test_a_standby_takes_over_an_expired_lease_whatever_the_dead_holders_clock_said(
    api: client.ApiClient, namespace: str
) -> None:
    # The dead holder's clock ran an hour ahead: judged by renewTime, this Lease would look
    # live for an hour. Judged by when the standby saw it change, it expires in 2 s.
    hold(api, namespace, "dead", datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1))
    began = time.monotonic()
    with Campaign(api, namespace, "standby", lease=3.0, renew=2.0, retry=0.3) as standby:
        wait_for(lambda: standby.started, 10, "the takeover")
        took = standby.started[0] - began
        assert 2.0 <= took < 2.0 + 1.5, took
        current = lease(api, namespace)
        assert current.spec.holder_identity == "standby"
        assert current.spec.lease_transitions == 1
        assert current.metadata.annotations[LEADER_URL] == "http://standby:8080"


def test_a_skewed_renew_time_does_not_let_a_standby_steal_a_live_lease(
    api: client.ApiClient, namespace: str
) -> None:
    """A live holder whose clock is an hour behind: every renewTime it writes is an hour old.
    The standby sees the record change at every renewal, so the Lease stays the holder's."""
    alive, held = threading.Event(), threading.Event()
    alive.set()

    def renew() -> None:
        while alive.is_set():
            skewed = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
            hold(api, namespace, "skewed", skewed)
            held.set()
            time.sleep(0.3)

    holder = threading.Thread(target=renew, daemon=True)
    holder.start()
    try:
        wait_for(held.is_set, 10, "the holder")
        with Campaign(api, namespace, "standby", lease=3.0, renew=2.0, retry=0.3) as standby:
            time.sleep(5.0)  # more than two lease durations
            assert standby.started == []
            assert lease(api, namespace).spec.holder_identity == "skewed"
            alive.clear()  # the holder dies: now the Lease expires
            holder.join(5)
            wait_for(lambda: standby.started, 10, "the takeover once the holder stopped")
    finally:
        alive.clear()
        holder.join(5)


def test_the_leader_releases_the_lease_on_shutdown(api: client.ApiClient, namespace: str) -> None:
    with Campaign(api, namespace, "leader") as leader:
        wait_for(lambda: leader.started, 10, "leadership")
        assert lease(api, namespace).metadata.annotations[LEADER_URL] == "http://leader:8080"
    assert leader.stopped
    assert not leader.elector.is_leading()
    released = lease(api, namespace)
    assert released.spec.holder_identity in ("", None)
    assert LEADER_URL not in (released.metadata.annotations or {})
    # A standby takes a released Lease at its first try, without waiting out the duration.
    began = time.monotonic()
    with Campaign(api, namespace, "next") as successor:
        wait_for(lambda: successor.started, 5, "the successor")
        assert successor.started[0] - began < 1.0


def make_pod(api: client.ApiClient, namespace: str, name: str, account: str, ip: str) -> None:
    """A pod as the API server holds it once scheduled: no kubelet runs it, its IP is written
    to the status as the kubelet would."""
    core = client.CoreV1Api(api)
    try:
        core.create_namespaced_service_account(namespace, {"metadata": {"name": account}})
    except client.ApiException as exc:
        if exc.status != 409:
            raise
    spec = {"serviceAccountName": account, "containers": [{"name": "agent", "image": "gitsync"}]}
    core.create_namespaced_pod(namespace, {"metadata": {"name": name}, "spec": spec})
    if ip:
        core.patch_namespaced_pod_status(name, namespace, {"status": {"podIP": ip}})


def test_a_standby_relays_only_to_the_lease_holders_own_pod(
    api: client.ApiClient, namespace: str
) -> None:
    """Unless webhooks.relayNetworks is set, the leader URL must be the IP of the Lease holder's
    pod, a pod running as this replica does: a Lease writer cannot send relays elsewhere."""
    make_pod(api, namespace, "gitsync-a", "gitsync", "10.244.0.11")
    make_pod(api, namespace, "gitsync-b", "gitsync", "10.244.0.12")
    make_pod(api, namespace, "intruder", "default", "10.244.0.13")
    make_pod(api, namespace, "pending", "gitsync", "")
    standby = LeaderPods(api, namespace, "gitsync-b")
    assert standby.refused("gitsync-a", "http://10.244.0.11:8080") is None
    cases = [
        ("gitsync-a", "http://10.244.0.99:8080", "not the address of the holder's pod"),
        ("gitsync-a", "http://gitsync-a:8080", "names no IP address"),
        ("intruder", "http://10.244.0.13:8080", "runs as service account 'default'"),
        ("nobody", "http://10.244.0.14:8080", "'nobody' is no pod in the Lease's namespace"),
        ("pending", "http://10.244.0.15:8080", "(none yet)"),
    ]
    for holder, url, why in cases:
        assert why in str(standby.refused(holder, url)), (holder, url)
    # A replica with no pod of its own (a local run) relays to this machine only.
    local = LeaderPods(api, namespace, "laptop")
    assert local.refused("gitsync-a", "http://127.0.0.1:8080") is None
    assert "runs outside a pod" in str(local.refused("gitsync-a", "http://10.244.0.11:8080"))
    # Without read access to pods, nothing is relayed, and the reason says so.
    stranger = client.ApiClient(
        api.configuration, header_name="Impersonate-User", header_value="someone-else"
    )
    blind = LeaderPods(stranger, namespace, "gitsync-b")
    assert "cannot read the Lease holder's pod" in str(
        blind.refused("gitsync-a", "http://10.244.0.11:8080")
    )
