"""The one place the agent config becomes a status provider, a reporter and a notifier."""

from __future__ import annotations

import os
import re
import socket
from urllib.parse import urlsplit

from gitsync.config import AgentConfig, StatusConfig
from gitsync.errors import ConfigError
from gitsync.metrics import Metrics
from gitsync.notify import LinkTemplates
from gitsync.report.gitea import GiteaProvider, gitea_headers
from gitsync.report.github import AppTokens, GitHubProvider, token_headers
from gitsync.report.gitlab import GitLabProvider, gitlab_headers
from gitsync.report.gitnotes import GitNotesProvider
from gitsync.report.http import JsonClient
from gitsync.report.notifier import Notifier
from gitsync.report.provider import Provider
from gitsync.report.pulls import GiteaPulls, GitHubPulls, GitLabPulls, Pulls
from gitsync.report.reporter import Reporter
from gitsync.source.notes import GitNotes

GITHUB_API = "https://api.github.com"
_SCP = re.compile(r"^[\w.-]+@([\w.-]+):(.+)$")


def repository_path(url: str) -> str:
    """``owner/name`` from a Git URL (https://host/owner/name.git, git@host:owner/name)."""
    match = _SCP.match(url)
    path = match.group(2) if match else urlsplit(url).path
    return path.strip("/").removesuffix(".git")


def forge_root(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return None
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def agent_identity() -> str:
    return os.environ.get("POD_NAME") or socket.gethostname()


def forge_client(config: AgentConfig, metrics: Metrics) -> tuple[JsonClient, str] | None:
    """The forge API client and the repository (owner/name; GitLab: project) from the status
    config; None for git notes, which needs no forge."""
    status: StatusConfig = config.status
    if status.provider == "gitnotes":
        return None
    repository = status.repository or repository_path(config.repository.url)
    if status.provider == "github":
        base = status.url or GITHUB_API
    else:
        root = status.url or forge_root(config.repository.url)
        if root is None:
            raise ConfigError(
                f"status.url is needed: the repository URL {config.repository.display_url} "
                f"does not say where the {status.provider} API is"
            )
        base = root

    def retried(reason: str) -> None:
        metrics.status_retries.labels(status.provider).inc()

    if status.provider == "gitea":
        return JsonClient(base, lambda: gitea_headers(status.token), on_retry=retried), repository
    if status.provider == "gitlab":
        client = JsonClient(base, lambda: gitlab_headers(status.token), on_retry=retried)
        return client, repository
    client = JsonClient(base, token_headers(status.token), on_retry=retried)
    if status.app is not None:
        app = status.app
        tokens = AppTokens(client, app.app_id, app.installation_id, app.private_key_file)
        client = JsonClient(base, tokens.headers, on_retry=retried, pool=client.pool)
    return client, repository


def build_provider(config: AgentConfig, metrics: Metrics) -> Provider:
    forge = forge_client(config, metrics)
    if forge is None:
        return GitNotesProvider(GitNotes(config.repository), agent_identity())
    client, repository = forge
    if config.status.provider == "gitea":
        return GiteaProvider(client, repository)
    if config.status.provider == "gitlab":
        return GitLabProvider(client, repository)
    return GitHubProvider(client, repository)


def build_pulls(config: AgentConfig, metrics: Metrics) -> Pulls | None:
    """Pull requests on the forge (None with git notes: previews then follow branches)."""
    forge = forge_client(config, metrics)
    if forge is None:
        return None
    client, repository = forge
    if config.status.provider == "gitea":
        return GiteaPulls(client, repository)
    if config.status.provider == "gitlab":
        return GitLabPulls(client, repository)
    app_id = config.status.app.app_id if config.status.app is not None else ""
    return GitHubPulls(client, repository, app_id=app_id)


def build_reporter(config: AgentConfig, metrics: Metrics | None = None) -> Reporter:
    metrics = metrics or Metrics()
    return Reporter(build_provider(config, metrics), metrics)


def commit_url_template(config: AgentConfig) -> str:
    """The forge's web page of a commit (which lists its statuses), as a template with
    ``{revision}``; "" where it cannot be told (git notes, a GitLab project given by ID, a
    forge reached over SSH only)."""
    status = config.status
    if status.provider == "gitnotes":
        return ""
    repository = (
        (status.repository or repository_path(config.repository.url))
        .replace("{", "{{")
        .replace("}", "}}")
    )
    if status.provider == "github":
        api = status.url or GITHUB_API
        root = "https://github.com" if api == GITHUB_API else api.removesuffix("/api/v3")
        return f"{root}/{repository}/commit/{{revision}}"
    web = status.url or forge_root(config.repository.url)
    if web is None:
        return ""
    if status.provider == "gitlab":
        return "" if repository.isdigit() else f"{web}/{repository}/-/commit/{{revision}}"
    return f"{web}/{repository}/commit/{{revision}}"


def build_notifier(config: AgentConfig, metrics: Metrics | None = None) -> Notifier | None:
    """The agent's notifier (None without ``notifications``), linking to the commit on the
    forge, the commit status's own link (``status.targetUrl``) and the status page
    (``ui.externalURL``)."""
    if not config.notifications:
        return None
    external = config.ui.external_url.replace("{", "{{").replace("}", "}}")
    links = LinkTemplates(
        commit=commit_url_template(config),
        status=config.status.target_url,
        page=f"{external}/environments/{{environment}}" if external else "",
    )
    return Notifier(config.notifications, metrics, links)
