"""A pull request cannot fill the leader's disk: a tree larger than ``repository.maxTreeSize``
(measured by ``git ls-tree -l``, before anything is written) is refused. Real repositories."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from gitsync.errors import TreeTooLarge
from gitsync.source import GitSource, RepoSource
from gitsync.source.git import tree_sizes
from gitsync.source.runner import GitRunner

from .repos import Upstream, git

MIB = 2**20


def push_branch(upstream: Upstream, name: str) -> str:
    git("push", "--quiet", "--force", str(upstream.bare), f"HEAD:refs/heads/{name}",
        cwd=upstream.work)  # fmt: skip
    return git("rev-parse", "HEAD", cwd=upstream.work)


def test_a_pull_request_tree_over_the_limit_is_refused_before_it_is_written(
    upstream: Upstream, tmp_path: Path
) -> None:
    tip = upstream.commit({"gitsync.yaml": "environments: {}\n", "env/a.yaml": "a: 1\n"})
    git("checkout", "--quiet", "-b", "big", cwd=upstream.work)
    # 3 MiB that compress to almost nothing: the fetch is small, the tree written out is not.
    upstream.commit({"env/blob.bin": "x" * (3 * MIB), "env/b.bin": "y" * MIB}, push=False)
    head = push_branch(upstream, "big")
    config = RepoSource(upstream.bare.as_uri(), "main", tmp_path / "cache", max_tree_bytes=2 * MIB)
    source = GitSource(config)
    assert (source.checkout(tip) / "env" / "a.yaml").read_text() == "a: 1\n"  # small: written
    with pytest.raises(TreeTooLarge) as refused:
        source.checkout_ref("refs/heads/big", head)
    text = str(refused.value)
    assert f"the tree of {head[:12]} holds 4.0 MiB of files" in text
    assert "more than the 2.0 MiB" in text
    assert "repository.maxTreeSize" in text
    assert "largest: env/blob.bin (3.0 MiB), env/b.bin (1.0 MiB)" in text
    # Nothing of it was written, not even a staging directory.
    assert sorted(p.name for p in source.trees_dir.iterdir()) == [tip]
    # Under a higher limit the same head is written.
    roomy = GitSource(RepoSource(config.url, "main", config.cache_dir, max_tree_bytes=5 * MIB))
    assert (roomy.checkout_ref("refs/heads/big", head) / "env" / "blob.bin").stat().st_size == (
        3 * MIB
    )


def test_a_fetch_over_max_fetch_size_is_stopped_before_it_fills_the_disk(
    upstream: Upstream, url_for: Callable[[Upstream], str], tmp_path: Path
) -> None:
    """What one fetch downloads is bounded too (repository.maxFetchSize): a pull request
    pushing data that does not compress is cut off while it downloads, over every transport,
    and leaves no partial pack behind; under a higher limit the same head is fetched."""
    tip = upstream.commit({"gitsync.yaml": "environments: {}\n", "env/a.yaml": "a: 1\n"})
    git("checkout", "--quiet", "-b", "huge", cwd=upstream.work)
    noise = base64.b64encode(os.urandom(3 * MIB)).decode()  # 4 MiB; about 3 MiB packed
    upstream.commit({"env/noise.txt": noise}, push=False)
    head = push_branch(upstream, "huge")
    url = url_for(upstream)
    config = RepoSource(url, "main", tmp_path / "cache", max_fetch_bytes=MIB)
    source = GitSource(config, GitRunner(timeout=60))
    assert (source.checkout(tip) / "env" / "a.yaml").read_text() == "a: 1\n"  # small: fetched
    with pytest.raises(TreeTooLarge) as refused:
        source.checkout_ref("refs/heads/huge", head)
    text = str(refused.value)
    assert "not fetched: +refs/heads/huge:refs/gitsync/heads/huge of" in text
    assert "more than the 1.0 MiB one fetch may download (repository.maxFetchSize)" in text
    objects = source.git_dir / "objects"
    written = sum(p.stat().st_size for p in objects.rglob("*") if p.is_file())
    assert written < 2 * MIB, f"{written} bytes of objects after the refused fetch"
    assert not list((objects / "pack").glob("tmp_pack_*"))
    roomy = GitSource(RepoSource(url, "main", config.cache_dir, max_fetch_bytes=16 * MIB))
    assert (roomy.checkout_ref("refs/heads/huge", head) / "env" / "noise.txt").read_text() == noise


def test_ls_tree_listing_counts_blobs_only() -> None:
    listing = (
        "100644 blob 1111111111111111111111111111111111111111      12\tgitsync.yaml\0"
        "100644 blob 2222222222222222222222222222222222222222 1048576\tdir/with\ttab.bin\0"
        "160000 commit 3333333333333333333333333333333333333333       -\tvendored\0"
        "120000 blob 4444444444444444444444444444444444444444       9\tlink\0"
    )
    assert tree_sizes(listing) == {"gitsync.yaml": 12, "dir/with\ttab.bin": 2**20, "link": 9}
