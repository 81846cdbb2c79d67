"""Polling and checkout over file://, git daemon and smart HTTP, against real repositories."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gitsync.checkout import read_tree as read_checkout
from gitsync.errors import CommitNotFound, RefNotFound
from gitsync.source import GitSource, RepoSource

from .repos import Upstream, git

UrlFor = Callable[[Upstream], str]


def subcommands(source: GitSource, since: int = 0) -> list[str]:
    return [call.subcommand for call in source.runner.calls[since:]]


def read_tree(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): p.read_text() for p in sorted(path.rglob("*")) if p.is_file()}


def test_unchanged_head_is_one_ls_remote_and_no_fetch(
    upstream: Upstream, url_for: UrlFor, tmp_path: Path
) -> None:
    sha = upstream.commit({"app.yaml": "v1\n"})
    source = GitSource(RepoSource(url_for(upstream), "main", tmp_path / "cache"))
    assert source.head() == sha
    source.checkout(sha)

    for _ in range(3):
        before = len(source.runner.calls)
        assert source.head() == sha
        assert subcommands(source, before) == ["ls-remote"]
        assert source.runner.calls[-1].argv[-2:] == ("gitsync-upstream", "refs/heads/main")
        assert source.checkout(sha) == tmp_path / "cache" / "trees" / sha
        assert subcommands(source, before) == ["ls-remote"]  # the tree is reused: no git
    assert "fetch" in subcommands(source)  # the first checkout did fetch


def test_new_commit_gives_the_tree_at_exactly_that_sha(
    upstream: Upstream, url_for: UrlFor, tmp_path: Path
) -> None:
    first = upstream.commit({"app.yaml": "v1\n", "keep.yaml": "same\n"})
    source = GitSource(RepoSource(url_for(upstream), "main", tmp_path / "cache"))
    assert read_tree(source.checkout(source.head())) == {"app.yaml": "v1\n", "keep.yaml": "same\n"}

    second = upstream.commit({"app.yaml": "v2\n", "new/x.yaml": "x\n"})
    third = upstream.commit({"app.yaml": "v3\n"})
    assert source.head() == third

    # The branch is already at `third`: asking for `second` still yields `second`'s files.
    assert read_tree(source.checkout(second)) == {
        "app.yaml": "v2\n",
        "keep.yaml": "same\n",
        "new/x.yaml": "x\n",
    }
    assert read_tree(source.checkout(third))["app.yaml"] == "v3\n"
    assert read_tree(source.checkout(first)) == {"app.yaml": "v1\n", "keep.yaml": "same\n"}
    assert source.checkout(second).name == second


def test_checkout_reuses_a_tree_left_by_an_earlier_process(
    upstream: Upstream, tmp_path: Path
) -> None:
    sha = upstream.commit({"app.yaml": "v1\n"})
    config = RepoSource(upstream.bare.as_uri(), "main", tmp_path / "cache")
    GitSource(config).checkout(sha)

    again = GitSource(config)
    assert read_tree(again.checkout(sha)) == {"app.yaml": "v1\n"}
    assert again.runner.calls == []


def test_force_push_new_head_is_fetched_and_the_vanished_commit_is_a_typed_error(
    upstream: Upstream, url_for: UrlFor, tmp_path: Path
) -> None:
    upstream.commit({"app.yaml": "base\n"})
    old = upstream.commit({"app.yaml": "old\n"})
    source = GitSource(RepoSource(url_for(upstream), "main", tmp_path / "cache"))
    assert source.head() == old
    assert read_tree(source.checkout(old)) == {"app.yaml": "old\n"}

    # A commit seen by head() but rewritten away before it was checked out …
    doomed = upstream.commit({"app.yaml": "doomed\n"})
    assert source.head() == doomed
    new = upstream.rewrite({"app.yaml": "new\n"})
    assert source.head() == new
    assert read_tree(source.checkout(new)) == {"app.yaml": "new\n"}
    with pytest.raises(CommitNotFound, match=rf"commit {doomed} is not on branch 'main'") as exc:
        source.checkout(doomed)
    assert new in str(exc.value)  # says where the branch is now

    # … and an old commit the remote no longer has, asked of a fresh cache.
    fresh = GitSource(RepoSource(url_for(upstream), "main", tmp_path / "fresh"))
    upstream.rewrite({"app.yaml": "newer\n"})
    with pytest.raises(CommitNotFound):
        fresh.checkout(new)
    assert not (tmp_path / "fresh" / "trees" / new).exists()


def test_missing_branch_is_ref_not_found(
    upstream: Upstream, url_for: UrlFor, tmp_path: Path
) -> None:
    upstream.commit({"app.yaml": "v1\n"})
    source = GitSource(RepoSource(url_for(upstream), "release", tmp_path / "cache"))
    with pytest.raises(RefNotFound, match="branch 'release' does not exist"):
        source.head()


def test_a_branch_whose_name_is_a_suffix_of_another_is_not_confused(
    upstream: Upstream, tmp_path: Path
) -> None:
    sha = upstream.commit({"app.yaml": "v1\n"})
    upstream.branch = "feature/main"
    upstream.commit({"app.yaml": "other\n"})
    source = GitSource(RepoSource(upstream.bare.as_uri(), "main", tmp_path / "cache"))
    assert source.head() == sha


def test_checkout_wants_a_full_sha(upstream: Upstream, tmp_path: Path) -> None:
    upstream.commit({"app.yaml": "v1\n"})
    source = GitSource(RepoSource(upstream.bare.as_uri(), "main", tmp_path / "cache"))
    with pytest.raises(ValueError, match="full 40-hex"):
        source.checkout("HEAD")
    assert source.runner.calls == []


def test_symlinks_in_the_repository_are_refused_not_followed(
    upstream: Upstream, tmp_path: Path
) -> None:
    """The checkout keeps the link (so it can be named as one); reading the tree refuses it."""
    (upstream.work / "gitsync.yaml").write_text(
        "environments:\n  - {name: staging, path: env, namespace: ns}\n"
    )
    (upstream.work / "env").mkdir()
    (upstream.work / "env" / "link.yaml").symlink_to("/etc/hostname")
    git("add", "-A", cwd=upstream.work)
    sha = upstream.commit({"app.yaml": "v1\n"})
    source = GitSource(RepoSource(upstream.bare.as_uri(), "main", tmp_path / "cache"))
    tree = source.checkout(sha)
    assert (tree / "env" / "link.yaml").is_symlink()
    [problem] = read_checkout(tree).problems
    assert str(problem) == "env/link.yaml: symlink points outside the repository (to /etc/hostname)"


def test_prune_keeps_only_the_named_trees(upstream: Upstream, tmp_path: Path) -> None:
    first = upstream.commit({"app.yaml": "v1\n"})
    second = upstream.commit({"app.yaml": "v2\n"})
    source = GitSource(RepoSource(upstream.bare.as_uri(), "main", tmp_path / "cache"))
    source.checkout(first)
    source.checkout(second)
    before = len(source.runner.calls)
    assert source.prune(keep=[second]) == [first]
    assert sorted(p.name for p in source.trees_dir.iterdir()) == [second]
    assert len(source.runner.calls) == before
    assert (source.checkout(first) / "app.yaml").read_text() == "v1\n"  # fetched back


def test_the_cache_is_repacked_in_the_foreground_after_a_fetch(
    upstream: Upstream, tmp_path: Path
) -> None:
    """Each fetch adds a pack; past gc.autoPackLimit (50) git repacks. Left to itself, a fetch
    starts that repack detached, and the repack rewrote the shallow file while the next fetch
    read it (the fetch then failed: "shallow file has changed since we read it"). The repack
    now runs after the fetch, in the foreground: done when checkout returns, never alongside
    the next fetch."""
    source = GitSource(RepoSource(upstream.bare.as_uri(), "main", tmp_path / "cache"))
    packs = tmp_path / "cache" / "repo.git" / "objects" / "pack"
    counts = []
    for n in range(53):
        source.checkout(upstream.commit({"app.yaml": f"v{n}\n"}))
        counts.append(len(list(packs.glob("*.pack"))))
        assert not (tmp_path / "cache" / "repo.git" / "gc.pid").exists(), "a repack still runs"
    # The 51st fetch's pack is one over the limit: repacked before checkout returned.
    assert counts[:50] == list(range(1, 51)), counts
    assert counts[50] == 1, counts
    assert max(counts) == 50, counts
    assert not (tmp_path / "cache" / "repo.git" / "gc.log").exists()
    assert "gc" in subcommands(source)
