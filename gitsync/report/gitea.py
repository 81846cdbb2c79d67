"""Gitea (and Forgejo) commit statuses: ``POST /api/v1/repos/{owner}/{repo}/statuses/{sha}``.

Gitea's states are gitsync's (plus ``warning``, which gitsync does not use). Reading back uses
the combined status (``GET …/commits/{sha}/status``), whose entries name the state ``status``
although the request calls it ``state``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote

from gitsync.report.http import JsonClient
from gitsync.report.provider import latest_per_context, token_of
from gitsync.report.status import CommitStatus
from gitsync.source.config import TokenAuth


@dataclass
class GiteaProvider:
    client: JsonClient
    repository: str  # owner/name
    name: str = "gitea"

    def _path(self, suffix: str) -> str:
        owner, _, repo = self.repository.partition("/")
        return f"/api/v1/repos/{quote(owner, safe='')}/{quote(repo, safe='')}{suffix}"

    def post(self, revision: str, status: CommitStatus) -> None:
        self.client.request(
            "POST",
            self._path(f"/statuses/{revision}"),
            {
                "state": str(status.state),
                "context": status.context,
                "description": status.description,
                "target_url": status.target_url,
            },
        )

    def statuses(self, revision: str) -> Mapping[str, CommitStatus]:
        body = (
            self.client.request("GET", self._path(f"/commits/{revision}/status"), quick=True).body
            or {}
        )
        return latest_per_context(body.get("statuses") or ())


def gitea_headers(auth: TokenAuth | None) -> Mapping[str, str]:
    return {"Authorization": f"token {token_of(auth, 'the Gitea status')}"}
