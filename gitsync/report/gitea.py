"""Gitea (and Forgejo) commit statuses: ``POST /api/v1/repos/{owner}/{repo}/statuses/{sha}``.

Gitea's states are gitsync's (plus ``warning``, which gitsync does not use). Reading back uses
the combined status (``GET …/commits/{sha}/status``), whose entries name the state ``status``
although the request calls it ``state``. That read is paginated — one entry per context, the
most recently set first, ``limit`` capped at Gitea's ``[api] MAX_RESPONSE_ITEMS`` (50 by
default) — so it is read page by page until ``X-Total-Count`` contexts are in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from gitsync.report.http import MAX_PAGES, JsonClient
from gitsync.report.provider import latest_per_context, token_of
from gitsync.report.status import CommitStatus
from gitsync.source.config import TokenAuth

PAGE = 50  # Gitea's default MAX_RESPONSE_ITEMS; a smaller cap still works (X-Total-Count)


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
        entries: list[Any] = []
        for page in range(1, MAX_PAGES + 1):
            path = self._path(f"/commits/{revision}/status?limit={PAGE}&page={page}")
            response = self.client.request("GET", path, quick=True)
            batch = (response.body or {}).get("statuses") or []
            entries += batch
            total = response.header("X-Total-Count")
            more = len(entries) < int(total) if total.isdigit() else len(batch) >= PAGE
            if not batch or not more:
                break
        return latest_per_context(entries)


def gitea_headers(auth: TokenAuth | None) -> Mapping[str, str]:
    return {"Authorization": f"token {token_of(auth, 'the Gitea status')}"}
