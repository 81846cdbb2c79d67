"""The status page over real HTTP (the agent's server): security headers, static assets,
auth, routing. Pages are read from the test bed's API server (a fresh namespace: no
environment rolled out); the refusals (auth, disabled) read nothing."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from email.message import Message
from pathlib import Path

import pytest
from kubernetes import client

from gitsync.config import AgentConfig, StatusConfig, UiAuth, UiSettings, load_agent_config
from gitsync.kube.rayservices import RayServicesClient
from gitsync.kube.state import StateStore
from gitsync.metrics import Metrics
from gitsync.server import AgentServer, Hooks
from gitsync.source.config import TokenAuth
from gitsync.web.site import CSP, StatusSite, forge_of, is_loopback
from testbed.controlplane import free_port


@pytest.fixture
def offline() -> Iterator[client.ApiClient]:
    with client.ApiClient() as api_client:  # never called: a refusal reads nothing
        yield api_client


def serve(
    api: client.ApiClient, settings: UiSettings, *, loopback: bool = True, namespace: str = "x"
) -> AgentServer:
    site = StatusSite(
        RayServicesClient(api), StateStore(api, namespace), settings, None, loopback=loopback
    )
    hooks = Hooks(lambda: None, "", "main", lambda: None, lambda: None, lambda: True, lambda: True)
    return AgentServer("127.0.0.1", free_port(), hooks, Metrics(), site).start()


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, Message, bytes]:
    """The answer's status, headers (names compared without case, as HTTP's are) and body."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


@pytest.fixture
def server(api: client.ApiClient, namespace: str) -> Iterator[AgentServer]:
    started = serve(api, UiSettings(), namespace=namespace)
    yield started
    started.stop()


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/ui/app.css",
        "/ui/app.js",
        "/api/v1/environments",
        "/api/v1/previews",
        "/api/v1/openapi.json",
        "/environments/nope",
    ],
)
def test_every_answer_carries_a_strict_csp(server: AgentServer, path: str) -> None:
    status, headers, _ = get(server.port, path)
    assert status in (200, 404)
    assert headers["Content-Security-Policy"] == CSP
    assert "'unsafe-inline'" not in CSP
    assert "default-src 'none'" in CSP
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"


def test_pages_and_api(server: AgentServer) -> None:
    status, headers, body = get(server.port, "/")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert b"the first pass has not run" in body
    assert b'<script src="/ui/app.js" defer></script>' in body
    assert b"<style" not in body
    assert b" style=" not in body
    assert b"<script>" not in body
    assert get(server.port, "/api/v1/environments")[2] == (
        b'{"environments": [], "previews": [], "in_progress": false}'
    )
    assert get(server.port, "/api/v1/environments/staging")[0] == 404
    status, headers, _ = get(server.port, "/ui/app.js")
    assert status == 200
    assert headers["Content-Type"].startswith("text/javascript")
    assert b"innerHTML" not in get(server.port, "/ui/app.js")[2].replace(b"no innerHTML", b"")
    assert get(server.port, "/metrics")[0] == 200  # the rest of the server is untouched


def test_beyond_loopback_without_auth_it_refuses(offline: client.ApiClient) -> None:
    server = serve(offline, UiSettings(), loopback=False)
    try:
        status, _, body = get(server.port, "/")
        assert status == 403
        assert b"ui.auth" in body
        assert get(server.port, "/api/v1/environments")[0] == 403
        assert get(server.port, "/healthz")[0] == 200
    finally:
        server.stop()


def test_disabled(offline: client.ApiClient) -> None:
    server = serve(offline, UiSettings(enabled=False))
    try:
        assert get(server.port, "/")[0] == 404
    finally:
        server.stop()


