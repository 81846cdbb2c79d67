"""Real Git servers on loopback for the source tests: ``git daemon`` and smart HTTP.

Smart HTTP is ``git http-backend`` run as a CGI program behind a small ``http.server``
handler, in its own process (``python -m testbed.gitserver http ...``), optionally requiring
a token (``Authorization: Bearer <token>`` or basic auth with the token as the password).
Both servers serve every repository under ``root``, are started in their own session with
``setpriv --pdeathsig`` and stopped by pid. Nothing here is used by gitsync itself.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hmac
import os
import pwd
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

from testbed import checkout_env
from testbed.controlplane import _Process, _tail, free_port, spawn


class GitServerError(RuntimeError):
    """A Git server did not come up; the message carries the tail of its log."""


@dataclass
class _Server:
    root: Path
    logdir: Path
    port: int = field(init=False, default=0)
    _process: _Process | None = field(init=False, default=None)

    name = "server"

    def argv(self) -> list[str]:
        raise NotImplementedError

    def extra_env(self) -> dict[str, str]:
        return {}

    def start(self) -> _Server:
        self.port = free_port()
        self.logdir.mkdir(parents=True, exist_ok=True)
        log = self.logdir / f"{self.name}-{self.port}.log"
        # The developer's git config must not change what the servers do.
        env = {**checkout_env(), "HOME": str(self.root), "GIT_CONFIG_NOSYSTEM": "1"}
        env.update(self.extra_env())
        self._process = spawn(self.name, self.argv(), log, env)
        popen = self._process.popen
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if popen.poll() is not None:
                self.stop()
                raise GitServerError(f"{self.name} exited with {popen.returncode}:\n{_tail(log)}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1),
            ):
                return self
            time.sleep(0.05)
        self.stop()
        raise GitServerError(f"{self.name} did not listen on {self.port} in 20 s:\n{_tail(log)}")

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None

    @property
    def pid(self) -> int | None:
        return self._process.popen.pid if self._process else None

    def __enter__(self) -> _Server:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass
class GitDaemon(_Server):
    """``git daemon`` exporting every repository under ``root``: ``git://127.0.0.1:port/x``."""

    name = "git-daemon"

    def argv(self) -> list[str]:
        return [
            "git",
            "daemon",
            "--reuseaddr",
            f"--base-path={self.root}",
            "--export-all",
            "--informative-errors",
            "--listen=127.0.0.1",
            f"--port={self.port}",
            str(self.root),
        ]

    def url(self, repo: str) -> str:
        return f"git://127.0.0.1:{self.port}/{repo}"


@dataclass
class SmartHttpServer(_Server):
    """``git http-backend`` over HTTP; with ``token_file``, requests must carry the token."""

    token_file: Path | None = None
    name = "git-http"

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "testbed.gitserver", "http", "--root", str(self.root)]
        argv += ["--port", str(self.port)]
        if self.token_file is not None:
            argv += ["--token-file", str(self.token_file)]
        return argv

    def url(self, repo: str) -> str:
        return f"http://127.0.0.1:{self.port}/{repo}"


