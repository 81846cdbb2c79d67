"""A fork pull request's label approves the head it was first seen on, and nothing pushed
after it, until a maintainer takes the label off and puts it back."""

from __future__ import annotations

import pytest

from gitsync.report.pulls import PullRequest, approval, needs_label

A, B = "a" * 40, "b" * 40


@pytest.mark.parametrize(
    ("labelled", "head", "approved", "now", "refused"),
    [
        (True, A, "", A, False),  # first seen with the label: this head is approved
        (True, A, A, A, False),  # the same head again
        (True, B, A, A, True),  # pushed after the approval: not deployed, approval kept
        (False, B, A, "", False),  # label off: forgotten (eligible() says why, not this)
        (True, B, "", B, False),  # label on again: the new head is approved
    ],
)
def test_approval(labelled: bool, head: str, approved: str, now: str, refused: bool) -> None:
    kept, why = approval(labelled, head, approved, "preview")
    assert kept == now
    assert (why is not None) is refused
    if why:
        assert why == (
            f"no preview: {B[:12]} was pushed after the label 'preview' approved {A[:12]}; "
            "a maintainer removes the label and adds it again to approve it"
        )


def test_only_forks_by_other_authors_need_the_label() -> None:
    pr = PullRequest(7, A, "refs/pull/7/head", "x", "main", "mallory", True, ("preview",))
    assert needs_label(pr, ())
    assert not needs_label(pr, ("mallory",))
    same_repo = PullRequest(8, A, "refs/pull/8/head", "x", "main", "mallory", False)
    assert not needs_label(same_repo, ())
