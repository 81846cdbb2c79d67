"""The interface every commit-status provider implements, and the token reader they share.

A provider turns :class:`~gitsync.report.status.CommitStatus` values into one forge's API (or
git notes) and reads them back, latest per context, for promotion gates. Providers raise
:class:`~gitsync.errors.ForgeError` when a call fails for good; retrying, deduplicating
and never blocking a rollout are the :class:`~gitsync.report.reporter.Reporter`'s job.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from gitsync.errors import AuthError
from gitsync.report.status import MAX_DESCRIPTION, CommitStatus, State
from gitsync.source.auth import read_token
from gitsync.source.config import TokenAuth


class Provider(Protocol):
    name: str

    def post(self, revision: str, status: CommitStatus) -> None:
        """Sets ``status`` on commit ``revision``."""

    def statuses(self, revision: str) -> Mapping[str, CommitStatus]:
        """The latest status of each context on commit ``revision``."""


def token_of(auth: TokenAuth | None, what: str) -> str:
    """Reads the forge token at each call (a rotated Secret is picked up)."""
    if auth is None:
        raise AuthError(f"{what} needs a token: set status.tokenFile or status.tokenEnv")
    try:
        return read_token(auth)
    except AuthError as exc:
        raise AuthError(str(exc).replace("the Git token", f"{what} token")) from None


def latest_per_context(entries: Iterable[Mapping[str, Any]]) -> dict[str, CommitStatus]:
    """A combined status's entries (newest first, as Gitea and GitHub list them) → the
    status of each context. Gitea names an entry's state ``status``, GitHub ``state``."""
    found: dict[str, CommitStatus] = {}
    for entry in entries:
        state, context = entry.get("status") or entry.get("state"), entry.get("context")
        if state in State.__members__.values() and context:
            found.setdefault(
                str(context),
                CommitStatus(
                    str(context),
                    State(str(state)),
                    str(entry.get("description") or "")[:MAX_DESCRIPTION],
                    str(entry.get("target_url") or ""),
                ),
            )
    return found
