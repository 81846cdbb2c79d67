"""Failures reach the caller as typed errors that say what to do: auth, network, bad URL,
timeouts. Real servers, real refusals."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from gitsync.errors import (
    AuthError,
    RemoteUnreachable,
    RepositoryNotFound,
    SourceError,
)
from gitsync.source import GitSource, RepoSource, SshAuth, TokenAuth
from testbed.controlplane import free_port
from testbed.gitserver import SmartHttpServer

from .conftest import TOKEN
from .repos import Upstream


def token_file(tmp_path: Path, token: str) -> Path:
    path = tmp_path / "token"
    path.write_text(token + "\n")
    return path


@pytest.mark.parametrize("scheme", ["bearer", "basic"])
def test_token_over_http_is_accepted(
    upstream: Upstream, http_auth: SmartHttpServer, tmp_path: Path, scheme: str
) -> None:
    sha = upstream.commit({"app.yaml": "v1\n"})
    auth = TokenAuth(token_file=token_file(tmp_path, TOKEN), scheme=scheme)  # type: ignore[arg-type]
    source = GitSource(RepoSource(http_auth.url(upstream.name), "main", tmp_path / "c", auth=auth))
    assert source.head() == sha
    assert (source.checkout(sha) / "app.yaml").read_text() == "v1\n"


def test_wrong_token_is_an_auth_error_without_the_token(
    upstream: Upstream, http_auth: SmartHttpServer, tmp_path: Path
) -> None:
    upstream.commit({"app.yaml": "v1\n"})
    wrong = "wrong-token-5e8d1c0b9a7f"
    auth = TokenAuth(token_file=token_file(tmp_path, wrong))
    url = http_auth.url(upstream.name)
    source = GitSource(RepoSource(url, "main", tmp_path / "c", auth=auth))
    with pytest.raises(AuthError) as exc:
        source.head()
    message = str(exc.value)
    assert f"refused access to {url}" in message
    assert "check the configured token" in message
    assert wrong not in message


def test_missing_token_is_an_auth_error_and_git_does_not_prompt(
    upstream: Upstream, http_auth: SmartHttpServer, tmp_path: Path
) -> None:
    upstream.commit({"app.yaml": "v1\n"})
    source = GitSource(RepoSource(http_auth.url(upstream.name), "main", tmp_path / "c"))
    with pytest.raises(AuthError, match="terminal prompts disabled"):
        source.head()


def test_unreadable_or_empty_token_is_an_auth_error(
    upstream: Upstream, http_auth: SmartHttpServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = http_auth.url(upstream.name)
    missing = GitSource(
        RepoSource(url, "main", tmp_path / "c", auth=TokenAuth(token_file=tmp_path / "nope"))
    )
    with pytest.raises(AuthError, match=r"cannot read the Git token from file .*nope"):
        missing.head()
    monkeypatch.setenv("GITSYNC_TOKEN", "  ")
    empty = GitSource(
        RepoSource(url, "main", tmp_path / "c", auth=TokenAuth(token_env="GITSYNC_TOKEN"))
    )
    with pytest.raises(AuthError, match=r"from env \$GITSYNC_TOKEN is empty"):
        empty.head()


@pytest.mark.parametrize("scheme", ["git", "http", "ssh"])
def test_server_down_is_remote_unreachable(tmp_path: Path, scheme: str) -> None:
    port = free_port()  # nothing listens there
    url = {
        "git": f"git://127.0.0.1:{port}/repo.git",
        "http": f"http://127.0.0.1:{port}/repo.git",
        "ssh": f"ssh://git@127.0.0.1:{port}/repo.git",
    }[scheme]
    auth = None
    if scheme == "ssh":
        (tmp_path / "known_hosts").write_text("")
        auth = SshAuth(key_file=tmp_path / "id", known_hosts_file=tmp_path / "known_hosts")
    source = GitSource(RepoSource(url, "main", tmp_path / "c", auth=auth))
    with pytest.raises(RemoteUnreachable, match=r"cannot reach the Git server .*is the server up"):
        source.head()
    assert [call.subcommand for call in source.runner.calls][-1] == "ls-remote"


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


@pytest.mark.parametrize("scheme", ["git", "http"])
def test_a_hung_server_times_out_as_remote_unreachable(
    tmp_path: Path, silent_port: int, scheme: str
) -> None:
    url = f"{scheme}://127.0.0.1:{silent_port}/repo.git"
    source = GitSource(RepoSource(url, "main", tmp_path / "c", timeout=1.5))
    with pytest.raises(RemoteUnreachable, match=r"did not finish within 1.5 s"):
        source.head()
    assert source.runner.calls[-1].seconds < 10


@pytest.mark.parametrize("transport", ["file", "git", "http"])
def test_missing_repository_is_repository_not_found(
    request: pytest.FixtureRequest, tmp_path: Path, transport: str
) -> None:
    if transport == "file":
        url = (tmp_path / "nowhere.git").as_uri()
    else:
        server = request.getfixturevalue("daemon" if transport == "git" else "http")
        url = server.url("nowhere.git")
    source = GitSource(RepoSource(url, "main", tmp_path / "c"))
    with pytest.raises(RepositoryNotFound, match="check the repository URL"):
        source.head()


def test_unknown_url_scheme_is_a_source_error(tmp_path: Path) -> None:
    source = GitSource(RepoSource("gopher://127.0.0.1/repo.git", "main", tmp_path / "c"))
    with pytest.raises(RepositoryNotFound, match="not a usable Git URL"):
        source.head()


@pytest.mark.parametrize(
    ("url", "branch"),
    [
        ("", "main"),
        ("--upload-pack=touch /tmp/x", "main"),
        ("file:///r", "-x"),
        ("file:///r", "refs/heads/main"),
        ("file:///r", "a..b"),
    ],
)
def test_config_rejects_urls_and_branches_git_would_read_as_options(
    url: str, branch: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message is asserted by type only
        RepoSource(url, branch, tmp_path)


def test_source_error_is_the_common_base() -> None:
    for error in (AuthError, RemoteUnreachable, RepositoryNotFound):
        assert issubclass(error, SourceError)
