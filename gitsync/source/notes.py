"""Git notes on the source repository's commits: ``refs/notes/gitsync`` on the same remote.

Owns a small bare repository (``cache_dir/notes.git``) that holds only the notes ref, the
fetch of that ref, appending a line to one commit's note, and the push — with the same
credentials as the source. Concurrent writers (agents for other environments, other
clusters) are handled by fetch → append → push, and on a rejected push starting over from a
fresh fetch: a push only succeeds on top of everything already there, so no note is lost.
Must not interpret note contents: the gitnotes provider does.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from pathlib import Path

from gitsync.errors import NotesConflict, SourceError
from gitsync.source.auth import credentials
from gitsync.source.config import RepoSource
from gitsync.source.failures import failure
from gitsync.source.runner import GitResult, GitRunner

log = logging.getLogger(__name__)

NOTES_REF = "refs/notes/gitsync"
REMOTE = "gitsync-notes"
ATTEMPTS = 12
BACKOFF_BASE = 0.05  # seconds; doubled per lost race
BACKOFF_CAP = 4.0
# Notes commits need an author; these are the agent's, not a person's.
_IDENTITY = (
    ("user.name", "gitsync"),
    ("user.email", "gitsync@localhost"),
    ("commit.gpgSign", "false"),
)
_MISSING_REF = ("couldn't find remote ref", "could not find remote ref")
_REJECTED = (
    "[rejected]",
    "non-fast-forward",
    "fetch first",
    "cannot lock ref",
    "failed to update ref",
)


class GitNotes:
    """The notes ref of one repository. One instance per ``cache_dir`` at a time."""

    def __init__(
        self,
        config: RepoSource,
        runner: GitRunner | None = None,
        *,
        ref: str = NOTES_REF,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        self.ref = ref
        self.runner = runner or GitRunner(timeout=config.timeout)
        self.git_dir = config.cache_dir / "notes.git"
        self.sleep = sleep
        self._initialised = False

    def read(self, sha: str) -> str:
        """The note on commit ``sha`` as the remote has it now ("" when there is none)."""
        self.fetch()
        result = self.runner.run(["notes", f"--ref={self.ref}", "show", sha], git_dir=self.git_dir)
        return result.stdout if result.returncode == 0 else ""

    def append(self, sha: str, line: str) -> None:
        """Adds ``line`` to the note on ``sha`` and pushes it, retrying lost races."""
        if "\n" in line:
            raise ValueError("a note line must be one line")
        for attempt in range(1, ATTEMPTS + 1):
            self.fetch()
            self._local(["notes", f"--ref={self.ref}", "append", "-m", line, sha])
            result = self._run_remote(
                ["push", "--quiet", "--no-verify", REMOTE, f"{self.ref}:{self.ref}"]
            )
            if result.returncode == 0:
                return
            if not any(word in result.stderr for word in _REJECTED):
                raise failure("push", self.config.display_url, result, self.runner.timeout)
            log.debug("notes push lost a race (attempt %d), fetching again", attempt)
            # Exponential backoff with full jitter: writers that keep colliding spread out, so
            # one of them wins each round. A linear backoff let four busy writers collide eight
            # times in a row (a lost race each round is likely for all but one writer).
            ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt)
            self.sleep(random.uniform(0, ceiling))  # noqa: S311 - jitter, not crypto
        raise NotesConflict(
            f"could not push {self.ref} to {self.config.display_url} after {ATTEMPTS} attempts: "
            "other writers kept moving it"
        )

    def fetch(self) -> None:
        """Makes the local notes ref exactly the remote's (or absent when the remote has none)."""
        self._init()
        result = self._run_remote(
            [
                "fetch",
                "--quiet",
                "--no-tags",
                "--no-write-fetch-head",
                REMOTE,
                f"+{self.ref}:{self.ref}",
            ]
        )
        if result.returncode == 0:
            return
        if any(word in result.stderr for word in _MISSING_REF):
            self.runner.run(["update-ref", "-d", self.ref], git_dir=self.git_dir)
            return
        raise failure("fetch", self.config.display_url, result, self.runner.timeout)

    def _init(self) -> None:
        if self._initialised:
            return
        if not (self.git_dir / "HEAD").exists():
            Path(self.git_dir).parent.mkdir(parents=True, exist_ok=True)
            self._local(["init", "--bare", "--quiet", str(self.git_dir)], git_dir=False)
        self._initialised = True

    def _run_remote(self, args: list[str]) -> GitResult:
        creds = credentials(self.config.auth, self.config.url)
        return self.runner.run(
            args,
            git_dir=self.git_dir,
            config=((f"remote.{REMOTE}.url", self.config.url), *creds.config, *_IDENTITY),
            env=creds.env,
            secrets=creds.secrets,
        )

    def _local(self, args: list[str], *, git_dir: bool = True) -> GitResult:
        result = self.runner.run(args, git_dir=self.git_dir if git_dir else None, config=_IDENTITY)
        if result.returncode != 0:
            raise SourceError(
                f"git {args[0]} failed in {self.git_dir} (exit {result.returncode}): "
                f"{result.stderr.strip()[-400:]}"
            )
        return result
