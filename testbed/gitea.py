"""A real Gitea for the test bed: headless, SQLite, loopback only, stopped by pid.

Started from the binary testbed/build.sh built from ``code.gitea.io/gitea`` (tags ``sqlite
sqlite_unlock_notify``, no bindata: ``STATIC_ROOT_PATH`` points at the module copy the build
used, for templates and options). Setup runs Gitea's own CLI: ``migrate`` creates the schema,
``admin user create`` the admin, ``admin user generate-access-token`` a scoped token. Then
``gitea web`` serves on a free loopback port; repositories are created through the API and
pushed over HTTP. Webhooks may target loopback (``ALLOWED_HOST_LIST = loopback``).
"""

from __future__ import annotations

import base64
import getpass
import json
import os
import re
import secrets
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from testbed.binaries import Binaries
from testbed.controlplane import _Process, _tail, free_port, spawn

ADMIN = "gitsync-admin"
SCOPES = "write:repository,write:user,write:issue,write:organization,write:admin"


class GiteaError(RuntimeError):
    """Gitea could not be set up or started; tests that need it must fail."""


def _ini(work: Path, port: int, static_root: Path) -> str:
    return f"""\
APP_NAME = gitsync test bed
RUN_USER = {getpass.getuser()}
RUN_MODE = prod
WORK_PATH = {work}
I_AM_BEING_UNSAFE_RUNNING_AS_ROOT = true

[server]
PROTOCOL = http
HTTP_ADDR = 127.0.0.1
HTTP_PORT = {port}
DOMAIN = 127.0.0.1
ROOT_URL = http://127.0.0.1:{port}/
DISABLE_SSH = true
START_SSH_SERVER = false
OFFLINE_MODE = true
LFS_START_SERVER = false
STATIC_ROOT_PATH = {static_root}
APP_DATA_PATH = {work}/data

[database]
DB_TYPE = sqlite3
PATH = {work}/data/gitea.db
SQLITE_JOURNAL_MODE = WAL

[repository]
ROOT = {work}/repositories
DEFAULT_BRANCH = main

[security]
INSTALL_LOCK = true
SECRET_KEY = {secrets.token_hex(16)}
INTERNAL_TOKEN = {secrets.token_hex(32)}
PASSWORD_HASH_ALGO = pbkdf2_hi

[oauth2]
ENABLED = false

[service]
DISABLE_REGISTRATION = true
DEFAULT_KEEP_EMAIL_PRIVATE = true

[webhook]
ALLOWED_HOST_LIST = loopback
DELIVER_TIMEOUT = 5
SKIP_TLS_VERIFY = true

[mailer]
ENABLED = false

[session]
PROVIDER = memory

[cache]
ADAPTER = memory

[indexer]
ISSUE_INDEXER_TYPE = db
REPO_INDEXER_ENABLED = false

[actions]
ENABLED = false

[cron.update_checker]
ENABLED = false

[log]
MODE = console
LEVEL = Warn
ROOT_PATH = {work}/log

[log.console]
; Warnings (a "Slow SQL Query" on a loaded machine) go to stderr: the CLI's stdout carries
; only what a command prints, such as the token of generate-access-token --raw.
STDERR = true
"""


