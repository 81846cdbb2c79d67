"""The GitHub and GitLab providers against a local server that checks their documented APIs:
method, path, headers (auth, accept, user-agent) and JSON body; retries on 502 and on rate
limits, waiting what the forge asks for."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from gitsync.errors import ForgeError
from gitsync.report.github import AppTokens, GitHubProvider, github_headers, token_headers
from gitsync.report.gitlab import GitLabProvider, gitlab_headers
from gitsync.report.http import JsonClient, RetryPolicy
from gitsync.report.pulls import MARKER, GiteaPulls, GitHubPulls, GitLabPulls, eligible
from gitsync.report.status import CommitStatus, State
from gitsync.source.config import TokenAuth
from tests.report.forge import ForgeServer, GitHubStatuses, GitLabStatuses, Reply, Request

SHA = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "ghp_s3cr3t-token-value"
STATUS = CommitStatus(
    "gitsync/staging", State.FAILURE, "ranker Degraded: app ranker is DEPLOY_FAILED", "https://d/x"
)
GITHUB_STATES = {"error", "failure", "pending", "success"}
GITLAB_STATES = {"pending", "running", "success", "failed", "canceled", "skipped"}


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch) -> TokenAuth:
    monkeypatch.setenv("FORGE_TOKEN", TOKEN)
    return TokenAuth(token_env="FORGE_TOKEN")


def client(base: str, headers: object, sleeps: list[float]) -> JsonClient:
    return JsonClient(
        base,
        headers,  # type: ignore[arg-type]
        timeout=5,
        policy=RetryPolicy(attempts=4, backoff=0.01),
        sleep=sleeps.append,
    )


def check_github_request(request: Request, token: str = TOKEN) -> None:
    assert request.headers["authorization"] == f"Bearer {token}"
    assert request.headers["accept"] == "application/vnd.github+json"
    assert request.headers["x-github-api-version"] == "2022-11-28"
    assert request.headers["user-agent"].startswith("gitsync/")
    if request.method == "POST":
        assert request.headers["content-type"] == "application/json"


# -- GitHub -------------------------------------------------------------------------------------


def test_github_posts_a_status(token_env: TokenAuth) -> None:
    sleeps: list[float] = []
    with ForgeServer() as forge:
        provider = GitHubProvider(
            client(forge.url, token_headers(token_env), sleeps), "platform/ray"
        )
        provider.post(SHA, STATUS)
    [request] = forge.requests
    assert (request.method, request.path) == ("POST", f"/repos/platform/ray/statuses/{SHA}")
    check_github_request(request)
    assert request.body == {
        "state": "failure",
        "context": "gitsync/staging",
        "description": "ranker Degraded: app ranker is DEPLOY_FAILED",
        "target_url": "https://d/x",
    }
    assert set(request.body) <= {"state", "target_url", "description", "context"}
    assert request.body["state"] in GITHUB_STATES
    assert sleeps == []


def test_github_enterprise_base_url(token_env: TokenAuth) -> None:
    with ForgeServer() as forge:
        base = f"{forge.url}/api/v3"
        GitHubProvider(client(base, token_headers(token_env), []), "o/r").post(SHA, STATUS)
    assert forge.requests[0].path == f"/api/v3/repos/o/r/statuses/{SHA}"


def test_github_retries_a_502(token_env: TokenAuth) -> None:
    sleeps: list[float] = []
    with ForgeServer() as forge:
        forge.script = [Reply(502, {"message": "Bad Gateway"})]
        GitHubProvider(client(forge.url, token_headers(token_env), sleeps), "o/r").post(SHA, STATUS)
    assert [r.method for r in forge.requests] == ["POST", "POST"]
    assert len(sleeps) == 1
    assert 0 < sleeps[0] < 1


def test_github_primary_rate_limit_waits_until_the_reset(token_env: TokenAuth) -> None:
    sleeps: list[float] = []
    reset = int(time.time()) + 7
    limited = Reply(
        403,
        {"message": "API rate limit exceeded"},
        {
            "x-ratelimit-remaining": "0",
            "x-ratelimit-reset": str(reset),
            "x-ratelimit-limit": "5000",
        },
    )
    with ForgeServer() as forge:
        forge.script = [limited]
        GitHubProvider(client(forge.url, token_headers(token_env), sleeps), "o/r").post(SHA, STATUS)
    assert len(forge.posts()) == 2
    assert 5 <= sleeps[0] <= 7


def test_github_secondary_rate_limit_honours_retry_after(token_env: TokenAuth) -> None:
    sleeps: list[float] = []
    with ForgeServer() as forge:
        forge.script = [
            Reply(
                403, {"message": "You have exceeded a secondary rate limit"}, {"retry-after": "3"}
            ),
            Reply(429, {"message": "slow down"}, {"Retry-After": "2"}),
        ]
        GitHubProvider(client(forge.url, token_headers(token_env), sleeps), "o/r").post(SHA, STATUS)
    assert sleeps == [3.0, 2.0]
    assert len(forge.posts()) == 3


def test_github_permanent_errors_are_not_retried_and_never_echo_the_token(
    token_env: TokenAuth,
) -> None:
    sleeps: list[float] = []
    with ForgeServer() as forge:
        forge.script = [Reply(422, {"message": "Validation Failed"})]
        provider = GitHubProvider(client(forge.url, token_headers(token_env), sleeps), "o/r")
        with pytest.raises(ForgeError, match=r"HTTP 422: .*Validation Failed") as caught:
            provider.post(SHA, STATUS)
    assert len(forge.requests) == 1
    assert sleeps == []
    assert TOKEN not in str(caught.value)


def test_github_gives_up_after_the_last_attempt(token_env: TokenAuth) -> None:
    sleeps: list[float] = []
    with ForgeServer(lambda request: Reply(503, {"message": "unavailable"})) as forge:
        provider = GitHubProvider(client(forge.url, token_headers(token_env), sleeps), "o/r")
        with pytest.raises(ForgeError, match="gave up after 4 attempts"):
            provider.post(SHA, STATUS)
    assert len(forge.requests) == 4
    assert len(sleeps) == 3
    assert sleeps == sorted(sleeps)  # exponential backoff


def test_github_reads_the_combined_status(token_env: TokenAuth) -> None:
    combined = {
        "state": "failure",
        "statuses": [
            {
                "context": "gitsync/staging",
                "state": "success",
                "description": "ok",
                "target_url": None,
            },
            {"context": "ci/test", "state": "failure", "description": "red", "target_url": "u"},
        ],
    }
    with ForgeServer(lambda request: Reply(200, combined)) as forge:
        shown = GitHubProvider(client(forge.url, token_headers(token_env), []), "o/r").statuses(SHA)
    [request] = forge.requests
    assert (request.method, request.path) == (
        "GET",
        f"/repos/o/r/commits/{SHA}/status?per_page=100&page=1",
    )
    check_github_request(request)
    assert shown["gitsync/staging"] == CommitStatus("gitsync/staging", State.SUCCESS, "ok")
    assert shown["ci/test"].state is State.FAILURE


def test_github_reads_every_page_of_the_combined_status(token_env: TokenAuth) -> None:
    """A commit with more contexts than a page: the predecessor's newest status is found
    however many contexts were set after it."""
    github = GitHubStatuses()
    github.add(SHA, "gitsync/staging", "pending", "applying wave 1/1")
    github.add(SHA, "gitsync/staging", "success", "Healthy")
    for number in range(140):
        github.add(SHA, f"ci/check-{number}", "success")
    with ForgeServer(github) as forge:
        shown = GitHubProvider(client(forge.url, token_headers(token_env), []), "o/r").statuses(SHA)
    assert shown["gitsync/staging"] == CommitStatus("gitsync/staging", State.SUCCESS, "Healthy")
    assert len(shown) == 141
    assert [r.path.partition("?")[2] for r in forge.requests] == [
        "per_page=100&page=1",
        "per_page=100&page=2",
    ]


def test_github_app_installation_token(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (tmp_path / "app.pem").write_bytes(pem)
    issued: list[str] = []

    def respond(request: Request) -> Reply:
        if request.path.startswith("/app/installations/"):
            jwt = request.headers["authorization"].removeprefix("Bearer ")
            header, claims, signature = jwt.split(".")
            pad = lambda part: base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))  # noqa: E731
            key.public_key().verify(
                pad(signature), f"{header}.{claims}".encode(), padding.PKCS1v15(), hashes.SHA256()
            )
            assert json.loads(pad(header)) == {"alg": "RS256", "typ": "JWT"}
            body = json.loads(pad(claims))
            assert body["iss"] == "4242"
            assert body["exp"] - body["iat"] <= 600
            issued.append(f"ghs_installation{len(issued)}")
            return Reply(201, {"token": issued[-1], "expires_at": "2099-01-01T00:00:00Z"})
        check_github_request(request, issued[-1])
        return Reply(201, {})

    with ForgeServer(respond) as forge:
        base = client(forge.url, lambda: {}, [])
        tokens = AppTokens(base, "4242", "99", tmp_path / "app.pem")
        provider = GitHubProvider(client(forge.url, tokens.headers, []), "o/r")
        provider.post(SHA, STATUS)
        provider.post(SHA, STATUS)
    paths = [r.path for r in forge.requests]
    assert paths == [
        "/app/installations/99/access_tokens",
        f"/repos/o/r/statuses/{SHA}",
        f"/repos/o/r/statuses/{SHA}",
    ]  # the installation token is cached until it nears expiry
    assert forge.requests[0].method == "POST"


def test_github_headers_shape() -> None:
    assert github_headers("t") == {
        "Accept": "application/vnd.github+json",
        "Authorization": "Bearer t",
        "X-GitHub-Api-Version": "2022-11-28",
    }


# -- GitLab -------------------------------------------------------------------------------------


def check_gitlab_request(request: Request) -> None:
    assert request.headers["private-token"] == TOKEN
    assert "authorization" not in request.headers
    assert request.headers["accept"] == "application/json"
    assert request.headers["user-agent"].startswith("gitsync/")
    if request.method == "POST":
        assert request.headers["content-type"] == "application/json"


def gitlab_provider(forge: ForgeServer, auth: TokenAuth, sleeps: list[float]) -> GitLabProvider:
    return GitLabProvider(client(forge.url, lambda: gitlab_headers(auth), sleeps), "g/p")


def test_gitlab_refusing_an_unchanged_running_state_is_delivered(token_env: TokenAuth) -> None:
    """GitLab answers 400 to ``running`` on a status that is already running (every wave after
    the first posts it): the state is shown, so it is not retried; the final state lands."""
    gitlab, sleeps = GitLabStatuses(), []
    ctx = "gitsync/staging"
    with ForgeServer(gitlab) as forge:
        provider = gitlab_provider(forge, token_env, sleeps)
        provider.post(SHA, CommitStatus(ctx, State.PENDING, "applying wave 1/2: ranker"))
        provider.post(SHA, CommitStatus(ctx, State.PENDING, "applying wave 2/2: summarizer"))
        assert gitlab.latest(SHA, ctx)["description"] == "applying wave 1/2: ranker"
        provider.post(SHA, CommitStatus(ctx, State.SUCCESS, "Healthy"))
        shown = provider.statuses(SHA)
    posts = forge.posts()
    assert [r.body["state"] for r in posts] == ["running", "running", "success"]
    for request in forge.requests:
        check_gitlab_request(request)
    assert sleeps == []  # the refusal was not retried
    assert gitlab.latest(SHA, ctx)["status"] == "success"
    assert shown[ctx] == CommitStatus(ctx, State.SUCCESS, "Healthy")


def test_gitlab_other_refusals_are_errors(token_env: TokenAuth) -> None:
    with ForgeServer() as forge:
        forge.script = [
            Reply(400, {"message": "Cannot transition status via :enqueue from :running"}),
            Reply(400, {"message": {"target_url": ["is blocked: Only allowed schemes"]}}),
        ]
        provider = gitlab_provider(forge, token_env, [])
        for _ in range(2):  # posting running: the first refusal is not about running
            with pytest.raises(ForgeError) as caught:
                provider.post(SHA, CommitStatus("gitsync/x", State.PENDING, "applying"))
            assert caught.value.status == 400


def test_gitlab_a_new_rollout_after_a_final_state_starts_a_new_status(token_env: TokenAuth) -> None:
    gitlab = GitLabStatuses()
    ctx = "gitsync/staging"
    with ForgeServer(gitlab) as forge:
        provider = gitlab_provider(forge, token_env, [])
        for state in (State.PENDING, State.FAILURE, State.PENDING, State.PENDING, State.SUCCESS):
            provider.post(SHA, CommitStatus(ctx, state, str(state)))
        shown = provider.statuses(SHA)
    assert [e["status"] for e in gitlab.entries] == ["failed", "success"]
    assert shown[ctx].state is State.SUCCESS


@pytest.mark.parametrize(
    ("state", "gitlab"),
    [
        (State.PENDING, "running"),
        (State.SUCCESS, "success"),
        (State.FAILURE, "failed"),
        (State.ERROR, "failed"),
    ],
)
def test_gitlab_posts_with_gitlab_state_names(
    token_env: TokenAuth, state: State, gitlab: str
) -> None:
    with ForgeServer() as forge:
        provider = GitLabProvider(
            client(forge.url, lambda: gitlab_headers(token_env), []), "platform/ray-services"
        )
        provider.post(SHA, CommitStatus("gitsync/production", state, "d", ""))
    [request] = forge.requests
    assert request.method == "POST"
    assert request.path == f"/api/v4/projects/platform%2Fray-services/statuses/{SHA}"
    check_gitlab_request(request)
    assert request.body == {"state": gitlab, "name": "gitsync/production", "description": "d"}
    assert request.body["state"] in GITLAB_STATES


def test_gitlab_numeric_project_and_retries(token_env: TokenAuth) -> None:
    sleeps: list[float] = []
    reset = int(time.time()) + 4
    with ForgeServer() as forge:
        forge.script = [
            Reply(502, {"message": "502 Bad Gateway"}),
            Reply(
                429,
                {"message": "Retry later"},
                {"RateLimit-Remaining": "0", "RateLimit-Reset": str(reset)},
            ),
            Reply(429, {"message": "Retry later"}, {"Retry-After": "1"}),
        ]
        GitLabProvider(client(forge.url, lambda: gitlab_headers(token_env), sleeps), "1234").post(
            SHA, STATUS
        )
    assert [r.path for r in forge.requests] == [f"/api/v4/projects/1234/statuses/{SHA}"] * 4
    assert 0 < sleeps[0] < 1
    assert 2 <= sleeps[1] <= 4
    assert sleeps[2] == 1.0


def test_gitlab_reads_back_the_newest_status_per_name(token_env: TokenAuth) -> None:
    listing = [
        {"id": 7, "name": "gitsync/staging", "status": "running", "description": "applying"},
        {"id": 9, "name": "gitsync/staging", "status": "success", "description": "Healthy"},
        {"id": 8, "name": "gitsync/production", "status": "canceled", "description": "x"},
    ]
    with ForgeServer(lambda request: Reply(200, listing)) as forge:
        shown = GitLabProvider(
            client(forge.url, lambda: gitlab_headers(token_env), []), "g/p"
        ).statuses(SHA)
    [request] = forge.requests
    assert request.method == "GET"
    assert request.path.startswith(f"/api/v4/projects/g%2Fp/repository/commits/{SHA}/statuses?")
    assert shown["gitsync/staging"].state is State.SUCCESS
    assert shown["gitsync/production"].state is State.ERROR


def test_gitlab_reads_every_page_of_the_latest_statuses(token_env: TokenAuth) -> None:
    """Many names on a commit, and the predecessor's newest status set last: GitLab lists
    the latest status per name, oldest first, 100 a page at most; every page is read."""
    gitlab = GitLabStatuses()
    gitlab.post(SHA, {"state": "running", "name": "gitsync/staging"})
    gitlab.post(SHA, {"state": "success", "name": "gitsync/staging", "description": "Healthy"})
    for number in range(130):
        gitlab.post(SHA, {"state": "success", "name": f"ci/check-{number}"})
    gitlab.post(SHA, {"state": "running", "name": "gitsync/staging"})  # a new rollout
    gitlab.post(SHA, {"state": "failed", "name": "gitsync/staging", "description": "Degraded"})
    with ForgeServer(gitlab) as forge:
        shown = gitlab_provider(forge, token_env, []).statuses(SHA)
    assert shown["gitsync/staging"] == CommitStatus("gitsync/staging", State.FAILURE, "Degraded")
    assert len(shown) == 131
    for request in forge.requests:
        check_gitlab_request(request)
    assert [r.path.partition("?")[2] for r in forge.requests] == [
        "per_page=100&page=1",
        "per_page=100&page=2",
    ]


def test_a_missing_token_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOPE", raising=False)
    with ForgeServer() as forge:
        provider = GitLabProvider(
            client(forge.url, lambda: gitlab_headers(TokenAuth(token_env="NOPE")), []), "g/p"
        )
        with pytest.raises(Exception, match=r"GitLab status token from env \$NOPE is empty"):
            provider.post(SHA, STATUS)
    assert forge.requests == []


# -- pull requests and plan comments ------------------------------------------------------------


HIJACK = {"id": 9, "body": f"{MARKER}\nmerging this deploys nothing", "user": {"id": 666}}


@pytest.mark.parametrize("app", [False, True], ids=["token", "app"])
def test_github_pulls_and_one_comment_edited_in_place(token_env: TokenAuth, app: bool) -> None:
    # Someone else posted the marker first: gitsync must neither edit nor count that comment.
    comments: list[dict[str, Any]] = [dict(HIJACK)]
    me = {"user": {"id": 42}} | ({"performed_via_github_app": {"id": 77}} if app else {})
    if app:  # another app's comment carries the marker too
        comments.append(dict(HIJACK, id=10, performed_via_github_app={"id": 5}))

    def respond(request: Request) -> Reply:
        check_github_request(request)
        if request.method == "GET" and request.path == "/user":
            return (
                Reply(403, {"message": "Resource not accessible by integration"})
                if app
                else (Reply(200, {"id": 42, "login": "gitsync-bot"}))
            )
        if request.method == "GET" and request.path.startswith("/repos/o/r/pulls?"):
            return Reply(200, [
                {"number": 7, "title": "t", "user": {"login": "alice"}, "labels": [{"name": "preview"}],
                 "head": {"sha": SHA, "ref": "feature", "repo": {"full_name": "alice/r"}},
                 "base": {"ref": "main", "repo": {"full_name": "o/r"}}},
            ])  # fmt: skip
        if request.method == "GET" and request.path.startswith("/repos/o/r/issues/7/comments"):
            return Reply(200, comments)
        if request.method == "POST" and request.path == "/repos/o/r/issues/7/comments":
            comments.append({"id": 1, "body": request.body["body"], **me})
            return Reply(201, comments[-1])
        if request.method == "PATCH" and request.path == "/repos/o/r/issues/comments/1":
            comments[-1]["body"] = request.body["body"]
            return Reply(200, comments[-1])
        return Reply(404, {"message": "Not Found"})

    with ForgeServer(respond) as forge:
        pulls = GitHubPulls(
            client(forge.url, token_headers(token_env), []), "o/r", app_id="77" if app else ""
        )
        [pr] = pulls.open_pulls()
        assert (pr.number, pr.head_sha, pr.head_ref, pr.fork, pr.labels) == (
            7,
            SHA,
            "refs/pull/7/head",
            True,
            ("preview",),
        )
        assert eligible(pr, (), "preview") is None
        assert eligible(pr, (), "ok-to-preview") is not None
        assert eligible(pr, ("alice",), "") is None
        pulls.upsert_comment(7, f"{MARKER}\nfirst")
        pulls.upsert_comment(7, f"{MARKER}\nsecond")
        pulls.upsert_comment(7, f"{MARKER}\nsecond")  # identical: no request
    assert comments[0] == HIJACK  # untouched
    assert [c["body"] for c in comments if c["id"] == 1] == [f"{MARKER}\nsecond"]
    writes = [(r.method, r.path) for r in forge.requests if r.method != "GET"]
    assert writes == [
        ("POST", "/repos/o/r/issues/7/comments"),
        ("PATCH", "/repos/o/r/issues/comments/1"),
    ]


def test_gitlab_merge_requests_and_notes(token_env: TokenAuth) -> None:
    hijack = {"id": 4, "body": f"{MARKER}\nnothing to see", "author": {"id": 666}}
    notes: list[dict[str, Any]] = [dict(hijack)]

    def respond(request: Request) -> Reply:
        assert request.headers["private-token"] == TOKEN
        base = "/api/v4/projects/g%2Fp"
        if request.method == "GET" and request.path == "/api/v4/user":
            return Reply(200, {"id": 42, "username": "gitsync-bot"})
        if request.method == "GET" and request.path.startswith(f"{base}/merge_requests?"):
            return Reply(200, [
                {"iid": 3, "sha": SHA, "source_branch": "f", "target_branch": "main",
                 "author": {"username": "bob"}, "source_project_id": 1, "target_project_id": 1,
                 "labels": ["x"], "title": "t"},
            ])  # fmt: skip
        if request.method == "GET" and request.path.startswith(f"{base}/merge_requests/3/notes"):
            return Reply(200, notes)
        if request.method == "POST" and request.path == f"{base}/merge_requests/3/notes":
            notes.append({"id": 5, "body": request.body["body"], "author": {"id": 42}})
            return Reply(201, notes[-1])
        if request.method == "PUT" and request.path == f"{base}/merge_requests/3/notes/5":
            notes[-1]["body"] = request.body["body"]
            return Reply(200, notes[-1])
        return Reply(404, {"message": "404 Not Found"})

    with ForgeServer(respond) as forge:
        pulls = GitLabPulls(client(forge.url, lambda: gitlab_headers(token_env), []), "g/p")
        [mr] = pulls.open_pulls()
        assert (mr.number, mr.head_ref, mr.fork, mr.author) == (
            3,
            "refs/merge-requests/3/head",
            False,
            "bob",
        )
        pulls.upsert_comment(3, f"{MARKER}\none")
        pulls.upsert_comment(3, f"{MARKER}\ntwo")
    assert [n["body"] for n in notes] == [hijack["body"], f"{MARKER}\ntwo"]


def served_pulls(pulls: list[dict[str, Any]]) -> ForgeServer:
    return ForgeServer(lambda request: Reply(200, pulls if request.method == "GET" else {}))


def pull(number: int, head_repo: Any, base_repo: Any = None) -> dict[str, Any]:
    """A PR as GitHub and Gitea list it; ``repo`` absent or null when the fork was deleted."""
    head: dict[str, Any] = {"sha": SHA, "ref": f"b{number}"}
    if head_repo != "absent":
        head["repo"] = head_repo
    base = {"ref": "main", "repo": base_repo or {"full_name": "o/r"}}
    return {"number": number, "user": {"login": "u"}, "head": head, "base": base}


@pytest.mark.parametrize("api", ["github", "gitea"])
def test_a_pull_request_without_a_head_repository_is_a_fork(api: str, token_env: TokenAuth) -> None:
    payload = [
        pull(1, {"full_name": "o/r"}),
        pull(2, {"full_name": "O/R"}),  # names are case-insensitive
        pull(3, {"full_name": "alice/r"}),
        pull(4, None),  # the fork was deleted
        pull(5, "absent"),
        pull(6, {"full_name": None}),
        pull(7, {"full_name": "o/r"}, {"full_name": None}),  # the base repo is ours
    ]
    with served_pulls(payload) as forge:
        headers = token_headers(token_env)
        pulls = (
            GitHubPulls(client(forge.url, headers, []), "o/r")
            if api == "github"
            else GiteaPulls(client(forge.url, headers, []), "o/r")
        )
        forks = {pr.number: pr.fork for pr in pulls.open_pulls()}
    prefix = "" if api == "github" else "/api/v1"
    assert forge.requests[0].path.startswith(f"{prefix}/repos/o/r/pulls?state=open")
    assert forks == {1: False, 2: False, 3: True, 4: True, 5: True, 6: True, 7: False}


def test_a_merge_request_without_a_source_project_is_a_fork(token_env: TokenAuth) -> None:
    def mr(iid: int, **projects: Any) -> dict[str, Any]:
        return {"iid": iid, "sha": SHA, "source_branch": "f", "target_branch": "main",
                "author": {"username": "bob"}, **projects}  # fmt: skip

    payload = [
        mr(1, source_project_id=4, target_project_id=4),
        mr(2, source_project_id=9, target_project_id=4),
        mr(3, source_project_id=None, target_project_id=4),  # the fork was deleted
        mr(4, source_project_id=None, target_project_id=None),
        mr(5),
    ]
    with served_pulls(payload) as forge:
        pulls = GitLabPulls(client(forge.url, lambda: gitlab_headers(token_env), []), "g/p")
        forks = {pr.number: pr.fork for pr in pulls.open_pulls()}
    assert forks == {1: False, 2: True, 3: True, 4: True, 5: True}


@pytest.mark.parametrize("status", [401, 503])
def test_a_forge_that_quotes_the_token_back_is_redacted(token_env: TokenAuth, status: int) -> None:
    """Some forges name the credential they refused; that text reaches logs and errors."""
    sleeps: list[float] = []
    with ForgeServer() as forge:
        forge.default = lambda request: Reply(
            status,
            {"message": f"token {TOKEN} is invalid", "echo": request.headers["authorization"]},
        )
        provider = GitHubProvider(client(forge.url, token_headers(token_env), sleeps), "o/r")
        with pytest.raises(ForgeError, match=r"token \*\*\* is invalid") as caught:
            provider.post(SHA, STATUS)
    assert TOKEN not in str(caught.value)
