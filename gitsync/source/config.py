"""The Git source's configuration: where the repository is, how to authenticate, what to trust.

Frozen values only. Credentials are never held here, only *where* to read them (a file or an
environment variable), so printing a config can never print a secret. Reading them is
``auth.py``'s job.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gitsync.source.redact import redact_url

DEFAULT_TIMEOUT_SECONDS = 60.0
# What one revision's tree may hold, in file bytes, before gitsync refuses to write it out:
# every open pull request's tree is written, and a PR must not fill the leader's disk.
DEFAULT_MAX_TREE_BYTES = 256 * 2**20
# The most one fetch may download (its pack): a pull request's head pushing a huge history or
# blob is refused before it fills the disk. Bigger than maxTreeSize: a shallow pack of a tree
# under that limit is smaller than the tree, and deepening adds history.
DEFAULT_MAX_FETCH_BYTES = 1024 * 2**20


@dataclass(frozen=True, slots=True)
class TokenAuth:
    """An HTTPS token read from ``token_file`` or the environment variable ``token_env``.

    Sent as ``Authorization: Bearer <token>`` or, with ``scheme="basic"``, as basic auth
    with ``username`` (forges such as GitHub and Gitea accept a token as the password).
    """

    token_file: Path | None = None
    token_env: str | None = None
    scheme: Literal["bearer", "basic"] = "bearer"
    username: str = "git"

    def __post_init__(self) -> None:
        if (self.token_file is None) == (self.token_env is None):
            raise ValueError("TokenAuth needs exactly one of token_file or token_env")

    @property
    def origin(self) -> str:
        """Where the token comes from, for messages: never the token itself."""
        return f"file {self.token_file}" if self.token_file else f"env ${self.token_env}"


@dataclass(frozen=True, slots=True)
class SshAuth:
    """An SSH private key and the known_hosts file the server's host key must be in."""

    key_file: Path
    known_hosts_file: Path


GitAuth = TokenAuth | SshAuth


@dataclass(frozen=True, slots=True)
class VerifyConfig:
    """Commit signature verification.

    ``method="gpg"``: ``keys_file`` is an armored public-key file; only those keys are trusted.
    ``method="ssh"``: ``keys_file`` is an ``allowed_signers`` file (see ssh-keygen(1)).
    """

    method: Literal["gpg", "ssh"]
    keys_file: Path
    # Pull requests' heads too (previews and plan comments): an unsigned head is not read.
    # Off by default: a PR head is preview-only (the pod-spec policy, the preview namespace).
    pull_requests: bool = False


@dataclass(frozen=True, slots=True)
class RepoSource:
    """One branch of one repository, cached under ``cache_dir``."""

    url: str
    branch: str
    cache_dir: Path
    depth: int = 1
    auth: GitAuth | None = None
    verify: VerifyConfig | None = None
    timeout: float = DEFAULT_TIMEOUT_SECONDS
    max_tree_bytes: int = DEFAULT_MAX_TREE_BYTES
    max_fetch_bytes: int = DEFAULT_MAX_FETCH_BYTES

    def __post_init__(self) -> None:
        if self.max_tree_bytes < 1:
            raise ValueError(f"max_tree_bytes must be >= 1, got {self.max_tree_bytes}")
        if self.max_fetch_bytes < 1:
            raise ValueError(f"max_fetch_bytes must be >= 1, got {self.max_fetch_bytes}")
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth}")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {self.timeout}")
        if not self.branch or self.branch.startswith(("-", "refs/")) or ".." in self.branch:
            raise ValueError(f"branch must be a plain branch name, got {self.branch!r}")
        if not self.url or self.url.startswith("-"):
            raise ValueError(f"not a Git URL: {redact_url(self.url)!r}")

    def __repr__(self) -> str:
        # The URL may carry userinfo (https://user:token@host/...): print it redacted.
        return (
            f"RepoSource(url={redact_url(self.url)!r}, branch={self.branch!r}, "
            f"cache_dir={self.cache_dir!r}, depth={self.depth}, auth={self.auth!r}, "
            f"verify={self.verify!r}, timeout={self.timeout}, "
            f"max_tree_bytes={self.max_tree_bytes}, max_fetch_bytes={self.max_fetch_bytes})"
        )

    @property
    def display_url(self) -> str:
        return redact_url(self.url)
