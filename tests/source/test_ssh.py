"""The SSH transport against a real sshd: key login, host-key checking, refusals.

Debian's sshd is unpacked by testbed/build.sh and run on a loopback port with a throwaway
host key; it fails these tests (never skips them) when it cannot be built or started.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gitsync.errors import AuthError
from gitsync.source import GitSource, RepoSource, SshAuth
from testbed.binaries import Binaries
from testbed.gitserver import SshServer

from .repos import Upstream


def keypair(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ssh-keys")
    return {"allowed": keypair(folder / "allowed"), "stranger": keypair(folder / "stranger")}


@pytest.fixture(scope="session")
def sshd(
    served: Path,
    binaries: Binaries,
    keys: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[SshServer]:
    logdir = tmp_path_factory.mktemp("sshd")
    authorized = logdir / "authorized_keys"
    authorized.write_text(Path(f"{keys['allowed']}.pub").read_text())
    server = SshServer(
        served,
        logdir,
        sshd=binaries.sshd,
        library_path=binaries.sshd_library_path,
        authorized_keys=authorized,
    )
    with server:
        yield server


def known_hosts(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "known_hosts"
    path.write_text(text)
    return path


def test_key_login_polls_and_checks_out(
    sshd: SshServer, keys: dict[str, Path], upstream: Upstream, tmp_path: Path
) -> None:
    sha = upstream.commit({"gitsync.yaml": "environments: []\n"}, "first")
    auth = SshAuth(keys["allowed"], known_hosts(tmp_path, sshd.known_hosts_line()))
    source = GitSource(RepoSource(sshd.url(upstream.name), "main", tmp_path / "cache", auth=auth))
    assert source.head() == sha
    tree = source.checkout(sha)
    assert (tree / "gitsync.yaml").read_text() == "environments: []\n"
    assert [
        c.subcommand for c in source.runner.calls if c.subcommand in ("ls-remote", "fetch")
    ] == ["ls-remote", "fetch"]


def test_key_not_authorized_is_an_auth_error(
    sshd: SshServer, keys: dict[str, Path], upstream: Upstream, tmp_path: Path
) -> None:
    upstream.commit({"a": "1"})
    auth = SshAuth(keys["stranger"], known_hosts(tmp_path, sshd.known_hosts_line()))
    source = GitSource(RepoSource(sshd.url(upstream.name), "main", tmp_path / "cache", auth=auth))
    with pytest.raises(
        AuthError, match=r"refused access .*check the configured token or SSH key"
    ) as caught:
        source.head()
    private = keys["stranger"].read_text()
    assert private.splitlines()[1] not in str(caught.value)


@pytest.mark.parametrize("trust", ["empty", "other-key"])
def test_unknown_host_key_is_refused(
    sshd: SshServer, keys: dict[str, Path], upstream: Upstream, tmp_path: Path, trust: str
) -> None:
    upstream.commit({"a": "1"})
    text = ""
    if trust == "other-key":
        other = Path(f"{keypair(tmp_path / 'impostor')}.pub").read_text().split()
        text = f"[127.0.0.1]:{sshd.port} {other[0]} {other[1]}\n"
    auth = SshAuth(keys["allowed"], known_hosts(tmp_path, text))
    source = GitSource(RepoSource(sshd.url(upstream.name), "main", tmp_path / "cache", auth=auth))
    with pytest.raises(AuthError, match=r"SSH host key .* is not trusted"):
        source.head()
    assert not (tmp_path / "cache" / "trees").exists() or not any(
        (tmp_path / "cache" / "trees").iterdir()
    )
