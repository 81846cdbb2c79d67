"""Test repositories made with plain git: an upstream bare repository and a work clone that
commits (optionally signed) and pushes, force-pushes included."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path


def git(*args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None) -> str:
    done = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if done.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {done.stderr}")
    return done.stdout.strip()


class Upstream:
    """``root/<name>.git`` (served) and a work clone in ``workdir`` that pushes to it."""

    def __init__(self, root: Path, name: str, workdir: Path, branch: str = "main") -> None:
        self.name = f"{name}.git"
        self.bare = root / self.name
        self.work = workdir / name
        self.branch = branch
        git("init", "--quiet", "--bare", f"--initial-branch={branch}", str(self.bare))
        git("init", "--quiet", f"--initial-branch={branch}", str(self.work))
        for key, value in (
            ("user.name", "Tester"),
            ("user.email", "tester@example.com"),
            ("commit.gpgsign", "false"),
        ):
            git("config", key, value, cwd=self.work)

    def commit(
        self,
        files: Mapping[str, str],
        message: str = "change",
        *,
        sign: tuple[str, ...] = (),
        env: Mapping[str, str] | None = None,
        push: bool = True,
    ) -> str:
        """Writes ``files``, commits (``sign`` adds ``-c`` options and ``-S``), pushes."""
        for path, text in files.items():
            target = self.work / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            git("add", path, cwd=self.work)
        options = [arg for option in sign for arg in ("-c", option)]
        signed = ["-S"] if sign else []
        git(*options, "commit", "--quiet", *signed, "-m", message, cwd=self.work, env=env)
        if push:
            self.push()
        return git("rev-parse", "HEAD", cwd=self.work)

    def push(self, *, force: bool = False) -> None:
        flags = ["--force"] if force else []
        git(
            "push",
            "--quiet",
            *flags,
            str(self.bare),
            f"HEAD:refs/heads/{self.branch}",
            cwd=self.work,
        )

    def rewrite(self, files: Mapping[str, str], message: str = "rewritten") -> str:
        """Drops the last commit, commits ``files`` instead and force-pushes; the dropped
        commit is then pruned from the server, as a forge's gc would."""
        git("reset", "--quiet", "--hard", "HEAD~1", cwd=self.work)
        sha = self.commit(files, message, push=False)
        self.push(force=True)
        git("reflog", "expire", "--expire=now", "--all", cwd=self.bare)
        git("gc", "--quiet", "--prune=now", cwd=self.bare)
        return sha
