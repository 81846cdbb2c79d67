"""Fixtures for the Git source tests: an isolated git environment, real servers (git daemon
and smart HTTP, one of them requiring a token) and upstream repositories served by all of
them. A server that does not start fails the tests that need it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testbed.gitserver import GitDaemon, SmartHttpServer

from .repos import Upstream

TOKEN = "gst-7f3a9c1e5b2d4f60a8e1c3b5d7f9a2c4"
TRANSPORTS = ("file", "git", "http")


@pytest.fixture(autouse=True)
def isolated_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither the developer's git config nor inherited GIT_* variables reach git."""
    home = tmp_path / "home"
    home.mkdir()
    for name in list(os.environ):
        if name.startswith(("GIT_", "GNUPG", "SSH_A")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("served")


@pytest.fixture(scope="session")
def daemon(served: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitDaemon]:
    with GitDaemon(served, tmp_path_factory.mktemp("daemon-log")) as server:
        assert isinstance(server, GitDaemon)
        yield server


@pytest.fixture(scope="session")
def http(served: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmartHttpServer]:
    with SmartHttpServer(served, tmp_path_factory.mktemp("http-log")) as server:
        assert isinstance(server, SmartHttpServer)
        yield server


@pytest.fixture(scope="session")
def http_auth(served: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmartHttpServer]:
    logdir = tmp_path_factory.mktemp("http-auth-log")
    token_file = logdir / "server-token"
    token_file.write_text(TOKEN)
    with SmartHttpServer(served, logdir, token_file=token_file) as server:
        assert isinstance(server, SmartHttpServer)
        yield server


@pytest.fixture
def upstream(served: Path, tmp_path: Path) -> Upstream:
    return Upstream(served, f"r-{uuid.uuid4().hex[:8]}", tmp_path / "work")


@pytest.fixture(params=TRANSPORTS)
def url_for(request: pytest.FixtureRequest, served: Path) -> Callable[[Upstream], str]:
    """How to reach an upstream: file://, git:// (daemon) or http:// (smart HTTP)."""
    transport = request.param
    if transport == "file":
        return lambda up: up.bare.as_uri()
    server = request.getfixturevalue("daemon" if transport == "git" else "http")
    return lambda up: server.url(up.name)
