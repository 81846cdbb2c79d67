"""A repository already on disk (a developer's clone, a CI checkout): revisions → trees.

For ``gitsync plan --from A --to B``: resolves revisions with ``git rev-parse`` and writes
each commit's tree into a cache with the same code the remote source uses. No network, and
the working tree and index of the repository are never touched.
"""

from __future__ import annotations

from pathlib import Path

from gitsync.errors import SourceError
from gitsync.source.git import materialise
from gitsync.source.runner import GitRunner


class LocalRepository:
    def __init__(self, path: Path, cache_dir: Path, runner: GitRunner | None = None) -> None:
        self.path = path
        self.cache_dir = cache_dir
        self.runner = runner or GitRunner(timeout=60.0)
        result = self.runner.run(["rev-parse", "--absolute-git-dir"], cwd=path)
        if result.returncode != 0:
            raise SourceError(f"{path} is not a Git repository: {result.stderr.strip()[-300:]}")
        self.git_dir = Path(result.stdout.strip())

    def resolve(self, rev: str) -> str:
        """The full SHA of the commit ``rev`` names (a branch, tag, SHA, ``HEAD~2``…)."""
        result = self.runner.run(
            ["rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], git_dir=self.git_dir
        )
        if result.returncode != 0 or not result.stdout.strip():
            raise SourceError(f"{rev!r} names no commit in {self.path}; check the revision")
        return result.stdout.strip()

    def tree(self, sha: str) -> Path:
        tree = self.cache_dir / "trees" / sha
        if not tree.is_dir():
            materialise(self.runner, self.git_dir, sha, tree)
        return tree
