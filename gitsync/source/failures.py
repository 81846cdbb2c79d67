"""git's failures → gitsync's typed errors, in one place.

Owns the table from git's (already redacted) stderr to :mod:`gitsync.errors` classes, with
messages that say what to do. Must not see unredacted text: it goes straight into messages.
"""

from __future__ import annotations

from gitsync.errors import (
    AuthError,
    RemoteUnreachable,
    RepositoryNotFound,
    SourceError,
)
from gitsync.source.runner import GitResult

# Checked in order; the first table whose marker occurs in git's stderr (lower-cased) wins.
_UNREACHABLE = (
    "connection refused",
    "could not resolve host",
    "could not resolve hostname",
    "name or service not known",
    "temporary failure in name resolution",
    "connection timed out",
    "operation timed out",
    "network is unreachable",
    "no route to host",
    "failed to connect",
    "couldn't connect to server",
    "unable to connect",
    "connection reset by peer",
    "empty reply from server",
)
_HOST_KEY = ("host key verification failed", "no matching host key", "remote host identification")
_AUTH = (
    "authentication failed",
    "could not read username",
    "could not read password",
    "terminal prompts disabled",
    "http basic: access denied",
    "invalid username or password",
    "permission denied (publickey",
    "returned error: 401",
    "returned error: 403",
)
_NOT_FOUND = (
    "does not appear to be a git repository",
    "repository not found",
    "not found",
    "no such repository",
    "access denied or repository not exported",
    "returned error: 404",
    "could not read from remote repository",
)
_BAD_URL = (
    "unable to find remote helper",
    "is not a git command",  # git: 'remote-gopher' is not a git command
    "is not supported",
    "not allowed",
    "invalid url",
    "unsupported url",
    "bad port",
    "malformed",
)


def failure(op: str, url: str, result: GitResult, timeout: float) -> SourceError:
    """The typed error for a failed ``git <op>`` against ``url`` (already redacted)."""
    detail = _last_lines(result.stderr)
    if result.timed_out:
        return RemoteUnreachable(
            f"git {op} against {url} did not finish within {timeout:g} s: the server is not "
            "answering; check the URL and the network, or raise the source timeout"
        )
    text = result.stderr.lower()
    for markers, error, advice in _TABLE:
        if any(marker in text for marker in markers):
            return error(advice.format(url=url, detail=detail))
    return SourceError(f"git {op} failed for {url} (exit {result.returncode}): {detail}")


_TABLE: tuple[tuple[tuple[str, ...], type[SourceError], str], ...] = (
    (
        _UNREACHABLE,
        RemoteUnreachable,
        "cannot reach the Git server for {url}: {detail}; check the host and port in the URL, "
        "DNS and the network path (is the server up?)",
    ),
    (
        _HOST_KEY,
        AuthError,
        "the SSH host key of {url} is not trusted: {detail}; add the server's key to the "
        "configured known_hosts file",
    ),
    (
        _AUTH,
        AuthError,
        "the Git server refused access to {url}: {detail}; check the configured token or SSH "
        "key, that it is not expired, and that it may read this repository",
    ),
    (
        _NOT_FOUND,
        RepositoryNotFound,
        "no Git repository at {url}: {detail}; check the repository URL (and that the "
        "credentials may see it: forges answer 'not found' to private repositories)",
    ),
    (_BAD_URL, RepositoryNotFound, "{url} is not a usable Git URL: {detail}; fix the repo URL"),
)


def _last_lines(stderr: str, count: int = 3, limit: int = 400) -> str:
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    text = " | ".join(lines[-count:]) or "(no message from git)"
    # git quotes what a broken or hostile server sent ("bad line length character: …"):
    # bytes that are not printable text must not reach a log line or a commit status.
    text = "".join(c if c.isprintable() and c != "\ufffd" else "?" for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."
