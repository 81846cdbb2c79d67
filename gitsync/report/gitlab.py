"""GitLab commit statuses: ``POST /api/v4/projects/:id/statuses/:sha``.

GitLab names the states differently: gitsync's ``pending`` is GitLab's ``running`` (a
rollout is under way), ``failure`` and ``error`` are both ``failed`` (an error says so in its
description), and reading back maps ``canceled`` to ``error``. The project is its numeric ID
or its URL-encoded path (``group%2Fproject``). Authenticates with ``PRIVATE-TOKEN``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote

from gitsync.report.http import JsonClient
from gitsync.report.provider import token_of
from gitsync.report.status import CommitStatus, State
from gitsync.source.config import TokenAuth

TO_GITLAB = {
    State.PENDING: "running",
    State.SUCCESS: "success",
    State.FAILURE: "failed",
    State.ERROR: "failed",
}
FROM_GITLAB = {
    "pending": State.PENDING,
    "running": State.PENDING,
    "success": State.SUCCESS,
    "failed": State.FAILURE,
    "canceled": State.ERROR,
    "skipped": State.ERROR,
}


@dataclass
class GitLabProvider:
    client: JsonClient
    project: str  # numeric ID or group/project path
    name: str = "gitlab"

    def _path(self, suffix: str) -> str:
        return f"/api/v4/projects/{quote(self.project, safe='')}{suffix}"

    def post(self, revision: str, status: CommitStatus) -> None:
        body = {"state": TO_GITLAB[status.state], "name": status.context}
        if status.description:
            body["description"] = status.description
        if status.target_url:
            body["target_url"] = status.target_url
        self.client.request("POST", self._path(f"/statuses/{revision}"), body)

    def statuses(self, revision: str) -> Mapping[str, CommitStatus]:
        found: dict[str, CommitStatus] = {}
        entries = self.client.request(
            "GET", self._path(f"/repository/commits/{revision}/statuses?all=true&per_page=100")
        ).body
        # Newest first by id: GitLab lists every status ever set with all=true.
        for entry in sorted(entries or (), key=lambda e: -int(e.get("id") or 0)):
            state = FROM_GITLAB.get(str(entry.get("status")))
            name = entry.get("name")
            if state is not None and name:
                found.setdefault(
                    name,
                    CommitStatus(
                        name,
                        state,
                        str(entry.get("description") or "")[:140],
                        str(entry.get("target_url") or ""),
                    ),
                )
        return found


def gitlab_headers(auth: TokenAuth | None) -> Mapping[str, str]:
    return {"PRIVATE-TOKEN": token_of(auth, "the GitLab status")}
