"""The one retry rule (gitsync/errors.py): which errors say Temporary, which Permanent, and
which leave it to the caller."""

from __future__ import annotations

import pytest

from gitsync.errors import (
    AccessRefused,
    ClusterUnreachable,
    ConfigError,
    Forbidden,
    ForgeError,
    GitsyncError,
    InvalidRevision,
    NotesConflict,
    Permanent,
    RemoteUnreachable,
    Temporary,
)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422])
def test_a_forge_refusal_that_asking_again_will_not_change_is_permanent(status: int) -> None:
    assert ForgeError("refused", status=status).retry == Permanent(f"HTTP {status}")


@pytest.mark.parametrize("status", [None, 409, 429, 500, 503])
def test_a_forge_failure_after_retries_or_another_status_is_temporary(status: int | None) -> None:
    assert ForgeError("failed", status=status).retry == Temporary()


def test_the_api_server_unreachable_is_temporary_and_access_refused_permanent() -> None:
    assert ClusterUnreachable("down").retry == Temporary()
    assert isinstance(AccessRefused("no").retry, Permanent)
    assert isinstance(Forbidden("rbac").retry, Permanent)


@pytest.mark.parametrize(
    "error",
    [
        GitsyncError("x"),
        ConfigError("x"),
        InvalidRevision("x", ()),
        RemoteUnreachable("x"),
        NotesConflict("x"),
    ],
)
def test_other_errors_leave_the_retry_to_their_caller(error: GitsyncError) -> None:
    # The agent waits for the next poll after these; the reporter delivers a status again.
    assert error.retry is None
