"""Commit signature verification with real gpg and ssh-keygen keys: a commit signed by an
allowed key is checked out; unsigned, foreign-signed and wrong-method commits are refused
and never materialised."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gitsync.errors import VerificationError
from gitsync.source import GitSource, RepoSource, VerifyConfig

from .repos import Upstream, git


@dataclass(frozen=True)
class GpgKey:
    home: Path
    fingerprint: str

    @property
    def sign(self) -> tuple[str, ...]:
        return ("gpg.format=openpgp", "gpg.program=gpg", f"user.signingkey={self.fingerprint}")

    @property
    def env(self) -> dict[str, str]:
        return {"GNUPGHOME": str(self.home)}

    def export(self, path: Path) -> Path:
        path.write_bytes(self._gpg("--armor", "--export", self.fingerprint))
        return path

    def _gpg(self, *args: str) -> bytes:
        return subprocess.run(
            ["gpg", "--batch", "--homedir", str(self.home), *args],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout


@pytest.fixture
def gpg_keys() -> Iterator[tuple[GpgKey, GpgKey]]:
    """Two throwaway keys (allowed, foreign), each in its own short-pathed GNUPGHOME (the
    agent's socket path must fit in sun_path); their agents are stopped afterwards."""
    homes = [Path(tempfile.mkdtemp(prefix="gs-gpg-", dir="/tmp")) for _ in range(2)]
    keys = []
    try:
        for home, who in zip(homes, ("Allowed", "Foreign"), strict=True):
            home.chmod(0o700)
            subprocess.run(
                ["gpg", "--batch", "--homedir", str(home), "--passphrase", "",
                 "--quick-gen-key", f"{who} <{who.lower()}@example.com>", "ed25519", "sign", "never"],
                capture_output=True, check=True, timeout=120,
            )  # fmt: skip
            listing = subprocess.run(
                ["gpg", "--batch", "--homedir", str(home), "--with-colons", "--list-secret-keys"],
                capture_output=True, check=True, text=True, timeout=60,
            ).stdout  # fmt: skip
            fpr = next(
                line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr")
            )
            keys.append(GpgKey(home, fpr))
        yield keys[0], keys[1]
    finally:
        for home in homes:
            subprocess.run(
                ["gpgconf", "--homedir", str(home), "--kill", "all"], check=False, timeout=30
            )
            shutil.rmtree(home, ignore_errors=True)


@dataclass(frozen=True)
class SshKey:
    path: Path

    @property
    def sign(self) -> tuple[str, ...]:
        return ("gpg.format=ssh", f"user.signingkey={self.path}")

    def allowed_signer(self) -> str:
        return f'tester@example.com namespaces="git" {Path(f"{self.path}.pub").read_text()}'


@pytest.fixture
def ssh_keys(tmp_path: Path) -> tuple[SshKey, SshKey]:
    keys = []
    for name in ("allowed", "foreign"):
        path = tmp_path / "ssh" / name
        path.parent.mkdir(exist_ok=True)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        keys.append(SshKey(path))
    return keys[0], keys[1]


def source_for(upstream: Upstream, tmp_path: Path, verify: VerifyConfig) -> GitSource:
    return GitSource(RepoSource(upstream.bare.as_uri(), "main", tmp_path / "cache", verify=verify))


def refused(source: GitSource, sha: str, reason: str) -> None:
    with pytest.raises(VerificationError, match=reason) as exc:
        source.checkout(sha)
    assert f"commit {sha} is not trusted" in str(exc.value)
    assert not (source.trees_dir / sha).exists()


def test_gpg_accepts_allowed_key_and_refuses_unsigned_and_foreign(
    upstream: Upstream, tmp_path: Path, gpg_keys: tuple[GpgKey, GpgKey]
) -> None:
    allowed, foreign = gpg_keys
    verify = VerifyConfig("gpg", allowed.export(tmp_path / "allowed.asc"))
    source = source_for(upstream, tmp_path, verify)

    good = upstream.commit({"app.yaml": "good\n"}, sign=allowed.sign, env=allowed.env)
    assert (source.checkout(good) / "app.yaml").read_text() == "good\n"

    unsigned = upstream.commit({"app.yaml": "unsigned\n"})
    refused(source, unsigned, "it is not signed")

    alien = upstream.commit({"app.yaml": "alien\n"}, sign=foreign.sign, env=foreign.env)
    refused(source, alien, "signed by a GPG key that is not in the allowed keys")


def test_ssh_accepts_allowed_signer_and_refuses_unsigned_and_foreign(
    upstream: Upstream, tmp_path: Path, ssh_keys: tuple[SshKey, SshKey]
) -> None:
    allowed, foreign = ssh_keys
    signers = tmp_path / "allowed_signers"
    signers.write_text(allowed.allowed_signer())
    source = source_for(upstream, tmp_path, VerifyConfig("ssh", signers))

    good = upstream.commit({"app.yaml": "good\n"}, sign=allowed.sign)
    assert (source.checkout(good) / "app.yaml").read_text() == "good\n"

    unsigned = upstream.commit({"app.yaml": "unsigned\n"})
    refused(source, unsigned, "it is not signed")

    alien = upstream.commit({"app.yaml": "alien\n"}, sign=foreign.sign)
    refused(source, alien, "signed by an SSH key that is not in the allowed signers")


def test_a_signature_of_the_other_method_is_refused(
    upstream: Upstream,
    tmp_path: Path,
    gpg_keys: tuple[GpgKey, GpgKey],
    ssh_keys: tuple[SshKey, SshKey],
) -> None:
    gpg_allowed, ssh_allowed = gpg_keys[0], ssh_keys[0]
    signers = tmp_path / "allowed_signers"
    signers.write_text(ssh_allowed.allowed_signer())
    ssh_signed = upstream.commit({"app.yaml": "ssh\n"}, sign=ssh_allowed.sign)
    gpg_signed = upstream.commit({"app.yaml": "gpg\n"}, sign=gpg_allowed.sign, env=gpg_allowed.env)

    gpg_source = source_for(
        upstream, tmp_path / "g", VerifyConfig("gpg", gpg_allowed.export(tmp_path / "k.asc"))
    )
    refused(gpg_source, ssh_signed, "SSH key that is not in the allowed signers")
    ssh_source = source_for(upstream, tmp_path / "s", VerifyConfig("ssh", signers))
    refused(ssh_source, gpg_signed, "GPG key that is not in the allowed keys")


def test_verification_also_guards_a_tree_cached_before_verification_was_on(
    upstream: Upstream, tmp_path: Path, ssh_keys: tuple[SshKey, SshKey]
) -> None:
    unsigned = upstream.commit({"app.yaml": "unsigned\n"})
    GitSource(RepoSource(upstream.bare.as_uri(), "main", tmp_path / "cache")).checkout(unsigned)
    signers = tmp_path / "allowed_signers"
    signers.write_text(ssh_keys[0].allowed_signer())
    source = source_for(upstream, tmp_path, VerifyConfig("ssh", signers))
    with pytest.raises(VerificationError, match="it is not signed"):
        source.checkout(unsigned)


def test_an_unusable_keys_file_is_a_verification_error(upstream: Upstream, tmp_path: Path) -> None:
    sha = upstream.commit({"app.yaml": "v1\n"})
    (tmp_path / "junk.asc").write_text("not a key\n")
    source = source_for(upstream, tmp_path, VerifyConfig("gpg", tmp_path / "junk.asc"))
    with pytest.raises(VerificationError, match=r"no usable public key in .*junk.asc"):
        source.checkout(sha)
    missing = source_for(upstream, tmp_path / "m", VerifyConfig("ssh", tmp_path / "nope"))
    with pytest.raises(VerificationError, match=r"cannot read the allowed keys .*nope"):
        missing.checkout(sha)


def test_without_gpg_installed_the_error_says_what_to_install(
    upstream: Upstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An image without gpg refuses every commit under verify.method: gpg: the error says
    why and what to do, not a bare 'No such file'."""
    sha = upstream.commit({"app.yaml": "v1\n"})
    (tmp_path / "keys.asc").write_text("any\n")
    source = source_for(upstream, tmp_path, VerifyConfig("gpg", tmp_path / "keys.asc"))
    only_git = tmp_path / "bin"
    only_git.mkdir()
    git = shutil.which("git")
    assert git is not None
    (only_git / "git").symlink_to(git)
    monkeypatch.setenv("PATH", str(only_git))
    with pytest.raises(VerificationError, match=r"needs the gpg program.*install gpg.*ssh"):
        source.checkout(sha)


def test_the_image_ships_the_programs_verification_runs() -> None:
    """verify.method gpg runs gpg and ssh runs ssh-keygen (openssh-client): both are in the
    image the deploy/ Deployment runs."""
    dockerfile = (Path(__file__).resolve().parents[2] / "Dockerfile").read_text()
    installed = re.search(r"apt-get install -y --no-install-recommends ([^\\&]+)", dockerfile)
    assert installed is not None
    assert {"git", "openssh-client", "gpg"} <= set(installed.group(1).split())


def push_branch(upstream: Upstream, name: str) -> None:
    git("push", "--quiet", "--force", str(upstream.bare), f"HEAD:refs/heads/{name}",
        cwd=upstream.work)  # fmt: skip


def test_a_pull_request_head_read_unchecked_is_verified_once_it_is_the_branch_head(
    upstream: Upstream, tmp_path: Path, ssh_keys: tuple[SshKey, SshKey]
) -> None:
    allowed = ssh_keys[0]
    signers = tmp_path / "allowed_signers"
    signers.write_text(allowed.allowed_signer())
    base = upstream.commit({"app.yaml": "base\n"}, sign=allowed.sign)
    head = upstream.commit({"app.yaml": "from a pull request\n"}, push=False)
    push_branch(upstream, "feature")
    source = source_for(upstream, tmp_path, VerifyConfig("ssh", signers))
    assert source.checkout(base).is_dir()
    # By default a pull request's head is read unchecked (for its preview and plan comment)…
    assert (source.checkout_ref("refs/heads/feature", head) / "app.yaml").exists()
    # … and once the branch is fast-forwarded to it, it is never served as a verified head.
    upstream.push()
    assert source.head() == head
    with pytest.raises(VerificationError, match="it is not signed"):
        source.checkout(head)
    assert source.checkout_ref("refs/heads/feature", head).is_dir()  # still a preview's tree


def test_verify_pull_requests_refuses_an_unsigned_head_before_it_is_written(
    upstream: Upstream, tmp_path: Path, ssh_keys: tuple[SshKey, SshKey]
) -> None:
    allowed = ssh_keys[0]
    signers = tmp_path / "allowed_signers"
    signers.write_text(allowed.allowed_signer())
    upstream.commit({"app.yaml": "base\n"}, sign=allowed.sign)
    unsigned = upstream.commit({"app.yaml": "unsigned\n"}, push=False)
    push_branch(upstream, "unsigned")
    signed = upstream.commit({"app.yaml": "signed\n"}, sign=allowed.sign, push=False)
    push_branch(upstream, "signed")
    source = source_for(upstream, tmp_path, VerifyConfig("ssh", signers, pull_requests=True))
    with pytest.raises(VerificationError, match=f"commit {unsigned} is not trusted"):
        source.checkout_ref("refs/heads/unsigned", unsigned)
    assert not (source.trees_dir / unsigned).exists()
    with pytest.raises(VerificationError):  # and again: a refusal is not cached as a tree
        source.checkout_ref("refs/heads/unsigned", unsigned)
    assert (source.checkout_ref("refs/heads/signed", signed) / "app.yaml").read_text() == (
        "signed\n"
    )
    before = len(source.runner.calls)
    assert source.checkout(signed).is_dir()  # verified already: served as it is
    assert source.runner.calls[before:] == []
