"""Credentials for git: read a token or SSH key location and turn it into git's environment.

Owns reading the token (at each call, so a rotated Secret is picked up) and building the
``http.<url>.extraHeader`` config entry or ``GIT_SSH_COMMAND``. The token travels only in the
child's environment (``GIT_CONFIG_VALUE_<n>``), never in argv, where ``ps`` would show it,
and never in the URL. Must not log or print a credential.
"""

from __future__ import annotations

import base64
import os
import shlex
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from gitsync.errors import AuthError
from gitsync.source.config import GitAuth, SshAuth, TokenAuth


@dataclass(frozen=True, slots=True)
class Credentials:
    """What one git invocation needs: config entries, env vars, and the values to redact."""

    config: tuple[tuple[str, str], ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    secrets: tuple[str, ...] = field(default=(), repr=False)

    def __repr__(self) -> str:
        return f"Credentials(config_keys={[k for k, _ in self.config]})"


def credentials(auth: GitAuth | None, url: str) -> Credentials:
    if auth is None:
        return Credentials()
    if isinstance(auth, TokenAuth):
        return _token_credentials(auth, url)
    return _ssh_credentials(auth)


def read_token(auth: TokenAuth) -> str:
    if auth.token_file is not None:
        try:
            token = auth.token_file.read_text().strip()
        except OSError as exc:
            raise AuthError(
                f"cannot read the Git token from {auth.origin}: {exc.strerror}; "
                "mount the token file or fix the path in the repo auth config"
            ) from None
    else:
        assert auth.token_env is not None
        token = os.environ.get(auth.token_env, "").strip()
    if not token:
        raise AuthError(f"the Git token from {auth.origin} is empty; set it or remove auth")
    return token


def _token_credentials(auth: TokenAuth, url: str) -> Credentials:
    token = read_token(auth)
    if auth.scheme == "bearer":
        value = f"Bearer {token}"
        secrets: tuple[str, ...] = (token,)
    else:
        encoded = base64.b64encode(f"{auth.username}:{token}".encode()).decode()
        value = f"Basic {encoded}"
        secrets = (token, encoded)
    # Scoped to this server (scheme://host:port/, no userinfo) so the header is never sent
    # to another host, e.g. after a redirect; any path, so a forge's rename redirect works.
    return Credentials(
        config=((f"http.{_server(url)}.extraHeader", f"Authorization: {value}"),),
        secrets=secrets,
    )


def _ssh_credentials(auth: SshAuth) -> Credentials:
    command = shlex.join(
        [
            "ssh",
            "-i",
            str(auth.key_file),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"UserKnownHostsFile={auth.known_hosts_file}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",  # never ask for a passphrase or a host-key confirmation
            "-F",
            "/dev/null",  # ignore ~/.ssh/config: the config decides key and known_hosts
        ]
    )
    return Credentials(env=(("GIT_SSH_COMMAND", command), ("GIT_SSH_VARIANT", "ssh")))


def _server(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], "/", "", ""))
