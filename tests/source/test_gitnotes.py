"""Statuses as git notes on a real remote (smart HTTP with a token, pushes allowed; and a
real Gitea): pushed and read back, read by another clone, shown by `gitsync notes`, and
concurrent writers never lose a note (fetch → append → push, start over when the push loses
a race, in the client or on the server)."""

from __future__ import annotations

import json
import threading
import uuid
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
from testbed.gitea import Gitea
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


def gitea_repo(gitea: Gitea, tmp_path: Path) -> tuple[str, str]:
    """A private Gitea repository with one commit: its clone URL and the commit."""
    name = f"notes-{uuid.uuid4().hex[:8]}"
    gitea.api("POST", "/user/repos", {"name": name, "default_branch": "main", "private": True})
    url = gitea.clone_url(name)
    work = tmp_path / "work"
    work.mkdir()
    git("init", "-q", "-b", "main", cwd=work)
    git("-c", "user.name=T", "-c", "user.email=t@example.com", "commit", "-q",
        "--allow-empty", "-m", "first", cwd=work)  # fmt: skip
    git(*gitea.git_auth_config(), "push", "-q", url, "main", cwd=work)
    return url, git("rev-parse", "HEAD", cwd=work).strip()


@pytest.mark.parametrize("scheme", ["bearer", "basic"])
def test_notes_on_a_real_gitea(
    gitea: Gitea, tmp_path: Path, capsys: pytest.CaptureFixture[str], scheme: str
) -> None:
    """Gitea (not only git-http-backend) keeps refs/notes/gitsync: its pre-receive hook lets
    a user who may write code push any ref outside refs/heads, refs/tags and refs/for. A
    private repository, the token as the agent's repository credentials; a lost push race
    (the seam above) and `gitsync notes` reading the history back. The token has only
    `write:repository`, what docs/statuses.md says it needs."""
    url, sha = gitea_repo(gitea, tmp_path)
    token = tmp_path / "token"
    token.write_text(gitea.create_token(f"notes-{uuid.uuid4().hex[:8]}", "write:repository"))
    auth = TokenAuth(token_file=token, scheme=scheme)
    rival = GitNotesProvider(notes_for(url, tmp_path / "rival", auth), "rival")
    rival.post(sha, CommitStatus("gitsync/staging", State.PENDING, "applying wave 1/1: x"))
    runner = PushesAfter(
        lambda: rival.post(sha, CommitStatus("gitsync/staging", State.SUCCESS, "Healthy at x"))
    )
    notes = GitNotes(RepoSource(url, "main", tmp_path / "w", auth=auth), runner, sleep=[].append)
    writer = GitNotesProvider(notes, "writer")
    writer.post(sha, CommitStatus("gitsync/production", State.SUCCESS, "Healthy at x", "https://d"))
    assert runner.pushes() == 2  # Gitea rejected nothing itself: git saw the ref had moved
    listed = git(*gitea.git_auth_config(), "ls-remote", url, NOTES_REF)
    assert listed.endswith(NOTES_REF), listed
    config = tmp_path / "agent.yaml"
    config.write_text(
        json.dumps(
            {
                "repository": {
                    "url": url,
                    "branch": "main",
                    "auth": {"tokenFile": str(token), "scheme": scheme},
                },
                "cacheDir": str(tmp_path / "cache"),
            }
        )
    )
    assert main(["notes", "--config", str(config), "-o", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["revision"] == sha
    assert [(s["context"], s["state"], s["agent"]) for s in document["statuses"]] == [
        ("gitsync/staging", "pending", "rival"),
        ("gitsync/staging", "success", "rival"),
        ("gitsync/production", "success", "writer"),
    ]
    assert document["statuses"][-1]["target_url"] == "https://d"


def test_concurrent_writers_on_gitea_lose_no_note(gitea: Gitea, tmp_path: Path) -> None:
    """Several agents' pushes reaching Gitea together: those that lose fail in the client
    or, when already in flight, on the server (the test below forces that): nothing is
    lost."""
    url, sha = gitea_repo(gitea, tmp_path)
    token = tmp_path / "token"
    token.write_text(gitea.token)
    auth = TokenAuth(token_file=token)
    writers, per_writer = 3, 3
    errors: list[BaseException] = []
    start = threading.Barrier(writers)

    def write(index: int) -> None:
        provider = GitNotesProvider(notes_for(url, tmp_path / f"w{index}", auth), f"agent-{index}")
        start.wait(30)
        try:
            for n in range(per_writer):
                provider.post(sha, CommitStatus(f"gitsync/env{index}", State.PENDING, f"step {n}"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    records = decode(notes_for(url, tmp_path / "reader", auth).read(sha))
    assert sorted((r.agent, r.status.description) for r in records) == [
        (f"agent-{i}", f"step {n}") for i in range(writers) for n in range(per_writer)
    ]


# Run by Gitea's pre-receive hook after its own check: once, another writer's note lands on
# the server between the pusher's ref advertisement and its ref update. Git keeps a push's
# objects in quarantine until the hook passes and forbids ref updates there: outside it.
RIVAL_LANDS = """#!/bin/sh
[ -e raced ] && exit 0
touch raced
env -u GIT_QUARANTINE_PATH -u GIT_OBJECT_DIRECTORY -u GIT_ALTERNATE_OBJECT_DIRECTORIES \\
    git update-ref refs/notes/gitsync refs/scratch/rival
"""


def test_a_push_gitea_refuses_on_the_server_is_a_lost_race(gitea: Gitea, tmp_path: Path) -> None:
    """The race the seam above cannot make: the notes ref moves on Gitea while the push is
    in flight, so Gitea (not the client) refuses it: `cannot lock ref … (failed to update
    ref)`. The writer fetches again and no note is lost."""
    url, sha = gitea_repo(gitea, tmp_path)
    token = tmp_path / "token"
    token.write_text(gitea.token)
    auth = TokenAuth(token_file=token)
    rival = notes_for(url, tmp_path / "rival", auth)
    rival.append(sha, '{"writer":"rival","n":0}')
    # The rival's next note, on the server but not yet on the notes ref.
    identity = ("-c", "user.name=R", "-c", "user.email=r@example.com")
    rival_git = ("--git-dir", str(rival.git_dir))
    git(*identity, *rival_git, "notes", f"--ref={NOTES_REF}", "append", "-m",
        '{"writer":"rival","n":1}', sha)  # fmt: skip
    git(*gitea.git_auth_config(), *rival_git, "push", "-q", url, f"{NOTES_REF}:refs/scratch/rival")
    owner_repo = url.removeprefix(f"{gitea.url}/")
    hook = gitea.work / "repositories" / owner_repo / "hooks" / "pre-receive.d" / "rival-lands"
    hook.write_text(RIVAL_LANDS)
    hook.chmod(0o755)
    runner = GitRunner(timeout=60)
    writer = GitNotes(RepoSource(url, "main", tmp_path / "w", auth=auth), runner, sleep=[].append)
    writer.append(sha, '{"writer":"first","n":0}')
    pushes = [call for call in runner.calls if call.subcommand == "push"]
    assert len(pushes) == 2  # refused by the server once, then pushed on top of the rival
    note = notes_for(url, tmp_path / "reader", auth).read(sha)
    lines = [json.loads(line) for line in note.splitlines() if line]
    assert lines == [
        {"writer": "rival", "n": 0},
        {"writer": "rival", "n": 1},
        {"writer": "first", "n": 0},
    ]
