"""Webhook verification: signatures (Gitea hex HMAC, GitHub sha256=, GitLab token) compared in
constant time; what each authentic event makes the agent do."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from gitsync.webhooks import MAX_BODY_BYTES, Action, judge, same_repository

SECRET = b"s3cret"
REPO = "https://git.example.com/platform/ray-services.git"


def push(ref: str = "refs/heads/main", url: str = REPO) -> bytes:
    return json.dumps({"ref": ref, "repository": {"clone_url": url}}).encode()


def sign(body: bytes, secret: bytes = SECRET) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def gitea(body: bytes, event: str = "push", signature: str | None = None) -> dict[str, str]:
    return {
        "x-gitea-event": event,
        "x-github-event": event,  # Gitea sends both
        "x-gitea-delivery": "d-1",
        "x-gitea-signature": sign(body) if signature is None else signature,
    }


def github(body: bytes, event: str = "push") -> dict[str, str]:
    return {
        "x-github-event": event,
        "x-github-delivery": "g-1",
        "x-hub-signature-256": f"sha256={sign(body)}",
    }


def gitlab(event: str = "Push Hook", token: str = "s3cret") -> dict[str, str]:  # noqa: S107
    return {"x-gitlab-event": event, "x-gitlab-token": token}


def verdict(headers: dict[str, str], body: bytes):  # type: ignore[no-untyped-def]
    return judge(headers, body, SECRET, REPO, "main")


def test_authentic_pushes_to_the_branch_poll() -> None:
    body = push()
    for headers in (gitea(body), github(body), gitlab()):
        v = verdict(headers, body)
        assert (v.status, v.action) == (202, Action.POLL), v
    gitlab_body = json.dumps({"ref": "refs/heads/main", "project": {"git_http_url": REPO}}).encode()
    assert verdict(gitlab(), gitlab_body).action is Action.POLL


@pytest.mark.parametrize(
    ("headers", "body", "status", "reason"),
    [
        ({"x-gitea-event": "push"}, push(), 401, "missing signature"),
        (gitea(push(), signature="0" * 64), push(), 401, "bad signature"),
        # A delivery replayed with its body altered keeps the old signature: refused.
        (gitea(push()), push(ref="refs/heads/evil"), 401, "bad signature"),
        (
            github(push()) | {"x-hub-signature-256": "sha256=" + sign(push(), b"other")},
            push(),
            401,
            "bad signature",
        ),
        (gitlab(token="wrong"), push(), 401, "wrong X-Gitlab-Token"),
        ({"x-gitlab-event": "Push Hook"}, push(), 401, "missing X-Gitlab-Token"),
        (gitea(b"{not json"), b"{not json", 400, "not JSON"),
        (gitea(b"[1]"), b"[1]", 400, "not a JSON object"),
        ({"content-type": "application/json"}, push(), 400, "not a Gitea, GitHub or GitLab"),
        (gitea(b"x" * (MAX_BODY_BYTES + 1)), b"x" * (MAX_BODY_BYTES + 1), 413, "larger than"),
    ],
)
def test_rejections(headers: dict[str, str], body: bytes, status: int, reason: str) -> None:
    v = verdict(headers, body)
    assert v.status == status
    assert reason in v.reason
    assert v.action is Action.IGNORE


@pytest.mark.parametrize(
    ("headers_for", "body", "action", "status"),
    [
        (lambda b: gitea(b, "push"), push(ref="refs/heads/feature"), Action.IGNORE, 202),
        (
            lambda b: gitea(b, "push"),
            push(url="https://git.example.com/other/repo.git"),
            Action.IGNORE,
            202,
        ),
        (lambda b: gitea(b, "issues"), push(), Action.IGNORE, 202),
        (lambda b: github(b, "ping"), b'{"zen": "x"}', Action.IGNORE, 200),
        (lambda b: github(b, "pull_request"), push(), Action.PREVIEWS, 202),
        (lambda b: gitea(b, "pull_request"), push(), Action.PREVIEWS, 202),
    ],
)
def test_authentic_events(headers_for, body: bytes, action: Action, status: int) -> None:  # type: ignore[no-untyped-def]
    v = verdict(headers_for(body), body)
    assert (v.action, v.status) == (action, status)


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("https://git.example.com/platform/ray.git", "https://git.example.com/platform/ray", True),
        ("https://git.example.com/platform/ray.git", "git@git.example.com:platform/ray.git", True),
        (
            "https://git.example.com/platform/ray.git",
            "ssh://git@git.example.com/platform/ray.git",
            True,
        ),
        (
            "https://git.example.com/platform/ray.git",
            "https://git.example.com/platform/ray2.git",
            False,
        ),
        (
            "https://git.example.com/platform/ray.git",
            "https://other.example.com/platform/ray.git",
            False,
        ),
    ],
)
def test_same_repository(a: str, b: str, same: bool) -> None:
    assert same_repository(a, b) is same
