"""Statuses as git notes on a real remote (smart HTTP with a token, pushes allowed): pushed
and read back, read by another clone, shown by `gitsync notes`, and concurrent writers never
lose a note (fetch → append → push, start over when the push loses a race)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from gitsync.cli import main
from gitsync.report.gitnotes import GitNotesProvider, decode
from gitsync.report.status import CommitStatus, State
from gitsync.source.config import RepoSource, TokenAuth
from gitsync.source.notes import NOTES_REF, GitNotes
from gitsync.source.runner import GitResult, GitRunner
from testbed.gitserver import SmartHttpServer

from .conftest import TOKEN
from .repos import Upstream, git


@pytest.fixture
def auth(tmp_path: Path) -> TokenAuth:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    return TokenAuth(token_file=token_file, scheme="basic")


def notes_for(url: str, cache: Path, auth: TokenAuth) -> GitNotes:
    return GitNotes(RepoSource(url, "main", cache, auth=auth))


def test_notes_are_pushed_and_read_back(
    upstream: Upstream, http_auth: SmartHttpServer, auth: TokenAuth, tmp_path: Path
) -> None:
    sha = upstream.commit({"a.txt": "1"})
    url = http_auth.url(upstream.name)
    writer = GitNotesProvider(notes_for(url, tmp_path / "a", auth), "agent-a")
    assert writer.statuses(sha) == {}  # no notes ref on the remote yet
    writer.post(sha, CommitStatus("gitsync/staging", State.PENDING, "applying wave 1/1: x"))
    writer.post(sha, CommitStatus("gitsync/staging", State.SUCCESS, "Healthy at x", "https://d"))
    # Another agent, another cache: sees what the first pushed.
    reader = GitNotesProvider(notes_for(url, tmp_path / "b", auth), "agent-b")
    assert reader.statuses(sha) == {
        "gitsync/staging": CommitStatus(
            "gitsync/staging", State.SUCCESS, "Healthy at x", "https://d"
        )
    }
    history = reader.history(sha)
    assert [r.status.state for r in history] == [State.PENDING, State.SUCCESS]
    assert {r.agent for r in history} == {"agent-a"}
    # Plain git shows them too: the note lives on the remote's refs/notes/gitsync.
    note = git("--git-dir", str(upstream.bare), "notes", f"--ref={NOTES_REF}", "show", sha)
    lines = [json.loads(line) for line in note.splitlines() if line]
    assert [line["state"] for line in lines] == ["pending", "success"]


class PushesAfter(GitRunner):
    """A git runner that, just before its first push, lets ``rival`` run: another writer
    pushes between this writer's fetch and its push, every time, not only when threads
    happen to interleave."""

    def __init__(self, rival: Callable[[], None]) -> None:
        super().__init__(timeout=60)
        self.rival = rival

    def run(self, args: Sequence[str], **kwargs: Any) -> GitResult:
        if args[0] == "push" and not self.pushes():
            self.rival()
        return super().run(args, **kwargs)

    def pushes(self) -> int:
        return sum(1 for call in self.calls if call.subcommand == "push")


def test_a_writer_that_loses_the_push_race_fetches_again_and_loses_no_note(
    upstream: Upstream, http_auth: SmartHttpServer, auth: TokenAuth, tmp_path: Path
) -> None:
    sha = upstream.commit({"a.txt": "1"})
    url = http_auth.url(upstream.name)
    rival = notes_for(url, tmp_path / "rival", auth)
    rival.append(sha, '{"writer":"rival","n":0}')  # the notes ref exists: a race to update it
    runner = PushesAfter(lambda: rival.append(sha, '{"writer":"rival","n":1}'))
    writer = GitNotes(RepoSource(url, "main", tmp_path / "w", auth=auth), runner, sleep=[].append)
    writer.append(sha, '{"writer":"first","n":0}')
    assert runner.pushes() == 2  # the first push was rejected; fetched, appended, pushed again
    reader = notes_for(url, tmp_path / "reader", auth)
    lines = [json.loads(line) for line in reader.read(sha).splitlines() if line]
    assert lines == [
        {"writer": "rival", "n": 0},
        {"writer": "rival", "n": 1},
        {"writer": "first", "n": 0},
    ]


def test_concurrent_writers_lose_no_note(
    upstream: Upstream, http_auth: SmartHttpServer, auth: TokenAuth, tmp_path: Path
) -> None:
    """Threads that may or may not race (the test above forces it): nothing is lost."""
    shas = [upstream.commit({"a.txt": str(i)}) for i in range(2)]
    url = http_auth.url(upstream.name)
    writers = 4
    per_writer = 5
    errors: list[BaseException] = []

    def write(index: int) -> None:
        provider = GitNotesProvider(notes_for(url, tmp_path / f"w{index}", auth), f"agent-{index}")
        try:
            for n in range(per_writer):
                provider.post(
                    shas[n % 2], CommitStatus(f"gitsync/env{index}", State.PENDING, f"step {n}")
                )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    reader = GitNotes(RepoSource(url, "main", tmp_path / "reader", auth=auth))
    records = [r for sha in shas for r in decode(reader.read(sha))]
    assert len(records) == writers * per_writer
    for index in range(writers):
        steps = sorted(r.status.description for r in records if r.agent == f"agent-{index}")
        assert steps == [f"step {n}" for n in range(per_writer)]


def test_a_wrong_token_is_an_auth_error(
    upstream: Upstream, http_auth: SmartHttpServer, tmp_path: Path
) -> None:
    sha = upstream.commit({"a.txt": "1"})
    bad = tmp_path / "bad"
    bad.write_text("not-the-token")
    notes = notes_for(http_auth.url(upstream.name), tmp_path / "c", TokenAuth(token_file=bad))
    with pytest.raises(Exception, match=r"refused|credentials|401|Authentication") as caught:
        notes.append(sha, "{}")
    assert "not-the-token" not in str(caught.value)


def test_gitsync_notes_prints_the_history(
    upstream: Upstream,
    http: SmartHttpServer,
    http_auth: SmartHttpServer,
    auth: TokenAuth,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sha = upstream.commit({"a.txt": "1"})
    provider = GitNotesProvider(notes_for(http_auth.url(upstream.name), tmp_path / "a", auth), "a1")
    provider.post(
        sha, CommitStatus("gitsync/staging", State.FAILURE, "ranker Degraded: app ranker")
    )
    assert main(["notes", "--repo", http.url(upstream.name), sha]) == 0
    out = capsys.readouterr().out
    assert sha in out
    assert "gitsync/staging" in out
    assert "failure" in out
    assert "[a1]" in out
    # Default revision: the branch head; JSON output.
    assert main(["notes", "--repo", http.url(upstream.name), "-o", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["revision"] == sha
    assert document["statuses"][0]["description"] == "ranker Degraded: app ranker"
    other = upstream.commit({"a.txt": "2"})
    assert main(["notes", "--repo", http.url(upstream.name), other]) == 1
    assert "no gitsync statuses" in capsys.readouterr().err
