"""Pull requests on the forge: list the open ones, and keep one gitsync comment per PR.

One small class per forge behind :class:`Pulls`. Gitea and GitHub share their shapes
(``/pulls``, issue comments); GitLab calls them merge requests and notes. The gitsync comment
is found again by a marker in its body among the comments gitsync's own user wrote (anyone
can paste the marker; a comment of someone else is never edited), so each PR has exactly one,
edited in place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote

from gitsync.plan import PLAN_COMMENT_MARKER
from gitsync.report.http import JsonClient

MARKER = PLAN_COMMENT_MARKER


@dataclass(frozen=True)
class PullRequest:
    number: int
    head_sha: str
    head_ref: str  # the ref to fetch the head from, e.g. refs/pull/7/head
    head_branch: str
    base_branch: str
    author: str
    fork: bool  # the head branch lives in another repository
    labels: tuple[str, ...] = ()
    title: str = ""


class Pulls(Protocol):
    def open_pulls(self) -> list[PullRequest]: ...

    def upsert_comment(self, number: int, body: str) -> None:
        """Creates gitsync's comment on the PR, or edits it when it exists."""


def _pages(client: JsonClient, path: str, limit: int = 10) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for page in range(1, limit + 1):
        sep = "&" if "?" in path else "?"
        batch = client.request("GET", f"{path}{sep}page={page}&per_page=50&limit=50").body or []
        items += batch
        if len(batch) < 50:
            break
    return items


@dataclass
class GiteaPulls:
    """Gitea (and GitHub, whose PR and issue-comment shapes Gitea follows)."""

    client: JsonClient
    repository: str  # owner/name
    api_prefix: str = "/api/v1"
    # GitHub App installation tokens cannot read /user: their comments are recognised by the
    # app that made them (``performed_via_github_app.id``).
    app_id: str = ""
    _me: int | None = field(default=None, repr=False)

    def _ours(self, comment: dict[str, Any]) -> bool:
        if MARKER not in str(comment.get("body", "")):
            return False
        if self.app_id:
            app = comment.get("performed_via_github_app") or {}
            return str(app.get("id", "")) == self.app_id
        if self._me is None:
            self._me = int(self.client.request("GET", f"{self.api_prefix}/user").body["id"])
        return (comment.get("user") or {}).get("id") == self._me

    def _repo(self) -> str:
        owner, _, name = self.repository.partition("/")
        return f"{self.api_prefix}/repos/{quote(owner, safe='')}/{quote(name, safe='')}"

    def open_pulls(self) -> list[PullRequest]:
        found = []
        for pr in _pages(self.client, f"{self._repo()}/pulls?state=open"):
            head, base = pr.get("head") or {}, pr.get("base") or {}
            head_repo = str((head.get("repo") or {}).get("full_name") or "")
            base_repo = str((base.get("repo") or {}).get("full_name") or self.repository)
            found.append(
                PullRequest(
                    number=int(pr["number"]),
                    head_sha=str(head.get("sha", "")),
                    head_ref=f"refs/pull/{int(pr['number'])}/head",
                    head_branch=str(head.get("ref", "")),
                    base_branch=str(base.get("ref", "")),
                    author=str((pr.get("user") or {}).get("login", "")),
                    # No head repository (a deleted fork) is a fork: fail closed.
                    fork=not head_repo or head_repo.lower() != base_repo.lower(),
                    labels=tuple(str(label.get("name", "")) for label in pr.get("labels") or ()),
                    title=str(pr.get("title", "")),
                )
            )
        return found

    def upsert_comment(self, number: int, body: str) -> None:
        comments = _pages(self.client, f"{self._repo()}/issues/{number}/comments")
        ours = [c for c in comments if self._ours(c)]
        if ours:
            if ours[0].get("body") != body:
                path = f"{self._repo()}/issues/comments/{int(ours[0]['id'])}"
                self.client.request("PATCH", path, {"body": body})
            return
        self.client.request("POST", f"{self._repo()}/issues/{number}/comments", {"body": body})


@dataclass
class GitHubPulls(GiteaPulls):
    api_prefix: str = ""


@dataclass
class GitLabPulls:
    client: JsonClient
    project: str
    _me: int | None = field(default=None, repr=False)

    def _ours(self, note: dict[str, Any]) -> bool:
        if MARKER not in str(note.get("body", "")):
            return False
        if self._me is None:
            self._me = int(self.client.request("GET", "/api/v4/user").body["id"])
        return (note.get("author") or {}).get("id") == self._me

    def _project(self) -> str:
        return f"/api/v4/projects/{quote(self.project, safe='')}"

    def open_pulls(self) -> list[PullRequest]:
        found = []
        for mr in _pages(self.client, f"{self._project()}/merge_requests?state=opened"):
            iid = int(mr["iid"])
            found.append(
                PullRequest(
                    number=iid,
                    head_sha=str(mr.get("sha", "")),
                    head_ref=f"refs/merge-requests/{iid}/head",
                    head_branch=str(mr.get("source_branch", "")),
                    base_branch=str(mr.get("target_branch", "")),
                    author=str((mr.get("author") or {}).get("username", "")),
                    fork=_gitlab_fork(mr),
                    labels=tuple(str(label) for label in mr.get("labels") or ()),
                    title=str(mr.get("title", "")),
                )
            )
        return found

    def upsert_comment(self, number: int, body: str) -> None:
        notes = _pages(self.client, f"{self._project()}/merge_requests/{number}/notes")
        ours = [n for n in notes if self._ours(n)]
        if ours:
            if ours[0].get("body") != body:
                path = f"{self._project()}/merge_requests/{number}/notes/{int(ours[0]['id'])}"
                self.client.request("PUT", path, {"body": body})
            return
        self.client.request(
            "POST", f"{self._project()}/merge_requests/{number}/notes", {"body": body}
        )


def _gitlab_fork(mr: dict[str, Any]) -> bool:
    """Same project only when both ids are there and equal: a merge request whose source
    project was deleted (null id) counts as a fork."""
    source, target = mr.get("source_project_id"), mr.get("target_project_id")
    return not (isinstance(source, int) and source == target)


def needs_label(pr: PullRequest, allow_authors: Sequence[str]) -> bool:
    """A pull request only a maintainer's label lets run: from a fork, by another author."""
    return pr.fork and pr.author not in allow_authors


def approval(labelled: bool, head: str, approved: str, label: str) -> tuple[str, str | None]:
    """The commit a fork pull request's label approves from now on, and why its head gets no
    preview (None: it may). A label covers the head it was first seen on only: a later push
    is not approved until a maintainer takes the label off and puts it back."""
    if not labelled:
        return "", None  # eligible() says why; the approval is forgotten
    if not approved or approved == head:
        return head, None
    return approved, (
        f"no preview: {head[:12]} was pushed after the label {label!r} approved "
        f"{approved[:12]}; a maintainer removes the label and adds it again to approve it"
    )


def eligible(pr: PullRequest, allow_authors: Sequence[str], label: str) -> str | None:
    """None when the PR may get a preview, else why not (fork PRs run untrusted code)."""
    if not pr.fork:
        return None
    if pr.author in allow_authors:
        return None
    if label and label in pr.labels:
        return None
    how = f"the label {label!r} set by a maintainer" if label else "an allowed author"
    return f"no preview: pull requests from forks need {how}"