@dataclass
class SshServer(_Server):
    """Debian's sshd (unpacked by testbed/build.sh) on a loopback port, serving the
    repositories under ``root`` as ``ssh://<user>@127.0.0.1:<port><root>/<repo>``.

    A fresh ed25519 host key per start; public-key login only, for the keys in
    ``authorized_keys``. It logs in as the user running the tests, which for sshd means root
    (sshd needs root for privilege separation; CI and this test bed run as root).
    """

    sshd: Path = field(default=Path("/usr/sbin/sshd"))
    library_path: Path | None = None
    authorized_keys: Path = field(default=Path("/dev/null"))
    name = "sshd"

    def start(self) -> _Server:
        if os.geteuid() != 0:
            raise GitServerError("the SSH test server runs sshd, which needs root")
        # What openssh-server's maintainer scripts would have set up, had it been installed:
        # the privilege-separation directory and its unprivileged system user.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        try:
            pwd.getpwnam("sshd")
        except KeyError:
            subprocess.run(
                [
                    "useradd",
                    "--system",
                    "--no-create-home",
                    "--home-dir",
                    "/run/sshd",
                    "--shell",
                    "/usr/sbin/nologin",
                    "sshd",
                ],
                check=True,
                capture_output=True,
            )
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.host_key = self.logdir / "ssh_host_ed25519_key"
        self.host_key.unlink(missing_ok=True)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.host_key)],
            check=True,
            capture_output=True,
        )
        return super().start()

    def argv(self) -> list[str]:
        config = self.logdir / f"sshd_config-{self.port}"
        config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {self.host_key}",
                    f"PidFile {self.logdir / f'sshd-{self.port}.pid'}",
                    f"AuthorizedKeysFile {self.authorized_keys}",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    "StrictModes no",  # the test's temp directories are not root-only
                    "UsePAM no",
                    "LogLevel VERBOSE",
                    "",
                ]
            )
        )
        return [str(self.sshd.resolve()), "-D", "-e", "-f", str(config)]

    def extra_env(self) -> dict[str, str]:
        return {"LD_LIBRARY_PATH": str(self.library_path)} if self.library_path else {}

    def known_hosts_line(self) -> str:
        """The line a client's known_hosts needs to trust this server's host key."""
        public = Path(f"{self.host_key}.pub").read_text().split()
        return f"[127.0.0.1]:{self.port} {public[0]} {public[1]}\n"

    def url(self, repo: str) -> str:
        user = pwd.getpwuid(os.geteuid()).pw_name
        return f"ssh://{user}@127.0.0.1:{self.port}{self.root.resolve()}/{repo}"


# -- the HTTP server process ----------------------------------------------------------------


def _authorized(header: str | None, token: str | None) -> bool:
    if token is None:
        return True
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return hmac.compare_digest(value.strip().encode(), token.encode())
    if scheme.lower() == "basic":
        try:
            _, _, password = base64.b64decode(value.strip()).decode().partition(":")
        except ValueError:
            return False
        return hmac.compare_digest(password.encode(), token.encode())
    return False


def _handler(root: Path, token: str | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_GET(self) -> None:
            self._backend()

        def do_POST(self) -> None:
            self._backend()

        def _backend(self) -> None:
            if not _authorized(self.headers.get("Authorization"), token):
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="gitsync-test"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = self._body()
            url = urlsplit(self.path)
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "GIT_PROJECT_ROOT": str(root),
                "GIT_HTTP_EXPORT_ALL": "1",
                "GIT_CONFIG_NOSYSTEM": "1",
                "HOME": str(root),
                "GATEWAY_INTERFACE": "CGI/1.1",
                "REQUEST_METHOD": self.command,
                "PATH_INFO": url.path,
                "QUERY_STRING": url.query,
                "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                "CONTENT_LENGTH": str(len(body)),
                "REMOTE_ADDR": self.client_address[0],
                "REMOTE_USER": "gitsync-test" if token else "",
            }
            for header, variable in (
                ("Git-Protocol", "GIT_PROTOCOL"),
                ("Content-Encoding", "HTTP_CONTENT_ENCODING"),
            ):
                if self.headers.get(header):
                    env[variable] = self.headers[header]
            done = subprocess.run(
                ["git", "http-backend"], input=body, env=env, capture_output=True, check=False
            )
            # A CGI response: headers, a blank line (CRLF or LF), the body.
            separator = b"\r\n\r\n" if b"\r\n\r\n" in done.stdout else b"\n\n"
            head, _, payload = done.stdout.partition(separator)
            status, headers = 200, []
            for line in head.decode("latin-1").splitlines():
                name, _, value = line.partition(":")
                if name.lower() == "status":
                    status = int(value.split()[0])
                elif name:
                    headers.append((name, value.strip()))
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            if done.stderr:
                sys.stderr.write(done.stderr.decode(errors="replace"))

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks: list[bytes] = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    chunk = self.rfile.read(size)
                    self.rfile.readline()
                    if not size:
                        return b"".join(chunks)
                    chunks.append(chunk)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def log_message(self, format: str, *args: object) -> None:
            sys.stderr.write(f"{self.command} {self.path} {args[1] if len(args) > 1 else ''}\n")

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m testbed.gitserver")
    parser.add_argument("mode", choices=["http"])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token-file", type=Path)
    args = parser.parse_args(argv)
    token = args.token_file.read_text().strip() if args.token_file else None
    server = ThreadingHTTPServer(("127.0.0.1", args.port), _handler(args.root, token))
    with server:
        server.serve_forever()


if __name__ == "__main__":
    main()
