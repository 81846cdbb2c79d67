"""Polling a branch and materialising the tree at an exact commit.

Owns the per-source cache: a bare repository (``cache_dir/repo.git``) filled by shallow
fetches of the branch, and one directory per commit (``cache_dir/trees/<sha>``). ``head()``
is one ``git ls-remote``; ``checkout(sha)`` fetches only when the commit is not cached and
never returns "whatever the branch is now". Must not parse manifests or decide what to apply.

One :class:`GitSource` per ``cache_dir`` at a time: the cache is not locked across processes.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

from gitsync.errors import CommitNotFound, RefNotFound, SourceError, TreeTooLarge
from gitsync.source.auth import credentials
from gitsync.source.config import RepoSource
from gitsync.source.failures import failure
from gitsync.source.runner import GitResult, GitRunner
from gitsync.source.verify import Verifier

log = logging.getLogger(__name__)

_SHA = re.compile(r"^[0-9a-f]{40}$")
# When the wanted commit is not the branch tip (the branch moved between head() and
# checkout()), deepen the shallow fetch this far once before calling the commit gone.
DEEPEN = 50
# merge_base deepens the shallow cache this many times (by DEEPEN, then doubling), the last
# time to the whole history.
MERGE_BASE_DEEPENINGS = 4
# The remote exists only in each git process's environment (see _remote); a name no user
# config will have, since config values for remote.<name>.url accumulate across files.
REMOTE = "gitsync-upstream"


class GitSource:
    """The Git edge for one :class:`RepoSource`. Every git process is in ``runner.calls``."""

    def __init__(self, config: RepoSource, runner: GitRunner | None = None) -> None:
        self.config = config
        self.runner = runner or GitRunner(timeout=config.timeout)
        self.git_dir = config.cache_dir / "repo.git"
        self.trees_dir = config.cache_dir / "trees"
        self._url = config.display_url
        # Trees this process checked out, by commit. ``_ready`` went through checkout (and
        # the verifier, when configured); ``_unchecked`` only through checkout_ref: a pull
        # request's head is never served to checkout as a verified base head from here.
        self._ready: dict[str, Path] = {}
        self._unchecked: dict[str, Path] = {}
        self._initialised = False
        self._verifier = (
            Verifier(config.verify, config.cache_dir / "trust", self.runner)
            if config.verify
            else None
        )

    def __repr__(self) -> str:
        return f"GitSource({self.config!r})"

    # -- public ------------------------------------------------------------------------------

    def head(self) -> str:
        """The SHA the branch points at on the remote: exactly one ``git ls-remote``."""
        ref = f"refs/heads/{self.config.branch}"
        self._init()
        result = self._remote(["ls-remote", REMOTE, ref], op="ls-remote")
        for line in result.stdout.splitlines():
            sha, _, name = line.partition("\t")
            if name == ref and _SHA.match(sha):
                log.debug("polled url=%s branch=%s head=%s", self._url, self.config.branch, sha)
                return sha
        raise RefNotFound(
            f"branch {self.config.branch!r} does not exist in {self._url}; check the branch "
            "name in the repo config, or push it"
        )

    def checkout(self, sha: str) -> Path:
        """The directory holding the tree of commit ``sha`` exactly (verified if configured).

        Cached trees are reused without running git. A commit that is neither cached nor
        reachable from the branch any more raises :class:`CommitNotFound`.
        """
        if not _SHA.match(sha):
            raise ValueError(f"expected a full 40-hex commit SHA, got {sha!r}")
        if sha in self._ready:
            return self._ready[sha]
        self._init()
        tree = self.trees_dir / sha
        if not (tree.is_dir() and self._verifier is None):
            if not self._has_commit(sha):
                self._fetch(sha)
            if self._verifier is not None:
                self._verifier.verify(self.git_dir, sha)
            if not tree.is_dir():
                self._materialise(sha, tree)
        self._ready[sha] = tree
        log.info("checked out url=%s revision=%s path=%s", self._url, sha, tree)
        return tree

    def commit_info(self, sha: str) -> tuple[str, float | None, str]:
        """(author name, committer time, subject) of a commit already fetched into the cache
        (a shallow commit keeps its metadata): one local ``git show``, no network."""
        if not _SHA.match(sha):
            raise ValueError(f"expected a full 40-hex commit SHA, got {sha!r}")
        self._init()
        result = self._local(["show", "-s", "--format=%an%x00%ct%x00%s", sha])
        author, _, rest = result.stdout.rstrip("\n").partition("\0")
        when, _, subject = rest.partition("\0")
        return author, float(when) if when.isdigit() else None, subject

    def checkout_ref(self, ref: str, sha: str) -> Path:
        """The tree of commit ``sha``, fetched from ``ref`` (a pull request's head such as
        ``refs/pull/7/head``, or another branch) when it is not cached. Previews only: the
        configured branch goes through :meth:`checkout`, which verifies signatures. The head
        is verified too only with ``verify.pullRequests``; otherwise its tree is kept apart
        from the verified ones (:meth:`checkout` verifies a commit it did not check itself,
        wherever it came from)."""
        if not _SHA.match(sha):
            raise ValueError(f"expected a full 40-hex commit SHA, got {sha!r}")
        if not ref_ok(ref):
            raise ValueError(f"expected a full ref such as refs/pull/7/head, got {ref!r}")
        if sha in self._ready:
            return self._ready[sha]
        verify = self.config.verify
        signed = self._verifier is not None and verify is not None and verify.pull_requests
        if sha in self._unchecked and not signed:
            return self._unchecked[sha]
        self._init()
        tree = self.trees_dir / sha
        if not tree.is_dir() or signed:
            if not self._has_commit(sha):
                local = "refs/gitsync/" + ref.removeprefix("refs/")
                self._remote(
                    ["fetch", "--quiet", "--no-tags", "--no-write-fetch-head",
                     f"--depth={self.config.depth}", REMOTE, f"+{ref}:{local}"],
                    op="fetch",
                )  # fmt: skip
                if not self._has_commit(sha):
                    raise CommitNotFound(
                        f"{ref} of {self._url} is no longer at {sha}: it moved on; the next "
                        "reconcile takes the new head"
                    )
            if signed:  # repository.verify.pullRequests: as trusted as the branch's commits
                assert self._verifier is not None
                self._verifier.verify(self.git_dir, sha)
            if not tree.is_dir():
                self._materialise(sha, tree)
        if signed:
            self._ready[sha] = tree
        else:
            self._unchecked[sha] = tree
        return tree

    def merge_base(self, base: str, head: str, head_ref: str) -> str:
        """The commit ``head`` (fetched from ``head_ref``, as by :meth:`checkout_ref`) forked
        from on the configured branch, ``base`` being the branch's tip: what a pull request
        changes is ``merge_base..head``, not ``base..head`` (which would also revert whatever
        the branch gained since). The cache is shallow, so history is deepened until the two
        meet: ``DEEPEN`` commits, doubled each time, then the whole history."""
        for sha in (base, head):
            if not _SHA.match(sha):
                raise ValueError(f"expected a full 40-hex commit SHA, got {sha!r}")
        if not ref_ok(head_ref):
            raise ValueError(f"expected a full ref such as refs/pull/7/head, got {head_ref!r}")
        self._init()
        branch = self.config.branch
        refspecs = [
            f"+refs/heads/{branch}:refs/gitsync/{branch}",
            f"+{head_ref}:refs/gitsync/{head_ref.removeprefix('refs/')}",
        ]
        fetch = ["fetch", "--quiet", "--no-tags", "--no-write-fetch-head"]
        for attempt in range(MERGE_BASE_DEEPENINGS + 1):
            result = self.runner.run(["merge-base", base, head], git_dir=self.git_dir)
            if result.returncode == 0:
                return result.stdout.strip()
            shallow = (self.git_dir / "shallow").exists()
            if result.returncode != 1 or not shallow or attempt == MERGE_BASE_DEEPENINGS:
                break  # an error, or the whole history is here and they share no commit
            deepen = (
                "--unshallow"
                if attempt == MERGE_BASE_DEEPENINGS - 1
                else f"--deepen={DEEPEN * 2**attempt}"
            )
            self._remote([*fetch, deepen, REMOTE, *refspecs], op="fetch")
        raise SourceError(
            f"{head_ref} at {head[:12]} shares no history with branch {branch!r} at "
            f"{base[:12]} in {self._url}: {result.stderr.strip()[-400:] or 'no common commit'}"
        )

    def on_branch(self, revision: str) -> str:
        """The full SHA of ``revision`` (a SHA, possibly abbreviated to 7 or more hex digits)
        when it is a commit of the configured branch (the tip or an ancestor of it); else
        :class:`CommitNotFound`. The shallow cache is deepened as :meth:`merge_base` does
        until the commit is found or the whole history is here. ``gitsync pin`` checks its
        revision with this, and a pass with it before checking a pinned revision out."""
        if not re.fullmatch(r"[0-9a-f]{7,40}", revision):
            raise CommitNotFound(f"{revision!r} is not a commit SHA (7 to 40 hex digits)")
        self._init()
        branch = self.config.branch
        tip = f"refs/gitsync/{branch}"
        fetch = ["fetch", "--quiet", "--no-tags", "--no-write-fetch-head"]
        refspec = f"+refs/heads/{branch}:{tip}"
        steps = [f"--depth={self.config.depth}"]
        steps += [f"--deepen={DEEPEN * 2**i}" for i in range(MERGE_BASE_DEEPENINGS - 1)]
        for step in [None, *steps, "--unshallow"]:  # None: what the cache already holds
            if step is not None:
                if step == "--unshallow" and not (self.git_dir / "shallow").exists():
                    break
                self._remote([*fetch, step, REMOTE, refspec], op="fetch")
            found = self.runner.run(
                ["rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}"], git_dir=self.git_dir
            )
            sha = found.stdout.strip()
            if found.returncode == 0 and _SHA.match(sha):
                ancestor = self.runner.run(
                    ["merge-base", "--is-ancestor", sha, tip], git_dir=self.git_dir
                )
                if ancestor.returncode == 0:
                    return sha
        raise CommitNotFound(
            f"{revision} is not a commit of branch {branch!r} of {self._url}: pin a commit "
            "the branch has (git log origin/" + branch + ")"
        )

    def branches(self, pattern: str) -> dict[str, str]:
        """Branch name → SHA for the remote's branches matching a glob (``preview/*``)."""
        self._init()
        result = self._remote(
            ["ls-remote", "--heads", REMOTE, f"refs/heads/{pattern}"], op="ls-remote"
        )
        found = {}
        for line in result.stdout.splitlines():
            sha, _, name = line.partition("\t")
            if _SHA.match(sha) and name.startswith("refs/heads/"):
                found[name.removeprefix("refs/heads/")] = sha
        return found

    def prune(self, keep: Iterable[str]) -> list[str]:
        """Deletes cached trees except ``keep`` (e.g. the applied and the newest revision);
        returns the SHAs removed. Runs no git."""
        wanted = set(keep)
        removed = []
        for tree in self.trees_dir.glob("*") if self.trees_dir.is_dir() else ():
            if _SHA.match(tree.name) and tree.name not in wanted:
                shutil.rmtree(tree)
                self._ready.pop(tree.name, None)
                self._unchecked.pop(tree.name, None)
                removed.append(tree.name)
            elif tree.name[:40] not in wanted and _SHA.match(tree.name[:40]) and tree.is_file():
                tree.unlink(missing_ok=True)  # the tree's parsed report (checkout.py)
        if removed:
            log.debug("pruned url=%s trees=%d", self._url, len(removed))
        return sorted(removed)

    # -- internals ---------------------------------------------------------------------------

    def _init(self) -> None:
        if self._initialised:
            return
        if not (self.git_dir / "HEAD").exists():
            self.config.cache_dir.mkdir(parents=True, exist_ok=True)
            result = self.runner.run(["init", "--bare", "--quiet", str(self.git_dir)])
            if result.returncode != 0:
                raise SourceError(
                    f"cannot create the Git cache in {self.config.cache_dir}: "
                    f"{result.stderr.strip()[-400:]}; check that the directory is writable"
                )
        self.trees_dir.mkdir(parents=True, exist_ok=True)
        self._initialised = True

    def _has_commit(self, sha: str) -> bool:
        result = self.runner.run(["cat-file", "-e", f"{sha}^{{commit}}"], git_dir=self.git_dir)
        return result.returncode == 0

    def _fetch(self, sha: str) -> None:
        branch = self.config.branch
        refspec = f"+refs/heads/{branch}:refs/gitsync/{branch}"
        fetch = ["fetch", "--quiet", "--no-tags", "--no-write-fetch-head", REMOTE, refspec]
        self._remote([*fetch[:1], f"--depth={self.config.depth}", *fetch[1:]], op="fetch")
        if self._has_commit(sha):
            return
        # The branch moved on since head(): look a little further back once.
        self._remote([*fetch[:1], f"--deepen={DEEPEN}", *fetch[1:]], op="fetch")
        if self._has_commit(sha):
            return
        tip = self._local(["rev-parse", f"refs/gitsync/{branch}"]).stdout.strip()
        raise CommitNotFound(
            f"commit {sha} is not on branch {branch!r} of {self._url} any more (the branch is "
            f"at {tip} and the commit is not among its last {self.config.depth + DEEPEN} "
            "commits): history was rewritten or it moved on; deploy the new head instead"
        )

    def _materialise(self, sha: str, tree: Path) -> None:
        materialise(self.runner, self.git_dir, sha, tree, self.config.max_tree_bytes)

    def _remote(self, args: list[str], *, op: str) -> GitResult:
        creds = credentials(self.config.auth, self.config.url)
        fetching = op == "fetch"
        limit = self.config.max_fetch_bytes if fetching else None
        # A fetch never starts git's automatic housekeeping itself: git runs it detached, and
        # the background repack rewrote the shallow file while the next fetch read it ("shallow
        # file has changed since we read it"). _housekeep runs it in the foreground instead.
        quiet = (("gc.auto", "0"), ("maintenance.auto", "false")) if fetching else ()
        result = self.runner.run(
            args,
            git_dir=self.git_dir,
            # The remote is defined in the environment, not argv (a URL with userinfo stays
            # out of `ps`) and not in the cache repo's config (nothing to go stale).
            config=((f"remote.{REMOTE}.url", self.config.url), *quiet, *creds.config),
            env=creds.env,
            secrets=(*creds.secrets, *_userinfo(self.config.url)),
            max_file_bytes=limit,
        )
        if result.returncode != 0 and limit is not None and _cut_off(self.git_dir, limit):
            wanted = " ".join(a for a in args if not a.startswith("-") and a != REMOTE)
            raise TreeTooLarge(
                f"not fetched: {wanted.removeprefix('fetch ')} of {self._url} is more than "
                f"the {mib(limit)} one fetch may download (repository.maxFetchSize). Keep "
                "large files and histories out of the deployment repository, or raise "
                "repository.maxFetchSize"
            )
        if result.returncode != 0:
            raise failure(op, self._url, result, self.runner.timeout)
        if fetching:
            self._housekeep()
        return result

    def _housekeep(self) -> None:
        """``git gc --auto`` after a fetch, in the foreground (each fetch adds a pack: past
        gc.autoPackLimit, 50, they are repacked into one). Its failure costs only speed, so it
        is logged, never raised."""
        result = self.runner.run(
            ["gc", "--auto", "--quiet"], git_dir=self.git_dir, config=(("gc.autoDetach", "false"),)
        )
        if result.returncode != 0:
            log.warning(
                "git gc --auto failed in the cache %s (exit %d): %s",
                self.config.cache_dir, result.returncode, result.stderr.strip()[-400:],
            )  # fmt: skip

    def _local(
        self,
        args: list[str],
        *,
        config: tuple[tuple[str, str], ...] = (),
        env: tuple[tuple[str, str], ...] = (),
    ) -> GitResult:
        result = self.runner.run(args, git_dir=self.git_dir, config=config, env=env)
        if result.returncode != 0:
            raise SourceError(
                f"git {args[0]} failed in the cache {self.config.cache_dir} "
                f"(exit {result.returncode}): {result.stderr.strip()[-400:]}; delete the cache "
                "directory if it is corrupt"
            )
        return result


