"""Push and pull-request webhooks from Gitea, GitHub and GitLab: verify, then say what to do.

Pure: a request (headers, body) and the shared secret in, a :class:`Verdict` out. Every
request is authenticated before its body is parsed — HMAC-SHA256 of the raw body
(``X-Gitea-Signature``: hex; ``X-Hub-Signature-256``: ``sha256=<hex>``) or GitLab's
``X-Gitlab-Token`` — compared in constant time. A webhook only ever triggers a poll of the
configured repository and branch; nothing in its body is trusted as desired state.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

MAX_BODY_BYTES = 1 << 20  # push payloads of a manifests repo are a few KiB
# Event names a metric label may carry; anything else is counted as "other", so a flood of
# made-up X-*-Event headers cannot grow the metrics without bound.
KNOWN_EVENTS = frozenset(
    {"push", "pull_request", "ping", "push hook", "merge request hook", "create", "delete"}
)


def event_label(event: str) -> str:
    """The metric label for an event header: the known names, "-" when absent, else "other"."""
    if not event:
        return "-"
    return event.lower() if event.lower() in KNOWN_EVENTS else "other"


class Action(enum.StrEnum):
    POLL = "poll"  # a push to the watched branch: poll now
    PREVIEWS = "previews"  # a pull request opened/updated/closed: reconcile previews now
    IGNORE = "ignore"  # authentic, but nothing to do (another branch, a ping, other events)


@dataclass(frozen=True)
class Verdict:
    status: int  # the HTTP status to answer
    action: Action
    provider: str
    event: str
    reason: str
    delivery: str = ""


def _reject(status: int, provider: str, event: str, reason: str) -> Verdict:
    return Verdict(status, Action.IGNORE, provider, event, reason)


def provider_of(headers: Mapping[str, str]) -> tuple[str, str]:
    """(provider, event) from the headers. Gitea also sends X-GitHub-Event; look at it first."""
    if "x-gitea-event" in headers:
        return "gitea", headers["x-gitea-event"]
    if "x-github-event" in headers:
        return "github", headers["x-github-event"]
    if "x-gitlab-event" in headers:
        return "gitlab", headers["x-gitlab-event"]
    return "unknown", ""


def _signed(provider: str, headers: Mapping[str, str], body: bytes, secret: bytes) -> str | None:
    """None when authentic, else why not."""
    if provider == "gitlab":
        token = headers.get("x-gitlab-token")
        if not token:
            return "missing X-Gitlab-Token"
        return None if hmac.compare_digest(token.encode(), secret) else "wrong X-Gitlab-Token"
    digest = hmac.new(secret, body, hashlib.sha256).hexdigest()
    if provider == "gitea" and "x-gitea-signature" in headers:
        given = headers["x-gitea-signature"]
    else:
        given = headers.get("x-hub-signature-256", "").removeprefix("sha256=")
    if not given:
        return "missing signature"
    return None if hmac.compare_digest(given.encode(), digest.encode()) else "bad signature"


# A standby relays a verified webhook to the leader without the forge's credentials (a
# GitLab token is the secret itself): it signs the body, the event, the delivery ID and the
# time with a key derived from the webhook secret, and the leader checks that instead.
RELAY_SIGNATURE = "x-gitsync-relay-signature"
RELAY_TIME = "x-gitsync-relay-time"
# How old a relayed request may be (the replicas' clocks are the nodes', NTP-synchronised):
# a captured one replays a poll at most within this, and its delivery ID is deduplicated.
RELAY_WINDOW_SECONDS = 60.0
# The headers a relay carries: what judge reads besides credentials.
RELAY_HEADERS = frozenset(
    {
        "x-gitea-event",
        "x-github-event",
        "x-gitlab-event",
        "x-gitea-delivery",
        "x-github-delivery",
        "x-gitlab-event-uuid",
        "content-type",
    }
)


def _relay_key(secret: bytes) -> bytes:
    """Not the webhook secret itself: a relay signature is never a valid forge signature."""
    return hmac.new(secret, b"gitsync relay v1", hashlib.sha256).digest()


def relay_signature(headers: Mapping[str, str], body: bytes, secret: bytes, when: str) -> str:
    """The HMAC-SHA256 (hex) a relay of ``body`` with these (lower-case) headers carries."""
    signed = [when] + [f"{name}:{headers.get(name, '')}" for name in sorted(RELAY_HEADERS)]
    message = "\n".join(signed).encode() + b"\n" + body
    return hmac.new(_relay_key(secret), message, hashlib.sha256).hexdigest()


def relay_headers(
    headers: Mapping[str, str], body: bytes, secret: bytes, now: float
) -> dict[str, str]:
    """What a standby sends the leader: the event headers, signed; no forge credential."""
    kept = {k: v for k, v in headers.items() if k in RELAY_HEADERS}
    when = str(int(now))
    return {**kept, RELAY_TIME: when, RELAY_SIGNATURE: relay_signature(kept, body, secret, when)}


def _relayed(headers: Mapping[str, str], body: bytes, secret: bytes, now: float) -> str | None:
    """None when a relayed request is authentic and fresh, else why not."""
    when = headers.get(RELAY_TIME, "")
    if not when.isdigit() or abs(now - int(when)) > RELAY_WINDOW_SECONDS:
        return f"relay time missing or more than {RELAY_WINDOW_SECONDS:.0f} s off"
    given = headers.get(RELAY_SIGNATURE, "")
    expected = relay_signature(headers, body, secret, when)
    return None if hmac.compare_digest(given.encode(), expected.encode()) else "bad relay signature"


def same_repository(a: str, b: str) -> bool:
    """Whether two clone URLs (https, ssh, scp-like) name the same host and path."""
    return _identity(a) == _identity(b)


def _identity(url: str) -> tuple[str, str]:
    if "://" not in url and "@" in url and ":" in url:  # git@host:owner/repo.git
        host, _, path = url.split("@", 1)[1].partition(":")
    else:
        parts = urlsplit(url)
        host, path = (parts.hostname or "").lower(), parts.path
    return host.lower(), path.strip("/").removesuffix(".git").lower()


def _urls(payload: Mapping[str, Any]) -> list[str]:
    repo = payload.get("repository") or payload.get("project") or {}
    keys = ("clone_url", "html_url", "ssh_url", "git_http_url", "git_ssh_url", "web_url", "url")
    return [str(repo[k]) for k in keys if isinstance(repo.get(k), str)]


def judge(
    headers: Mapping[str, str],
    body: bytes,
    secret: bytes,
    repository_url: str,
    branch: str,
    *,
    length: int | None = None,
    now: float | None = None,
) -> Verdict:
    """What to answer and do. ``headers`` keys are lower-case; ``length`` is the declared
    size of a body too large to have been read (``body`` is then empty). A request another
    replica relayed (``RELAY_SIGNATURE``) is authenticated by its relay signature at ``now``
    (epoch seconds; without it, relays are refused) instead of the forge's credentials."""
    provider, event = provider_of(headers)
    if provider == "unknown":
        return _reject(400, provider, event, "not a Gitea, GitHub or GitLab webhook")
    if (len(body) if length is None else length) > MAX_BODY_BYTES:
        return _reject(413, provider, event, f"body larger than {MAX_BODY_BYTES} bytes")
    if RELAY_SIGNATURE in headers:
        why = _relayed(headers, body, secret, now) if now is not None else "relays not accepted"
    else:
        why = _signed(provider, headers, body, secret)
    if why:
        return _reject(401, provider, event, why)
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
        return _reject(400, provider, event, "body is not JSON (or is nested too deeply)")
    if not isinstance(payload, dict):
        return _reject(400, provider, event, "body is not a JSON object")
    delivery = (
        headers.get("x-gitea-delivery")
        or headers.get("x-github-delivery")
        or headers.get("x-gitlab-event-uuid")
        or ""
    )
    action, status, reason = _route(event.lower(), payload, repository_url, branch)
    return Verdict(status, action, provider, event, reason, delivery)


def _route(
    kind: str, payload: Mapping[str, Any], repository_url: str, branch: str
) -> tuple[Action, int, str]:
    """An authentic event → (what to do, HTTP status, why)."""
    if kind == "ping":
        return Action.IGNORE, 200, "pong"
    is_push = kind in ("push", "push hook")
    is_pr = kind in ("pull_request", "merge request hook")
    if not (is_push or is_pr):
        return Action.IGNORE, 202, f"event {kind!r} ignored"
    if not any(same_repository(url, repository_url) for url in _urls(payload)):
        return Action.IGNORE, 202, "another repository"
    if is_pr:
        return Action.PREVIEWS, 202, "pull request"
    ref = payload.get("ref")
    if ref != f"refs/heads/{branch}":
        return Action.IGNORE, 202, f"push to {ref}, not {branch}"
    return Action.POLL, 202, f"push to {branch}"
