"""Relaying a verified webhook from a standby replica to the leader.

``deploy/`` runs two replicas behind one Service, so a forge's push lands on a standby about
half of the time, and only the leader polls. The standby forwards the request — the body
and the event headers, signed with a key derived from the webhook secret, never the forge's
token or signature, so the leader authenticates it again and deduplicates its delivery ID — to
the URL the leader published on its Lease (:data:`gitsync.kube.lease.LEADER_URL`), and
answers with the leader's answer. Nothing is retried here: the caller answers 503 with
Retry-After, and the forge's redelivery (or the next poll) picks the push up.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

from gitsync.webhooks import relay_headers

# Marks a relayed request; a replica that receives one and does not lead answers 503 rather
# than relaying again, so two replicas that disagree about the leader cannot bounce a request.
RELAYED = "x-gitsync-relayed"
# Under a forge's own webhook timeout (Gitea waits 5 s, GitHub 10 s), so the forge gets the
# standby's 503 rather than a timeout. The leader only triggers a poll before it answers, but a
# busy leader (a rollout of many services on a loaded node) can take seconds to answer.
TIMEOUT = 4.0
_ANSWER_BYTES = 64 << 10


def outside(base: str, networks: Sequence[str]) -> str | None:
    """Why a standby must not relay to the leader URL ``base`` (None: it may): with
    ``webhooks.relayNetworks``, its host must be an IP address inside one of them (a name
    could resolve anywhere)."""
    if not networks:
        return None
    if (address := _address(base)) is None:
        return f"the leader URL {base!r} on the Lease names no IP address (webhooks.relayNetworks)"
    if any(address in ipaddress.ip_network(n, strict=False) for n in networks):
        return None
    return f"the leader URL {base!r} on the Lease is outside webhooks.relayNetworks"


def _address(base: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(urlsplit(base).hostname or "")
    except ValueError:
        return None


def not_the_holder(
    base: str, holder: str, pod: Mapping[str, str] | None, own_account: str
) -> str | None:
    """Why a standby must not relay to ``base`` by default (None: it may). ``pod`` is the Lease
    holder's pod as read from the API (``ip``, ``serviceAccount``; None: no such pod in the
    Lease's namespace) and ``own_account`` this replica's own service account: the URL must
    name that pod's IP, and the pod must run as this replica does. Whoever may write the
    Lease can then point relays only at a gitsync replica, never at an address of their own."""
    if (address := _address(base)) is None:
        return f"the leader URL {base!r} on the Lease names no IP address"
    if pod is None:
        return f"the Lease holder {holder!r} is no pod in the Lease's namespace"
    if pod.get("ip") != str(address):
        return (
            f"the leader URL {base!r} on the Lease is not the address of the holder's pod "
            f"{holder!r} ({pod.get('ip') or 'none yet'})"
        )
    if pod.get("serviceAccount") != own_account:
        return (
            f"the Lease holder's pod {holder!r} runs as service account "
            f"{pod.get('serviceAccount')!r}, not as this replica ({own_account!r})"
        )
    return None


def not_loopback(base: str) -> str | None:
    """Why a replica that runs outside a pod must not relay to ``base`` (None: it may): with
    no pod to check the holder against, only a leader on this machine (a loopback address)."""
    address = _address(base)
    if address is not None and address.is_loopback:
        return None
    return (
        f"the leader URL {base!r} on the Lease is not a loopback address, and this replica "
        "runs outside a pod, so it cannot check the holder (set webhooks.relayNetworks)"
    )


def webhook_url(base: str) -> str:
    """The leader's webhook endpoint under the base URL it published."""
    return base.rstrip("/") + "/webhooks"


def relay(
    base: str,
    headers: Mapping[str, str],
    body: bytes,
    secret: bytes,
    *,
    now: float,
    timeout: float = TIMEOUT,
) -> tuple[int, dict[str, object]] | None:
    """POSTs the webhook to the leader at ``base``; its (status, JSON answer), or None when it
    could not be reached or did not answer in time. Only the event headers go, signed with a
    key derived from ``secret`` (:func:`gitsync.webhooks.relay_headers`): never the forge's
    token or signature, whatever URL the Lease names."""
    parts = urlsplit(webhook_url(base))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    connection: http.client.HTTPConnection = (
        http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout)
        if parts.scheme == "https"
        else http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    )
    lower = {k.lower(): v for k, v in headers.items()}
    forwarded = relay_headers(lower, body, secret, now)
    forwarded[RELAYED] = "1"
    try:
        connection.request("POST", parts.path, body=body, headers=forwarded)
        response = connection.getresponse()
        text = response.read(_ANSWER_BYTES)
        status = response.status
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        connection.close()
    try:
        answer = json.loads(text)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        answer = {"result": "relayed", "reason": "the leader answered without JSON"}
    return status, answer
