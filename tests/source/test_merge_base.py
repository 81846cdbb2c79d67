"""Where a pull request forked from the branch, through the shallow cache: real repositories."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gitsync.errors import SourceError
from gitsync.source import GitSource, RepoSource

from .repos import Upstream, git

UrlFor = Callable[[Upstream], str]


def push_branch(upstream: Upstream, name: str) -> str:
    git("push", "--quiet", "--force", str(upstream.bare), f"HEAD:refs/heads/{name}",
        cwd=upstream.work)  # fmt: skip
    return git("rev-parse", "HEAD", cwd=upstream.work)


def test_the_fork_point_is_found_however_far_the_branch_moved_on(
    upstream: Upstream, url_for: UrlFor, tmp_path: Path
) -> None:
    fork = upstream.commit({"app.yaml": "v1\n"})
    git("checkout", "--quiet", "-b", "feature", cwd=upstream.work)
    upstream.commit({"app.yaml": "feature\n"}, push=False)
    head = push_branch(upstream, "feature")
    git("checkout", "--quiet", "main", cwd=upstream.work)
    for index in range(120):  # beyond the first deepenings (50, then 100 more)
        upstream.commit({"main.yaml": f"{index}\n"}, push=False)
    upstream.push()
    source = GitSource(RepoSource(url_for(upstream), "main", tmp_path / "cache"))
    tip = source.head()
    source.checkout(tip)
    source.checkout_ref("refs/heads/feature", head)
    assert source.merge_base(tip, head, "refs/heads/feature") == fork
    fetches = [call for call in source.runner.calls if call.subcommand == "fetch"]
    assert any("--deepen=100" in call.argv for call in fetches)
    assert not any("--unshallow" in call.argv for call in fetches)
    # Found again without the network: the history is in the cache now.
    before = len(source.runner.calls)
    assert source.merge_base(tip, head, "refs/heads/feature") == fork
    assert [call.subcommand for call in source.runner.calls[before:]] == ["merge-base"]


def test_unrelated_histories_are_a_source_error(upstream: Upstream, tmp_path: Path) -> None:
    upstream.commit({"app.yaml": "v1\n"})
    git("checkout", "--quiet", "--orphan", "other", cwd=upstream.work)
    upstream.commit({"other.yaml": "x\n"}, push=False)
    head = push_branch(upstream, "other")
    source = GitSource(RepoSource(upstream.bare.as_uri(), "main", tmp_path / "cache"))
    tip = source.head()
    source.checkout(tip)
    source.checkout_ref("refs/heads/other", head)
    with pytest.raises(SourceError, match="shares no history"):
        source.merge_base(tip, head, "refs/heads/other")
