"""Commit statuses as git notes: no forge needed, the default provider.

Each status is one JSON line appended to the commit's note in ``refs/notes/gitsync`` on the
source remote, so the note is the commit's status history and the last line per context is
its current status. ``git log --notes=gitsync`` shows them to anyone with a clone;
``gitsync notes`` prints them. The git work (fetch, append, push, races) is
:class:`~gitsync.source.notes.GitNotes`'.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from dataclasses import dataclass

from gitsync.report.status import MAX_DESCRIPTION, CommitStatus, State
from gitsync.source.notes import GitNotes


@dataclass(frozen=True, slots=True)
class NoteRecord:
    status: CommitStatus
    at: str  # UTC, ISO 8601
    agent: str


def encode(status: CommitStatus, at: datetime.datetime, agent: str) -> str:
    record = {
        "context": status.context,
        "state": str(status.state),
        "description": status.description,
        "at": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "agent": agent,
    }
    if status.target_url:
        record["target_url"] = status.target_url
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def decode(note: str) -> list[NoteRecord]:
    """Every well-formed record in a note, oldest first; other lines (a human's) are skipped."""
    records = []
    for line in note.splitlines():
        try:
            raw = json.loads(line)
            status = CommitStatus(
                str(raw["context"]),
                State(raw["state"]),
                str(raw.get("description", ""))[:MAX_DESCRIPTION],
                str(raw.get("target_url", "")),
            )
        except (ValueError, KeyError, TypeError):
            continue
        records.append(NoteRecord(status, str(raw.get("at", "")), str(raw.get("agent", ""))))
    return records


@dataclass
class GitNotesProvider:
    notes: GitNotes
    agent: str  # who wrote a record: the agent's identity (pod name or host)
    name: str = "gitnotes"

    def post(self, revision: str, status: CommitStatus) -> None:
        now = datetime.datetime.now(datetime.UTC)
        self.notes.append(revision, encode(status, now, self.agent))

    def history(self, revision: str) -> list[NoteRecord]:
        return decode(self.notes.read(revision))

    def statuses(self, revision: str) -> Mapping[str, CommitStatus]:
        latest: dict[str, CommitStatus] = {}
        for record in self.history(revision):
            latest[record.status.context] = record.status
        return latest
