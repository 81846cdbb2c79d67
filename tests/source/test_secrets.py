"""A token given to the source never shows: not in logs (DEBUG, GitPython's included), not in
exception text, not in any repr, not in the argv of a git process; on success and failure."""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from gitsync.errors import SourceError
from gitsync.source import GitSource, RepoSource, TokenAuth, redact, redact_url
from testbed.controlplane import free_port
from testbed.gitserver import SmartHttpServer

from .conftest import TOKEN
from .repos import Upstream


def leaks(text: str) -> list[str]:
    basic = base64.b64encode(f"git:{TOKEN}".encode()).decode()
    return [secret for secret in (TOKEN, basic) if secret in text]


@pytest.mark.parametrize("where", ["file", "env", "url"])
def test_token_never_appears_in_logs_errors_reprs_or_argv(
    upstream: Upstream,
    http_auth: SmartHttpServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    where: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    sha = upstream.commit({"app.yaml": "v1\n"})
    (tmp_path / "token").write_text(TOKEN)
    monkeypatch.setenv("GITSYNC_GIT_TOKEN", TOKEN)
    auth = {
        "file": TokenAuth(token_file=tmp_path / "token", scheme="basic"),
        "env": TokenAuth(token_env="GITSYNC_GIT_TOKEN"),
        "url": None,
    }[where]

    def url(base: str) -> str:
        return base.replace("http://", f"http://git:{TOKEN}@") if where == "url" else base

    shown: list[str] = []
    errors: list[SourceError] = []

    def attempt(config: RepoSource, action: Callable[[GitSource], object]) -> None:
        source = GitSource(config)
        shown.extend([repr(config), repr(source), str(config.auth), repr(config.auth)])
        try:
            action(source)
        except SourceError as exc:
            errors.append(exc)
            shown.extend([str(exc), repr(exc)])
        shown.extend(" ".join(call.argv) for call in source.runner.calls)
        shown.append(repr(source.runner.calls))

    good = RepoSource(url(http_auth.url(upstream.name)), "main", tmp_path / "ok", auth=auth)
    attempt(good, lambda s: (s.checkout(s.head()), s.head()))
    assert (tmp_path / "ok" / "trees" / sha / "app.yaml").exists()  # the success path ran

    failures = [
        RepoSource(url(http_auth.url("missing.git")), "main", tmp_path / "a", auth=auth),
        RepoSource(url(http_auth.url(upstream.name)), "gone", tmp_path / "b", auth=auth),
        RepoSource(url(f"http://127.0.0.1:{free_port()}/x.git"), "main", tmp_path / "c", auth=auth),
    ]
    for config in failures:
        attempt(config, lambda s: s.head())
    attempt(good, lambda s: s.checkout("0" * 40))
    assert len(errors) == 4, errors  # each failure path did fail, with a message

    assert caplog.records, "expected DEBUG logs from the source and GitPython"
    assert leaks(caplog.text) == []
    for text in shown:
        assert leaks(text) == [], text


def test_a_wrong_token_is_not_echoed_either(
    upstream: Upstream, http_auth: SmartHttpServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    upstream.commit({"app.yaml": "v1\n"})
    wrong = "wrong-f00dfacecafe1234"
    url = http_auth.url(upstream.name).replace("http://", f"http://someone:{wrong}@")
    source = GitSource(RepoSource(url, "main", tmp_path / "c"))
    with pytest.raises(SourceError) as exc:
        source.head()
    assert "http://***@127.0.0.1" in str(exc.value)
    for text in (caplog.text, str(exc.value), repr(source)):
        assert wrong not in text


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:tok@example.com/r.git", "https://***@example.com/r.git"),
        ("https://tok@example.com/r.git", "https://***@example.com/r.git"),
        ("https://example.com/r.git", "https://example.com/r.git"),
        ("git@example.com:org/r.git", "git@example.com:org/r.git"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_text() -> None:
    text = "fatal: https://u:p@h/r: Authorization: Bearer abc123 and abc123 again"
    assert redact(text, ["abc123"]) == "fatal: https://***@h/r: Authorization: *** and *** again"