class Gitea:
    """One Gitea with an admin user and a token; use as a context manager."""

    def __init__(self, binaries: Binaries, workdir: Path | None = None) -> None:
        self.binary = binaries.gitea
        self.static_root = binaries.gitea_root
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="gitsync-gitea-")
            workdir = Path(self._tmp.name)
        self.work = workdir
        self.port = free_port()
        self.config = self.work / "app.ini"
        self.token = ""
        self.admin = ADMIN
        self.password = secrets.token_hex(12)
        self.process: _Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def clone_url(self, repo: str) -> str:
        return f"{self.url}/{self.admin}/{repo}.git"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> Gitea:
        (self.work / "data").mkdir(parents=True, exist_ok=True)
        self.config.write_text(_ini(self.work, self.port, self.static_root))
        self._cli("migrate")
        self._cli(
            "admin", "user", "create", "--admin", "--username", self.admin,
            "--password", self.password, "--email", f"{self.admin}@example.com",
            "--must-change-password=false",
        )  # fmt: skip
        self.token = _token(self._cli(
            "admin", "user", "generate-access-token", "--username", self.admin,
            "--token-name", "gitsync-tests", "--scopes", SCOPES, "--raw",
        ))  # fmt: skip
        self.process = spawn(
            "gitea",
            [str(self.binary), "web", "--config", str(self.config), "--work-path", str(self.work)],
            self.work / "gitea.log",
            env=self._env(),
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.popen.poll() is not None:
                raise GiteaError(f"gitea exited at start:\n{_tail(self.process.log)}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/healthz", timeout=2) as response:  # noqa: S310 - our loopback http URL
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        self.stop()
        raise GiteaError(f"gitea did not answer /api/healthz in {timeout:.0f}s")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Gitea:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return self.process.popen.pid if self.process else None

    # -- API ---------------------------------------------------------------------------------

    def api(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        ok: tuple[int, ...] = (200, 201, 202, 204),
        sudo: str | None = None,
    ) -> Any:
        """The API as the admin (``sudo``: as that user, Gitea's ``Sudo`` header)."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(  # noqa: S310 - our loopback http URL
            f"{self.url}/api/v1{path}",
            data=data,
            method=method,
            headers={
                "Authorization": f"token {self.token}",
                "Content-Type": "application/json",
                **({"Sudo": sudo} if sudo else {}),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                payload = response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            payload, status = exc.read(), exc.code
        if status not in ok:
            raise GiteaError(f"{method} {path}: HTTP {status}: {payload[:500]!r}")
        return json.loads(payload) if payload else None

    def create_repo(self, name: str) -> str:
        """An empty repository owned by the admin; returns its clone URL."""
        self.api("POST", "/user/repos", {"name": name, "default_branch": "main", "private": False})
        return self.clone_url(name)

    def add_webhook(
        self,
        owner_repo: str,
        url: str,
        secret: str,
        events: tuple[str, ...] = ("push",),
        branch: str | None = "main",
    ) -> None:
        """A Gitea-type webhook on ``owner_repo`` posting JSON, signed with ``secret``, to
        ``url`` for ``events`` (pushes to ``branch`` only, unless None)."""
        hook: dict[str, Any] = {
            "type": "gitea",
            "active": True,
            "events": list(events),
            "config": {"url": url, "content_type": "json", "secret": secret},
        }
        if branch is not None:
            hook["branch_filter"] = branch
        self.api("POST", f"/repos/{owner_repo}/hooks", hook)

    def create_user(self, name: str) -> None:
        self.api(
            "POST",
            "/admin/users",
            {
                "username": name,
                "email": f"{name}@example.com",
                "password": secrets.token_hex(12),
                "must_change_password": False,
            },
        )

    def create_token(self, name: str, scopes: str) -> str:
        """A new token of the admin with exactly ``scopes`` (comma-separated, as Gitea names
        them). Gitea creates tokens only for a password login (basic auth), not for a token."""
        request = urllib.request.Request(  # noqa: S310 - our loopback http URL
            f"{self.url}/api/v1/users/{self.admin}/tokens",
            data=json.dumps({"name": name, "scopes": scopes.split(",")}).encode(),
            method="POST",
            headers={
                "Authorization": "Basic "
                + base64.b64encode(f"{self.admin}:{self.password}".encode()).decode(),
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                return str(json.loads(response.read())["sha1"])
        except urllib.error.HTTPError as exc:
            raise GiteaError(
                f"creating token {name}: HTTP {exc.code}: {exc.read()[:500]!r}"
            ) from exc

    def git_auth_config(self) -> list[str]:
        """``git -c`` arguments that authenticate pushes to this Gitea as the admin."""
        return ["-c", f"http.{self.url}/.extraHeader=Authorization: token {self.token}"]

    def _env(self) -> dict[str, str]:
        return {
            "GITEA_WORK_DIR": str(self.work),
            "HOME": str(self.work),
            "USER": getpass.getuser(),
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        }

    def _cli(self, *args: str) -> str:
        result = subprocess.run(
            [str(self.binary), *args, "--config", str(self.config), "--work-path", str(self.work)],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise GiteaError(
                f"gitea {' '.join(args[:3])} failed ({result.returncode}):\n"
                f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
            )
        return result.stdout


def _token(output: str) -> str:
    """The token ``generate-access-token --raw`` printed: the line of 40 hex digits (a log
    line such as a slow-query warning may come before or after it)."""
    found = [
        line.strip() for line in output.splitlines() if re.fullmatch(r"[0-9a-f]{40}", line.strip())
    ]
    if len(found) != 1:
        raise GiteaError(f"no access token in generate-access-token's output:\n{output[-2000:]}")
    return found[0]
