"""The error tree. Every error a user can see is one of these, raised ``from`` its cause.

Messages say what is wrong, where, and what to do; they never contain credentials.

The one retry rule: a failure is :class:`Temporary` (asking again may succeed, after a delay
when the other side named one) or :class:`Permanent` (the same request fails the same way
until a person changes something). An error says which through :attr:`GitsyncError.retry`;
an edge judges its raw answers the same way (``kube.failures.retry_rule``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gitsync.model import ServiceKey


@dataclass(frozen=True, slots=True)
class Temporary:
    """Asking again may succeed: after ``delay`` seconds when the other side said how long
    (a ``Retry-After``), else (None) after the caller's own backoff."""

    delay: float | None = None


@dataclass(frozen=True, slots=True)
class Permanent:
    """Asking again fails the same way: only a change (a token, RBAC, the config, Git) helps.
    ``answer`` names what said so, for the log (``HTTP 401``), when there is one."""

    answer: str = ""


class GitsyncError(Exception):
    """Base of every error gitsync raises on purpose."""

    @property
    def retry(self) -> Temporary | Permanent | None:
        """Whether asking again may help; None when this error does not say, and each caller
        keeps its own default (the agent waits for the next poll, the reporter tries again)."""
        return None


class ConfigError(GitsyncError):
    """The agent config or the repo's gitsync.yaml is invalid."""


class ManifestError(GitsyncError):
    """A manifest in the repository is invalid; carries the file and line."""

    def __init__(self, message: str, *, file: str, line: int | None = None) -> None:
        self.file = file
        self.line = line
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {message}")


class SourceError(GitsyncError):
    """Git could not be read: bad URL, auth refused, ref missing, network down."""


class ReadRefused(GitsyncError):
    """The API server refused a read that gitsync can do without (the capacity check's
    lists): the check says so, the rollout goes on."""


class ApplyError(GitsyncError):
    """The API server refused or failed an apply for one service."""

    def __init__(self, key: ServiceKey, message: str) -> None:
        self.key = key
        super().__init__(f"{key}: {message}")


class NamespaceMissing(ApplyError):
    """The target namespace does not exist (yet): create it, or set createNamespace."""


class ConflictError(ApplyError):
    """Server-side apply found a field another manager owns; forced only when configured."""


class ManifestRefused(ApplyError):
    """The API server refused the manifest itself (its schema, a validation or admission
    rule): the commit is at fault and only a change in Git fixes it."""


class ClusterUnreachable(GitsyncError):
    """The Kubernetes API server could not be reached (connection refused, TLS, timeout)."""

    @property
    def retry(self) -> Temporary:
        """The API server is often back in seconds (a restart, etcd recovering): the agent
        runs the pass again soon, with its own backoff."""
        return Temporary()


class AccessRefused(GitsyncError):
    """The API server answered but will not serve gitsync: its credentials are refused
    (401), its RBAC does not allow the request (403), or the resource is not installed (a
    404 for the resource type, e.g. no RayService CRD). No retry helps; a person must act."""

    @property
    def retry(self) -> Permanent:
        return Permanent()


class Unauthorized(AccessRefused):
    """401: the kubeconfig's token or client certificate is wrong or expired."""


class Forbidden(AccessRefused):
    """403: authenticated, but RBAC does not allow the request."""


class NotInstalled(AccessRefused):
    """404 for a resource type: the API server does not serve it (its CRD is missing)."""


class AuthError(SourceError):
    """The Git server refused the credentials (or wanted some and none were configured)."""


class RepositoryNotFound(SourceError):
    """The URL answers but names no repository this agent may read, or is not a Git URL."""


class RefNotFound(SourceError):
    """The configured branch does not exist on the remote."""


class RemoteUnreachable(SourceError):
    """The Git server could not be reached or did not answer within the timeout."""


class CommitNotFound(SourceError):
    """A commit is no longer reachable from the branch: history was rewritten or it moved on."""


class VerificationError(SourceError):
    """A commit's signature is missing, invalid or made by a key that is not allowed."""


class TreeTooLarge(SourceError):
    """A commit's tree is larger than gitsync writes out (``repository.maxTreeSize``)."""


class InvalidRevision(GitsyncError):
    """A revision's gitsync.yaml or an environment's manifests are invalid: nothing from it
    may be applied. Carries every problem."""

    # A generated or hostile tree can have thousands of problems; the message (logged, and
    # printed by the CLI) lists the first ones and the last (where reading stopped, when it
    # did); ``problems`` keeps them all.
    LISTED = 20

    def __init__(
        self, what: str, problems: tuple[object, ...], *, environments: tuple[str, ...] = ()
    ) -> None:
        self.problems = problems
        # The environments it invalidates ("config": gitsync.yaml itself) and the full
        # revision, when the pass that read it knows them (notifications name them).
        self.environments = environments
        self.revision = ""
        listing = "\n".join(f"  {p}" for p in problems[: self.LISTED])
        if len(problems) > self.LISTED:
            listing += f"\n  … {len(problems) - self.LISTED - 1} more …\n  {problems[-1]}"
        super().__init__(f"{what} is invalid ({len(problems)} problem(s)):\n{listing}")


# Forge refusals that asking again will not change: a bad request, a token that is wrong or
# lacks the scope (a 403 *without* rate-limit headers: those are retried), no such repository
# or commit, a body the forge rejects.
PERMANENT_STATUSES = frozenset({400, 401, 403, 404, 410, 422})


class ForgeError(GitsyncError):
    """A forge API call failed for good (after retries, or a permanent 4xx)."""

    def __init__(self, message: str, *, status: int | None = None, body: Any = None) -> None:
        self.status = status  # set for a refusal that was not retried; None after retries
        self.body = body  # the forge's decoded JSON answer to a refused request, if any
        super().__init__(message)

    @property
    def retry(self) -> Temporary | Permanent:
        """Permanent when the forge refused for good (the same request will be refused
        again); Temporary after retries that did not get through."""
        if self.status in PERMANENT_STATUSES:
            return Permanent(f"HTTP {self.status}")
        return Temporary()


class NotesConflict(SourceError):
    """Every attempt to push the git-notes ref lost a race with another writer."""