def test_bearer_token(api: client.ApiClient, namespace: str, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    settings = UiSettings(auth=UiAuth(bearer=TokenAuth(token_file=token)))
    server = serve(api, settings, loopback=False, namespace=namespace)
    try:
        status, headers, body = get(server.port, "/")
        assert status == 401
        assert headers["WWW-Authenticate"].startswith("Bearer")
        assert b"s3cret" not in body
        assert get(server.port, "/", {"Authorization": "Bearer wrong"})[0] == 401
        assert get(server.port, "/", {"Authorization": "Bearer s3cret-token"})[0] == 200
        token.write_text("rotated")  # read at each request
        assert get(server.port, "/", {"Authorization": "Bearer rotated"})[0] == 200
    finally:
        server.stop()


def test_basic_auth(api: client.ApiClient, namespace: str, tmp_path: Path) -> None:
    users = tmp_path / "basic"
    users.write_text("viewer:pa:ss\n")
    settings = UiSettings(auth=UiAuth(basic_file=users))
    server = serve(api, settings, loopback=False, namespace=namespace)
    try:
        status, headers, _ = get(server.port, "/api/v1/environments")
        assert status == 401
        assert headers["WWW-Authenticate"] == 'Basic realm="gitsync"'
        good = base64.b64encode(b"viewer:pa:ss").decode()
        bad = base64.b64encode(b"viewer:nope").decode()
        assert get(server.port, "/", {"Authorization": f"Basic {bad}"})[0] == 401
        assert get(server.port, "/", {"Authorization": "Basic !!!"})[0] == 401
        assert get(server.port, "/", {"Authorization": f"Basic {good}"})[0] == 200
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("", False),
        ("10.0.0.5", False),
    ],
)
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def config(**status: object) -> AgentConfig:
    loaded, problems = load_agent_config(
        "repository: {url: https://git.example.com/platform/ray.git}\n"
    )
    assert loaded is not None, problems
    return replace(loaded, status=StatusConfig(**status))  # type: ignore[arg-type]


def test_forge_links_follow_the_status_provider() -> None:
    assert forge_of(config()) is None  # git notes: no forge
    token = TokenAuth(token_env="T")
    gitea = forge_of(config(provider="gitea", token=token))
    assert gitea is not None
    assert gitea.commit_url("abc") == "https://git.example.com/platform/ray/commit/abc"
    github = forge_of(config(provider="github", token=token, repository="o/r"))
    assert github is not None
    assert github.commit_url("abc") == "https://github.com/o/r/commit/abc"
    ghe = forge_of(config(provider="github", token=token, url="https://ghe.example/api/v3"))
    assert ghe is not None
    assert ghe.root == "https://ghe.example"
    gitlab = forge_of(config(provider="gitlab", token=token, url="https://gl.example"))
    assert gitlab is not None
    assert gitlab.commit_url("abc") == "https://gl.example/platform/ray/-/commit/abc"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("ui: {auth: {bearerTokenFile: /a, basicAuthFile: /b}}", "give one of"),
        ("ui: {auth: {token: abc}}", "secrets are never written"),
        ("ui: {enabled: yes please}", "ui.enabled must be true or false"),
        ("ui: {refreshInterval: soon}", "ui.refreshInterval"),
        ("ui: {colour: blue}", "unknown key"),
    ],
)
def test_ui_config_problems(text: str, problem: str) -> None:
    loaded, problems = load_agent_config(
        f"repository: {{url: https://g.example/o/r.git}}\n{text}\n"
    )
    assert loaded is None
    assert any(problem in p.message for p in problems), problems


def test_ui_config() -> None:
    loaded, problems = load_agent_config(
        "repository: {url: https://g.example/o/r.git}\n"
        "ui: {auth: {basicAuthFile: /etc/gitsync/ui-users}, showEnvValues: true, refreshInterval: 5s}\n"
    )
    assert loaded is not None, problems
    assert loaded.ui == UiSettings(
        True, UiAuth(basic_file=Path("/etc/gitsync/ui-users")), True, 5.0
    )
    default, _ = load_agent_config("repository: {url: https://g.example/o/r.git}\n")
    assert default is not None
    assert default.ui == UiSettings()