def _cut_off(git_dir: Path, limit: int) -> bool:
    """Whether a fetch that failed was stopped by its file-size limit: index-pack, killed by
    SIGXFSZ, leaves its pack at exactly the limit (git then says only "invalid index-pack
    output"). Removes those packs; another fetch's pack still being written is left alone."""
    cut = False
    for partial in (git_dir / "objects" / "pack").glob("tmp_pack_*"):
        try:
            if partial.stat().st_size >= limit:
                partial.unlink()
                cut = True
        except FileNotFoundError:
            continue
    return cut


def ref_ok(ref: str) -> bool:
    return ref.startswith("refs/") and ".." not in ref


def _userinfo(url: str) -> tuple[str, ...]:
    """Credentials written into the URL itself, to redact from git's messages. A username
    alone counts when it looks like a token (``https://<token>@host/...``)."""
    parts = urlsplit(url)
    if parts.password:
        return (parts.password,)
    return (parts.username,) if parts.username and len(parts.username) >= 8 else ()


def materialise(
    runner: GitRunner, git_dir: Path, sha: str, tree: Path, max_bytes: int | None = None
) -> None:
    """Writes the tree of ``sha`` into ``tree`` through a temporary sibling renamed into
    place, so a crash never leaves a half-written tree that a later checkout would trust.

    With ``max_bytes``, a tree whose files add up to more (measured by ``git ls-tree -l``
    before anything is written) is refused with :class:`TreeTooLarge`: any pull request's tree
    is written out, and one must not fill the leader's disk."""
    if max_bytes is not None:
        check_tree_size(runner, git_dir, sha, max_bytes)
    tree.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{sha[:12]}-", dir=tree.parent))
    index = staging.with_name(staging.name + ".index")
    try:
        (staging / "tree").mkdir()
        result = runner.run(
            ["--work-tree", str(staging / "tree"), "checkout", sha, "--", "."],
            git_dir=git_dir,
            # Symlinks stay symlinks, so gitsync.checkout applies one policy to a checkout and
            # to `gitsync validate PATH`: a link leaving the environment folder is refused by
            # name, never followed (as plain files holding the link text they were parsed as
            # YAML strings). git itself never writes beyond a symlink in the tree. No
            # line-ending or filter rewriting of contents.
            config=(("core.symlinks", "true"), ("core.autocrlf", "false")),
            env=(("GIT_INDEX_FILE", str(index)),),
        )
        if result.returncode != 0:
            raise SourceError(
                f"cannot write the tree of {sha} from {git_dir}: {result.stderr.strip()[-400:]}"
            )
        try:
            os.rename(staging / "tree", tree)
        except OSError:
            if not tree.is_dir():  # not a concurrent writer that won: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        index.unlink(missing_ok=True)


