"""GitHub (and GitHub Enterprise) commit statuses: ``POST /repos/{owner}/{repo}/statuses/{sha}``.

Authenticates with a token (``Authorization: Bearer``) or as a GitHub App: a JWT signed with
the App's private key by PyJWT (RS256, ``iss`` = App ID) buys an installation token
(``POST /app/installations/{id}/access_tokens``), cached until a minute before it expires.
Reading back uses the combined status (``GET /repos/{owner}/{repo}/commits/{ref}/status``),
which already holds the latest status per context, paginated (30 a page unless ``per_page``
asks for up to 100): it is read page by page until ``total_count`` contexts are in.
"""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jwt

from gitsync.errors import AuthError
from gitsync.report.http import MAX_PAGES, JsonClient
from gitsync.report.provider import latest_per_context, token_of
from gitsync.report.status import CommitStatus
from gitsync.source.config import TokenAuth

API_VERSION = "2022-11-28"
ACCEPT = "application/vnd.github+json"
PAGE = 100  # the combined status's largest per_page


@dataclass
class GitHubProvider:
    client: JsonClient
    repository: str  # owner/name
    name: str = "github"

    def _path(self, suffix: str) -> str:
        owner, _, repo = self.repository.partition("/")
        return f"/repos/{quote(owner, safe='')}/{quote(repo, safe='')}{suffix}"

    def post(self, revision: str, status: CommitStatus) -> None:
        body = {"state": str(status.state), "context": status.context}
        if status.description:
            body["description"] = status.description
        if status.target_url:
            body["target_url"] = status.target_url
        self.client.request("POST", self._path(f"/statuses/{revision}"), body, ok=(201,))

    def statuses(self, revision: str) -> Mapping[str, CommitStatus]:
        entries: list[Any] = []
        for page in range(1, MAX_PAGES + 1):
            path = self._path(f"/commits/{revision}/status?per_page={PAGE}&page={page}")
            body = self.client.request("GET", path, quick=True).body or {}
            batch = body.get("statuses") or []
            entries += batch
            total = body.get("total_count")
            if len(batch) < PAGE or not isinstance(total, int) or len(entries) >= total:
                break
        return latest_per_context(entries)


def github_headers(token: str) -> dict[str, str]:
    return {
        "Accept": ACCEPT,
        "Authorization": f"Bearer {token}",
        "X-GitHub-Api-Version": API_VERSION,
    }


def token_headers(auth: TokenAuth | None) -> Callable[[], Mapping[str, str]]:
    return lambda: github_headers(token_of(auth, "the GitHub status"))


def app_jwt(app_id: str, private_key_pem: bytes, now: float) -> str:
    """The App's JWT: RS256, issued a minute in the past (clock drift), valid 9 minutes."""
    claims = {"iat": int(now) - 60, "exp": int(now) + 540, "iss": app_id}
    try:
        return jwt.encode(claims, private_key_pem, algorithm="RS256")
    except (jwt.InvalidKeyError, ValueError, TypeError):
        # PyJWT refuses a key that is no RSA private key in PEM (InvalidKeyError) and
        # cryptography one it cannot parse (ValueError, TypeError when it is encrypted); the
        # key's bytes stay out of the message.
        raise AuthError("the GitHub App private key must be an RSA key (PEM)") from None


@dataclass
class AppTokens:
    """Installation tokens for one GitHub App installation, refreshed before they expire."""

    client: JsonClient  # the same API base, authenticated per call with the JWT
    app_id: str
    installation_id: str
    private_key_file: Path
    clock: Callable[[], float] = time.time
    _token: str = field(default="", repr=False)
    _expires: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def headers(self) -> Mapping[str, str]:
        return github_headers(self.token())

    def token(self) -> str:
        with self._lock:
            if self._token and self.clock() < self._expires - 60:
                return self._token
            try:
                pem = self.private_key_file.read_bytes()
            except OSError as exc:
                raise AuthError(
                    f"cannot read the GitHub App private key from {self.private_key_file}: "
                    f"{exc.strerror}"
                ) from None
            app_token = app_jwt(self.app_id, pem, self.clock())
            client = JsonClient(
                self.client.base_url,
                lambda: {**github_headers(app_token)},
                self.client.timeout,
                self.client.policy,
                self.client.sleep,
                self.client.on_retry,
                self.client.pool,
            )
            path = f"/app/installations/{quote(self.installation_id, safe='')}/access_tokens"
            body = client.request("POST", path, {}, ok=(201,)).body or {}
            token = body.get("token")
            if not isinstance(token, str) or not token:
                raise AuthError("GitHub returned no installation token")
            self._token = token
            self._expires = _expiry(body.get("expires_at"), self.clock())
            return token


def _expiry(value: object, now: float) -> float:
    try:
        text = str(value).replace("Z", "+00:00")
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return now + 3000  # installation tokens live an hour; assume less
