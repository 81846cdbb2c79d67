"""The one door every git process goes through.

Owns starting git (via GitPython's ``git.cmd.Git``, no ``Repo`` kept open), the environment
that keeps git non-interactive and independent of the user's credential helpers, the timeout
on every process, and the record of what ran (:attr:`GitRunner.calls`) so callers and tests
can count processes. Credentials arrive as environment entries only; the record and the logs
hold argv, which never carries one. A fetch may be bounded in what it writes
(``max_file_bytes``: the kernel's file-size limit, set by util-linux's ``prlimit``, on a fetch
that keeps what it downloads as one pack). Must not interpret git's output: callers do.
"""

from __future__ import annotations

import functools
import logging
import shutil
import signal
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import git

from gitsync.source.redact import redact

log = logging.getLogger(__name__)

# Keep git from ever waiting for a human, and from consulting helpers that might store or
# offer credentials other than the configured ones.
_BASE_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_ASKPASS": "",  # empty: skip askpass programs; with prompts off, git fails fast
    "SSH_ASKPASS": "",
    "GCM_INTERACTIVE": "never",
    "GIT_OPTIONAL_LOCKS": "0",
}
_BASE_CONFIG = (
    ("credential.helper", ""),  # an empty value resets the helper list
    ("core.hooksPath", "/dev/null"),  # the cache repo runs no hooks
    ("core.askPass", ""),
)


@dataclass(frozen=True, slots=True)
class GitCall:
    """One finished git process: its argv (credential-free), exit status and duration."""

    argv: tuple[str, ...]
    returncode: int
    seconds: float

    @property
    def subcommand(self) -> str:
        """The git verb (``ls-remote``, ``fetch`` …), skipping global options."""
        for arg in self.argv[1:]:
            if not arg.startswith("-"):
                return arg
        return ""


@dataclass(frozen=True, slots=True)
class GitResult:
    returncode: int
    stdout: str
    stderr: str  # redacted
    timed_out: bool


class GitRunner:
    """Runs git with a timeout and records every call in :attr:`calls`."""

    def __init__(self, *, timeout: float, executable: str = "git") -> None:
        self.timeout = timeout
        self.executable = executable
        self.calls: list[GitCall] = []

    def run(
        self,
        args: Sequence[str],
        *,
        git_dir: Path | None = None,
        cwd: Path | None = None,
        config: Iterable[tuple[str, str]] = (),
        env: Iterable[tuple[str, str]] = (),
        secrets: Iterable[str] = (),
        max_file_bytes: int | None = None,
    ) -> GitResult:
        """Runs ``git args``. ``max_file_bytes`` (a fetch) bounds every file git writes; with
        the ``fetch.unpackLimit`` of 1 set here, the pack a fetch downloads is one file, so a
        fetch cannot fill the disk however large the commits it is sent."""
        argv = [self.executable]
        if git_dir is not None:
            argv.append(f"--git-dir={git_dir}")
        argv.extend(args)
        child_env = dict(_BASE_ENV)
        entries = [*_BASE_CONFIG, *config]
        launch = argv
        if max_file_bytes is not None:
            entries += [("fetch.unpackLimit", "1"), ("transfer.unpackLimit", "1")]
            launch = [*_file_size_limit(max_file_bytes), *argv]
        # GIT_CONFIG_COUNT/KEY/VALUE (git >= 2.31): config that never shows in argv.
        child_env["GIT_CONFIG_COUNT"] = str(len(entries))
        for index, (key, value) in enumerate(entries):
            child_env[f"GIT_CONFIG_KEY_{index}"] = key
            child_env[f"GIT_CONFIG_VALUE_{index}"] = value
        child_env.update(env)
        if git_dir is not None:
            child_env["GIT_DIR"] = str(git_dir)
        began = time.monotonic()
        status, stdout, stderr = git.cmd.Git(str(cwd) if cwd else None).execute(
            launch,
            with_extended_output=True,
            with_exceptions=False,
            kill_after_timeout=self.timeout,
            env=child_env,
            strip_newline_in_stdout=False,
        )
        seconds = time.monotonic() - began
        call = GitCall(tuple(argv), status, seconds)
        self.calls.append(call)
        # GitPython's watchdog sets its "Timeout:" message only after it has killed git's
        # children too, and communicate() can return before that (GitPython 3.2.1): a git
        # killed by SIGKILL once the timeout has passed timed out, message or not.
        killed_late = status == -signal.SIGKILL and seconds >= self.timeout
        timed_out = status != 0 and (stderr.startswith("Timeout:") or killed_late)
        stderr = redact(stderr, secrets)
        log.debug(
            "git call=%s status=%d seconds=%.3f stderr=%r",
            redact(" ".join(argv), secrets),
            status,
            seconds,
            stderr[-500:],
        )
        return GitResult(status, stdout, stderr, timed_out)


_warned_no_prlimit = False


@functools.cache
def _prlimit() -> str | None:
    """Where util-linux's prlimit is: looked up once, not on every fetch."""
    return shutil.which("prlimit")


def _file_size_limit(max_bytes: int) -> list[str]:
    """The argv prefix that runs a command under a file-size limit of ``max_bytes``; empty,
    with one warning, where util-linux's ``prlimit`` is missing (not Linux): the fetch then
    runs unbounded."""
    global _warned_no_prlimit  # noqa: PLW0603 - one warning per process
    found = _prlimit()
    if found is None:
        if not _warned_no_prlimit:
            _warned_no_prlimit = True
            log.warning(
                "prlimit (util-linux) is not installed: repository.maxFetchSize is not enforced"
            )
        return []
    return [found, f"--fsize={max_bytes}", "--"]