def check_tree_size(runner: GitRunner, git_dir: Path, sha: str, max_bytes: int) -> None:
    """Raises :class:`TreeTooLarge` when the files of ``sha``'s tree add up to more than
    ``max_bytes``, naming the largest; one local ``git ls-tree``, nothing written."""
    result = runner.run(["ls-tree", "-r", "-l", "-z", sha], git_dir=git_dir)
    if result.returncode != 0:
        raise SourceError(f"cannot list the tree of {sha}: {result.stderr.strip()[-400:]}")
    sizes = tree_sizes(result.stdout)
    total = sum(sizes.values())
    if total <= max_bytes:
        return
    largest = sorted(sizes.items(), key=lambda item: (-item[1], item[0]))[:3]
    named = ", ".join(f"{path} ({mib(size)})" for path, size in largest)
    raise TreeTooLarge(
        f"the tree of {sha[:12]} holds {mib(total)} of files, more than the "
        f"{mib(max_bytes)} gitsync writes out (repository.maxTreeSize); largest: {named}. "
        "Keep large files out of the deployment repository, or raise repository.maxTreeSize"
    )


def tree_sizes(listing: str) -> dict[str, int]:
    """``git ls-tree -r -l -z`` output → {path: blob size}. Submodules (commits) have no
    size and are never written out."""
    sizes = {}
    for entry in listing.split("\0"):
        meta, tab, path = entry.partition("\t")
        fields = meta.split()
        if tab and len(fields) == 4 and fields[1] == "blob" and fields[3].isdigit():
            sizes[path] = int(fields[3])
    return sizes


def mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"
