"""Commit signature verification with ``git verify-commit``, against allowed keys only.

Owns the private trust stores under the cache directory: a GNUPGHOME holding exactly the
armored public keys from the config (``trust-model always``: the file *is* the trust
decision), or an ``allowed_signers`` file for SSH signatures. The other method's store is
kept empty, so a commit signed with a key the user's own keyring trusts is still refused.
Must not fetch or check out anything.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
from pathlib import Path

from gitsync.errors import VerificationError
from gitsync.source.config import VerifyConfig
from gitsync.source.runner import GitRunner

log = logging.getLogger(__name__)


class Verifier:
    """Verifies commits in one bare repository against one :class:`VerifyConfig`."""

    def __init__(self, config: VerifyConfig, state_dir: Path, runner: GitRunner) -> None:
        self.config = config
        self.state_dir = state_dir
        self.runner = runner
        self._prepared: tuple[Path, Path] | None = None

    def verify(self, git_dir: Path, sha: str) -> None:
        gnupghome, allowed_signers = self._prepare()
        result = self.runner.run(
            ["verify-commit", "--raw", sha],
            git_dir=git_dir,
            config=(
                ("gpg.program", "gpg"),
                ("gpg.ssh.program", "ssh-keygen"),
                ("gpg.ssh.allowedSignersFile", str(allowed_signers)),
                ("gpg.minTrustLevel", "undefined"),
            ),
            env=(("GNUPGHOME", str(gnupghome)),),
        )
        if result.returncode == 0:
            log.debug("verified commit=%s method=%s", sha, self.config.method)
            return
        raise VerificationError(
            f"commit {sha} is not trusted: {_reason(result.stderr)}; it was not deployed. "
            f"Sign it with a key listed in {self.config.keys_file} ({self.config.method}), "
            "or add the signer's key there"
        )

    def _prepare(self) -> tuple[Path, Path]:
        """Builds the trust stores once per keys file content (re-imported when it changes)."""
        if self._prepared is not None:
            return self._prepared
        try:
            keys = self.config.keys_file.read_bytes()
        except OSError as exc:
            raise VerificationError(
                f"cannot read the allowed keys {self.config.keys_file}: {exc.strerror}; "
                "mount the file or fix verify.keys_file"
            ) from None
        digest = hashlib.sha256(keys).hexdigest()[:16]
        # gpg-agent sockets live under GNUPGHOME unless it is too long; keep the path short.
        root = self.state_dir / f"{self.config.method}-{digest}"
        gnupghome, allowed_signers = root / "gnupg", root / "allowed_signers"
        if not root.exists():
            staging = root.with_name(root.name + f".tmp{os.getpid()}")
            (staging / "gnupg").mkdir(parents=True, mode=0o700)
            (staging / "gnupg" / "gpg.conf").write_text("trust-model always\nno-autostart\n")
            if self.config.method == "ssh":
                (staging / "allowed_signers").write_bytes(keys)
            else:
                (staging / "allowed_signers").write_bytes(b"")
                _gpg_import(staging / "gnupg", keys, self.config.keys_file, self.runner.timeout)
            staging.rename(root)
        self._prepared = (gnupghome, allowed_signers)
        return self._prepared


def _gpg_import(gnupghome: Path, keys: bytes, source: Path, timeout: float) -> None:
    try:
        done = subprocess.run(
            ["gpg", "--batch", "--no-tty", "--status-fd=1", f"--homedir={gnupghome}", "--import"],
            input=keys,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        raise VerificationError(
            f"verify.method: gpg needs the gpg program, which is not installed here (PATH), so "
            f"no commit can be verified with {source}; install gpg (the image the repository's "
            "Dockerfile builds has it) or sign with SSH keys (verify.method: ssh, ssh-keygen)"
        ) from None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise VerificationError(f"cannot run gpg to import {source}: {exc}") from None
    # Judged by the status lines, not the exit code: with a GNUPGHOME path too long for the
    # agent's socket, gpg exits 2 after importing public keys (which need no agent).
    if b"[GNUPG:] IMPORT_OK" not in done.stdout:
        detail = done.stderr.decode(errors="replace").strip().splitlines()[-1:]
        raise VerificationError(
            f"no usable public key in {source} ({' '.join(detail)}); "
            "export it with `gpg --armor --export <key id>`"
        )


# git verify-commit --raw output markers → why the commit was refused, first match wins.
_REASONS = (
    (("NO_PUBKEY", "ERRSIG"), "it is signed by a GPG key that is not in the allowed keys"),
    (("BADSIG",), "its GPG signature does not match its content (tampered or corrupt)"),
    (("EXPKEYSIG", "REVKEYSIG"), "it is signed by an expired or revoked GPG key"),
    (
        ("No principal matched", "allowedSignersFile"),
        "it is signed by an SSH key that is not in the allowed signers",
    ),
    (
        ("Could not verify signature", "Signature verification failed"),
        "its SSH signature does not verify",
    ),
)


def _reason(stderr: str) -> str:
    for markers, reason in _REASONS:
        if any(marker in stderr for marker in markers):
            return reason
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if not lines:
        return "it is not signed"
    return f"git verify-commit refused it ({lines[-1]})"
