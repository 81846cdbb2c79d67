"""GitLab commit statuses: ``POST /api/v4/projects/:id/statuses/:sha``.

GitLab names the states differently: gitsync's ``pending`` is GitLab's ``running`` (a
rollout is under way), ``failure`` and ``error`` are both ``failed`` (an error says so in its
description), and reading back maps ``canceled`` to ``error``. The project is its numeric ID
or its URL-encoded path (``group%2Fproject``). Authenticates with ``PRIVATE-TOKEN``.

GitLab keeps a status as a CI job with a state machine: posting the state the open
(pending or running) status of that name already has is refused with HTTP 400 ("Cannot
transition status via :run from :running"), and its description is not updated. Each wave
of a rollout posts ``running`` again, so that refusal means the state is already shown: it
counts as delivered, not as a failure to retry. Any other refusal is an error.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from gitsync.errors import ForgeError
from gitsync.report.http import MAX_PAGES, JsonClient
from gitsync.report.provider import token_of
from gitsync.report.status import CommitStatus, State
from gitsync.source.config import TokenAuth

log = logging.getLogger(__name__)

# Ci::CreateCommitStatusService renders StateMachines::InvalidTransition's message as a 400:
# posting ``running`` fires ``run`` (after a silent ``enqueue``), ``pending`` fires ``enqueue``.
_UNCHANGED = re.compile(r"^Cannot transition status via :(run|enqueue) from :(\w+)\b")
_EVENT = {"running": "run", "pending": "enqueue"}

PAGE = 100  # the statuses listing's largest per_page

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
        try:
            self.client.request("POST", self._path(f"/statuses/{revision}"), body)
        except ForgeError as exc:
            if not _already(exc, body["state"]):
                raise
            log.debug(
                "GitLab already shows %s %s on %s; description not updated",
                status.context,
                body["state"],
                revision[:12],
            )

    def statuses(self, revision: str) -> Mapping[str, CommitStatus]:
        entries: list[Any] = []
        for page in range(1, MAX_PAGES + 1):
            path = f"/repository/commits/{revision}/statuses?per_page={PAGE}&page={page}"
            response = self.client.request("GET", self._path(path), quick=True)
            entries += response.body or ()
            if not response.header("X-Next-Page"):
                break
        # Without all=true GitLab lists only each name's latest (not retried) status, oldest
        # first; a name set on several pipelines of the commit appears once per pipeline.
        found: dict[str, CommitStatus] = {}
        for entry in sorted(entries, key=lambda e: -int(e.get("id") or 0)):
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


def _already(exc: ForgeError, state: str) -> bool:
    """True when GitLab refused the post only because the status already has ``state``."""
    message = exc.body.get("message") if isinstance(exc.body, dict) else None
    match = _UNCHANGED.match(message) if exc.status == 400 and isinstance(message, str) else None
    return match is not None and match.groups() == (_EVENT.get(state), state)


def gitlab_headers(auth: TokenAuth | None) -> Mapping[str, str]:
    return {"PRIVATE-TOKEN": token_of(auth, "the GitLab status")}
