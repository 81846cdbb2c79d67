"""The agent's configuration (``config/gitsync.yaml``) → one frozen :class:`AgentConfig`.

Parsed as strictly as the repository's manifests: unknown keys, wrong types, bad durations
and literal secrets are problems with ``file:line``. Secrets are never in this file, only
where to read them (``tokenFile``/``tokenEnv``, ``sshKeyFile``). Defaults live here, once.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any, Literal

from gitsync import kuberay
from gitsync.diff.classify import Options
from gitsync.manifests.durations import parse_duration
from gitsync.manifests.names import namespace_problem
from gitsync.manifests.quantity import parse_quantity
from gitsync.manifests.yamldoc import Checker, parse_documents
from gitsync.model import Problem
from gitsync.notify import EVENTS
from gitsync.report.status import target_url_problem
from gitsync.source.config import (
    DEFAULT_MAX_FETCH_BYTES,
    DEFAULT_MAX_TREE_BYTES,
    GitAuth,
    RepoSource,
    SshAuth,
    TokenAuth,
    VerifyConfig,
)

DEFAULT_CACHE_DIR = Path("/var/cache/gitsync")
DEFAULT_CONCURRENCY = 8  # rollout.concurrency
PROVIDERS = ("gitnotes", "gitea", "github", "gitlab")
_URL = re.compile(r"^(https?|ssh|git|file)://\S+$|^[\w.-]+@[\w.-]+:\S+$")
_LISTEN = re.compile(r"^(\[[0-9a-fA-F:]+\]|[\w.-]*):([0-9]{1,5})$")
_HTTP_BASE = re.compile(r"^https?://[^/\s?#@]+(/[^\s?#]*)?$")
_ADVERTISE = re.compile(r"^https?://(\[[0-9a-fA-F:]+\]|[\w.-]+)(:[0-9]{1,5})?/?$")


def drift_interval(schedule: str) -> float | None:
    """Seconds between drift checks when ``intervals.drift`` is a duration, else ``None``."""
    seconds = parse_duration(schedule)
    return seconds if seconds is not None and seconds > 0 else None


def _is_cron(schedule: str) -> bool:
    from gitsync.windows import crontab  # noqa: PLC0415 - APScheduler, only to validate

    if len(schedule.split()) != 5:
        return False
    try:
        crontab(schedule, datetime.UTC)
    except ValueError:
        return False
    return True


_SECRET_KEYS = {"token", "password", "privateKey", "secret"}


@dataclass(frozen=True)
class GitHubApp:
    """Authenticate to GitHub as an App installation instead of with a token."""

    app_id: str
    installation_id: str
    private_key_file: Path


@dataclass(frozen=True)
class StatusConfig:
    provider: Literal["gitnotes", "gitea", "github", "gitlab"] = "gitnotes"
    # Gitea/GitLab: the forge's root URL (default: the repository URL's scheme and host);
    # GitHub: the API base (default https://api.github.com; Enterprise: https://HOST/api/v3).
    url: str | None = None
    # owner/name (GitLab: the project path or numeric ID); default: the repository URL's path.
    repository: str | None = None
    token: TokenAuth | None = None
    app: GitHubApp | None = None
    target_url: str = ""  # template: {environment} {revision} {short} {context}


@dataclass(frozen=True)
class DriftSettings:
    """The backoff that stops a fight: a field corrected ``limit`` times within the last
    ``window`` seconds and changed again is not corrected (still reported) until the oldest
    of those corrections leaves the window."""

    limit: int = 3
    window: float = 3600.0


@dataclass(frozen=True)
class WatchConfig:
    """The agent's watch-backed cache of live state (``watch`` in the agent config): off,
    every read goes to the API server. ``silent``: seconds without an event or bookmark that
    make a watch stalled (listed again); ``timeout``: how long the API server keeps one
    watch open; ``debounce``: how long drift events are gathered before their check."""

    enabled: bool = True
    silent: float = 150.0
    timeout: float = 300.0
    debounce: float = 0.2


@dataclass(frozen=True)
class PromotionGate:
    """An environment whose ``after:`` names one this agent does not manage waits until the
    commit carries ``gitsync/<that>: success``, reading statuses this often, this long."""

    timeout: float = 1800.0
    poll_interval: float = 10.0


@dataclass(frozen=True)
class LeaderElection:
    enabled: bool = True
    namespace: str = "gitsync-system"
    lease_name: str = "gitsync"
    lease_duration: float = 15.0  # a standby takes over this long after the last renewal
    renew_deadline: float = 10.0  # a leader that could not renew for this long steps down
    retry_period: float = 2.0  # how often the leader renews and standbys try


@dataclass(frozen=True)
class Webhooks:
    """The shared secret webhooks are signed with (Gitea/GitHub HMAC, GitLab token)."""

    secret: TokenAuth | None = None
    # A standby relays webhooks only to a leader URL whose host is an IP address in one of
    # these networks (CIDR); empty: to whatever URL the Lease names.
    relay_networks: tuple[str, ...] = ()


@dataclass(frozen=True)
class UiAuth:
    """Who may read the status page and its API: a bearer token, or basic auth with a file
    holding one ``user:password`` line. Read at each request (a rotated Secret is picked up)."""

    bearer: TokenAuth | None = None
    basic_file: Path | None = None

    @property
    def configured(self) -> bool:
        return self.bearer is not None or self.basic_file is not None


@dataclass(frozen=True)
class UiSettings:
    """The read-only status page (``/``, ``/environments/…``) and its JSON API (``/api/v1``).
    Without ``auth`` it is served only when the agent listens on loopback."""

    enabled: bool = True
    auth: UiAuth = field(default_factory=UiAuth)
    show_env_values: bool = False  # env / runtime_env.env_vars values in diffs are masked
    refresh_seconds: float = 2.0  # how often the live RayService statuses are re-read at most
    # The page's address as people reach it (behind an ingress): notifications link to it.
    external_url: str = ""


@dataclass(frozen=True)
class MetricsSettings:
    """``/metrics``: on ``listen`` by default; ``listen`` here moves it to a listener of its
    own (bound separately, e.g. reachable only by Prometheus); ``bearer`` requires
    ``Authorization: Bearer <token>`` wherever it is served (read at each request)."""

    listen: str = ""
    bearer: TokenAuth | None = None


@dataclass(frozen=True)
class RolloutSettings:
    concurrency: int = DEFAULT_CONCURRENCY  # services applied (and dry-run) at once
    health_timeout: float = 600.0  # per wave, seconds
    healthy_reads: int = 3  # consecutive Healthy reads before a service counts as Healthy
    healthy_seconds: float = 5.0  # ... spanning this long: KubeRay requeues every 2 s
    poll_interval: float = 1.0  # seconds between health reads (one list per namespace)
    rollback: Literal["none", "auto"] = "none"
    force_conflicts: bool = False
    state_namespace: str = "gitsync-system"


NOTIFICATION_TYPES = ("slack", "teams", "webhook")


@dataclass(frozen=True)
class NotificationTarget:
    """Where notifications go (docs/notifications.md): a Slack incoming webhook, a Microsoft
    Teams Workflows webhook, or a generic JSON webhook, signed with ``secret`` when given.
    The URL is inline (``url``: a generic webhook's, never one carrying a token) or read
    at each delivery from a file or an environment variable (``url_from``); ``environments``
    and ``events`` filter (empty: all)."""

    name: str
    type: Literal["slack", "teams", "webhook"]
    url: str = ""
    url_from: TokenAuth | None = None
    secret: TokenAuth | None = None
    environments: tuple[str, ...] = ()
    events: tuple[str, ...] = ()
    timeout: float = 10.0  # one delivery attempt, connect to answer


@dataclass(frozen=True)
class AgentConfig:
    repository: RepoSource
    _: KW_ONLY  # the rest by name: several are of one type (drift_schedule, listen …)
    poll_seconds: float = 30.0
    # A 5-field cron expression (UTC) or a duration such as "30s" (an interval).
    drift_schedule: str = "*/5 * * * *"
    status: StatusConfig = field(default_factory=StatusConfig)
    leader_election: LeaderElection = field(default_factory=LeaderElection)
    listen: str = "0.0.0.0:8080"
    classify: Options = field(default_factory=Options)  # the operator's version and settings
    rollout: RolloutSettings = field(default_factory=RolloutSettings)
    # The environments this agent rolls out (default: every one in gitsync.yaml). The others
    # belong to other agents; an ``after:`` on one of them is a promotion gate.
    environments: tuple[str, ...] = ()
    promotion: PromotionGate = field(default_factory=PromotionGate)
    webhooks: Webhooks = field(default_factory=Webhooks)
    drift: DriftSettings = field(default_factory=DriftSettings)
    watch: WatchConfig = field(default_factory=WatchConfig)
    ui: UiSettings = field(default_factory=UiSettings)
    # Where the other replicas reach this one's webhooks while it leads ("": see advertised_url).
    advertise_url: str = ""
    # /healthz and /readyz on a listener of their own ("": only on ``listen``), which webhook
    # and page traffic cannot fill.
    probe_listen: str = ""
    # SIGTERM or Ctrl-C to exit, whatever the agent is doing (a hung API server, forge or Git
    # server included): the pod's terminationGracePeriodSeconds must exceed it.
    shutdown_grace: float = 10.0
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    # Environment → the namespaces it may deploy to (empty: whatever gitsync.yaml says). Set,
    # an environment of gitsync.yaml that is not listed, or names another namespace, is an
    # invalid revision: pushing gitsync.yaml cannot point production at a folder of one's own.
    # ``pullRequests`` (never an environment name: those are DNS labels) lists where previews
    # may run: set without it, no preview runs.
    allowed_namespaces: tuple[tuple[str, tuple[str, ...]], ...] = ()
    notifications: tuple[NotificationTarget, ...] = ()

    def namespaces_for(self, environment: str) -> tuple[str, ...] | None:
        """The namespaces ``environment`` may use; None when any is allowed."""
        if not self.allowed_namespaces:
            return None
        return dict(self.allowed_namespaces).get(environment, ())


# The allowedNamespaces key for pull-request previews' namespace (gitsync.yaml previews.namespace).
PULL_REQUESTS = "pullRequests"


def _refuse_secrets(check: Checker, raw: Any, *at: str | int) -> None:
    if isinstance(raw, dict):
        for key in raw:
            if key in _SECRET_KEYS:
                check.add(
                    f"{key!r}: secrets are never written in the config; use tokenFile (a mounted "
                    "Secret) or tokenEnv (an environment variable) instead",
                    *at,
                    key,
                )


def _token(check: Checker, raw: dict[str, Any], *at: str | int) -> TokenAuth | None:
    token_file, token_env = raw.get("tokenFile"), raw.get("tokenEnv")
    if token_file is None and token_env is None:
        return None
    if token_file is not None and token_env is not None:
        check.add("give tokenFile or tokenEnv, not both", *at, "tokenEnv")
        return None
    scheme = raw.get("scheme", "bearer")
    if scheme not in ("bearer", "basic"):
        check.add(f"scheme must be 'bearer' or 'basic', not {scheme!r}", *at, "scheme")
        return None
    return TokenAuth(
        token_file=Path(token_file) if token_file else None,
        token_env=token_env,
        scheme=scheme,
        username=str(raw.get("username", "git")),
    )


def _auth(check: Checker, raw: Any) -> GitAuth | None:
    at = ("repository", "auth")
    allowed = {"tokenFile", "tokenEnv", "scheme", "username", "sshKeyFile", "knownHostsFile"}
    _refuse_secrets(check, raw, *at)
    if not check.mapping(raw, allowed | _SECRET_KEYS, set(), *at):
        return None
    if "sshKeyFile" in raw or "knownHostsFile" in raw:
        key, known = raw.get("sshKeyFile"), raw.get("knownHostsFile")
        if not key or not known:
            check.add(
                "SSH auth needs both sshKeyFile and knownHostsFile (host keys are always checked)",
                *at,
            )
            return None
        return SshAuth(Path(key), Path(known))
    return _token(check, raw, *at)


def _verify(check: Checker, raw: Any) -> VerifyConfig | None:
    at = ("repository", "verify")
    allowed = {"method", "keysFile", "pullRequests"}
    if not check.mapping(raw, allowed, {"method", "keysFile"}, *at):
        return None
    method = raw.get("method")
    if method not in ("gpg", "ssh"):
        check.add(f"verify.method must be 'gpg' or 'ssh', not {method!r}", *at, "method")
        return None
    pull_requests = raw.get("pullRequests", False)
    if not isinstance(pull_requests, bool):
        check.add(
            f"verify.pullRequests must be true or false, not {pull_requests!r}",
            *at,
            "pullRequests",
        )
        return None
    keys = check.string(raw.get("keysFile"), *at, "keysFile")
    return VerifyConfig(method, Path(keys), pull_requests) if keys else None


def _repository(check: Checker, raw: Any, cache_dir: Path) -> RepoSource | None:
    at = ("repository",)
    allowed = {
        "url", "branch", "depth", "timeout", "auth", "verify", "maxTreeSize", "maxFetchSize"
    }  # fmt: skip
    if not check.mapping(raw, allowed, {"url"}, *at):
        return None
    url = check.string(raw.get("url"), *at, "url")
    if url and _carries_credentials(url):
        check.add("the URL carries credentials; put the token in tokenFile or tokenEnv", *at, "url")
        url = None
    elif url and not _URL.match(url):
        check.add(
            f"url {url!r} is not a Git URL (https://, ssh://, git://, file:// or user@host:path)",
            *at,
            "url",
        )
        url = None
    branch = check.string(raw.get("branch", "main"), *at, "branch")
    depth = raw.get("depth", 1)
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        check.add(f"depth must be a whole number ≥ 1, not {depth!r}", *at, "depth")
    timeout = parse_duration(raw.get("timeout", "60s"))
    if timeout is None:
        check.add(
            f"timeout must be a duration such as '60s', not {raw.get('timeout')!r}", *at, "timeout"
        )
    auth = _auth(check, raw["auth"]) if "auth" in raw else None
    verify = _verify(check, raw["verify"]) if "verify" in raw else None
    max_tree = parse_quantity(raw.get("maxTreeSize", DEFAULT_MAX_TREE_BYTES))
    if max_tree is None or max_tree < 1 or max_tree.denominator != 1:
        check.add(
            f"maxTreeSize must be a size in bytes such as '256Mi', not {raw.get('maxTreeSize')!r}",
            *at,
            "maxTreeSize",
        )
    max_fetch = parse_quantity(raw.get("maxFetchSize", DEFAULT_MAX_FETCH_BYTES))
    if max_fetch is None or max_fetch < 1 or max_fetch.denominator != 1:
        check.add(
            f"maxFetchSize must be a size in bytes such as '1Gi', not {raw.get('maxFetchSize')!r}",
            *at,
            "maxFetchSize",
        )
    if (
        url is None or branch is None or timeout is None or max_tree is None
        or max_fetch is None or check.problems
    ):  # fmt: skip
        return None
    try:
        return RepoSource(
            url, branch, cache_dir, int(depth), auth, verify, timeout, int(max_tree),
            int(max_fetch),
        )  # fmt: skip
    except ValueError as exc:  # e.g. a branch git would read as an option or a range
        check.add(str(exc), *at, "branch")
        return None


def _carries_credentials(url: str) -> bool:
    """An HTTP URL with any userinfo (a token as user name counts), or a password anywhere."""
    scheme, sep, rest = url.partition("://")
    userinfo = rest.split("/", 1)[0].rpartition("@")[0] if sep else ""
    return bool(userinfo) and (scheme in ("http", "https") or ":" in userinfo)


def _status(check: Checker, raw: Any) -> StatusConfig:
    at = ("status",)
    _refuse_secrets(check, raw, *at)
    allowed = {"provider", "url", "repository", "targetUrl", "app"}
    allowed |= {"tokenFile", "tokenEnv", "scheme", "username"} | _SECRET_KEYS
    if not check.mapping(raw, allowed, set(), *at):
        return StatusConfig()
    provider = raw.get("provider", "gitnotes")
    if provider not in PROVIDERS:
        check.add(
            f"status.provider must be one of {', '.join(PROVIDERS)}, not {provider!r}",
            *at,
            "provider",
        )
        return StatusConfig()
    url = raw.get("url")
    if url is not None and not (isinstance(url, str) and re.match(r"^https?://[^/\s]+", url)):
        check.add(f"status.url must be an http(s) URL, not {url!r}", *at, "url")
    repository = raw.get("repository")
    if repository is not None and not (isinstance(repository, str | int) and str(repository)):
        check.add("status.repository must be owner/name (GitLab: a path or ID)", *at, "repository")
    target_url = raw.get("targetUrl", "")
    if not isinstance(target_url, str):
        check.add("status.targetUrl must be a string", *at, "targetUrl")
        target_url = ""
    elif problem := target_url_problem(target_url):
        check.add(problem, *at, "targetUrl")
    token = _token(check, raw, *at)
    app = _github_app(check, raw["app"], provider) if "app" in raw else None
    if provider != "gitnotes" and token is None and app is None:
        check.add(
            f"status provider {provider!r} needs tokenFile or tokenEnv"
            + (" (or app)" if provider == "github" else ""),
            *at,
        )
    if token is not None and app is not None:
        check.add("give a token or a GitHub App, not both", *at, "app")
    return StatusConfig(
        provider,
        url.rstrip("/") if isinstance(url, str) else None,
        str(repository) if repository is not None else None,
        token,
        app,
        target_url,
    )


def _github_app(check: Checker, raw: Any, provider: str) -> GitHubApp | None:
    at = ("status", "app")
    keys = {"appId", "installationId", "privateKeyFile"}
    if not check.mapping(raw, keys, keys, *at):
        return None
    if provider != "github":
        check.add("status.app is for the github provider only", *at)
        return None
    return GitHubApp(
        str(raw["appId"]), str(raw["installationId"]), Path(str(raw["privateKeyFile"]))
    )


def _election(check: Checker, raw: Any) -> LeaderElection:
    at = ("leaderElection",)
    keys = {"enabled", "namespace", "leaseName", "leaseDuration", "renewDeadline", "retryPeriod"}
    if not check.mapping(raw, keys, set(), *at):
        return LeaderElection()
    default = LeaderElection()
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        check.add("leaderElection.enabled must be true or false", *at, "enabled")
    times = []
    for key, fallback in (
        ("leaseDuration", default.lease_duration),
        ("renewDeadline", default.renew_deadline),
        ("retryPeriod", default.retry_period),
    ):
        seconds = parse_duration(raw.get(key, fallback))
        if seconds is None:
            check.add(f"leaderElection.{key} must be a duration such as '15s'", *at, key)
        times.append(seconds or fallback)
    lease, renew, retry = times
    if not retry < renew < lease:
        check.add(
            "leaderElection needs retryPeriod < renewDeadline < leaseDuration (so a leader "
            "steps down before its lease can expire)",
            *at,
        )
    return LeaderElection(
        bool(enabled),
        str(raw.get("namespace", default.namespace)),
        str(raw.get("leaseName", default.lease_name)),
        lease,
        renew,
        retry,
    )


def _drift(check: Checker, raw: Any) -> DriftSettings:
    at = ("drift",)
    if not check.mapping(raw, {"correctionLimit", "correctionWindow"}, set(), *at):
        return DriftSettings()
    limit = raw.get("correctionLimit", DriftSettings.limit)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        check.add(f"drift.correctionLimit must be a whole number ≥ 1, not {limit!r}", *at)
        limit = DriftSettings.limit
    window = parse_duration(raw.get("correctionWindow", "1h"))
    if window is None:
        check.add("drift.correctionWindow must be a duration such as '1h'", *at, "correctionWindow")
        window = DriftSettings.window
    return DriftSettings(limit, window)


def _watch(check: Checker, raw: Any) -> WatchConfig:
    at = ("watch",)
    keys = {"enabled", "silentTimeout", "watchTimeout", "driftDebounce"}
    if not check.mapping(raw, keys, set(), *at):
        return WatchConfig()
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        check.add(f"watch.enabled must be true or false, not {enabled!r}", *at, "enabled")
        enabled = True
    found = []
    for key, default in (
        ("silentTimeout", WatchConfig.silent),
        ("watchTimeout", WatchConfig.timeout),
        ("driftDebounce", WatchConfig.debounce),
    ):
        value = parse_duration(raw[key]) if key in raw else default
        if value is None:
            check.add(f"watch.{key} must be a duration such as '90s'", *at, key)
            value = default
        found.append(value)
    return WatchConfig(enabled, *found)


def _webhooks(check: Checker, raw: Any) -> Webhooks:
    at = ("webhooks",)
    _refuse_secrets(check, raw, *at)
    keys = {"secretFile", "secretEnv", "relayNetworks"}
    if not check.mapping(raw, keys | _SECRET_KEYS, set(), *at):
        return Webhooks()
    networks = raw.get("relayNetworks", [])
    if not isinstance(networks, list) or not all(_cidr(n) for n in networks):
        check.add(
            "webhooks.relayNetworks must be a list of networks such as '10.244.0.0/16', "
            f"not {networks!r}",
            *at,
            "relayNetworks",
        )
        networks = []
    relay_networks = tuple(str(n) for n in networks)
    if "secretFile" in raw and "secretEnv" in raw:
        check.add("give webhooks.secretFile or webhooks.secretEnv, not both", *at, "secretEnv")
        return Webhooks()
    if "secretFile" in raw:
        return Webhooks(TokenAuth(token_file=Path(str(raw["secretFile"]))), relay_networks)
    if "secretEnv" in raw:
        return Webhooks(TokenAuth(token_env=str(raw["secretEnv"])), relay_networks)
    return Webhooks(None, relay_networks)


def _cidr(value: object) -> bool:
    try:
        ipaddress.ip_network(str(value), strict=False)
    except ValueError:
        return False
    return isinstance(value, str)


def _ui(check: Checker, raw: Any) -> UiSettings:
    at = ("ui",)
    allowed = {"enabled", "auth", "showEnvValues", "refreshInterval", "externalURL"}
    if not check.mapping(raw, allowed, set(), *at):
        return UiSettings()
    external = raw.get("externalURL", "")
    if external and not (isinstance(external, str) and _HTTP_BASE.match(external)):
        check.add(
            "ui.externalURL must be the page's http(s) address such as "
            f"'https://gitsync.example.com', not {external!r}",
            *at,
            "externalURL",
        )
        external = ""
    enabled, show = raw.get("enabled", True), raw.get("showEnvValues", False)
    for key, value in (("enabled", enabled), ("showEnvValues", show)):
        if not isinstance(value, bool):
            check.add(f"ui.{key} must be true or false", *at, key)
    refresh = parse_duration(raw.get("refreshInterval", "2s"))
    if refresh is None:
        check.add("ui.refreshInterval must be a duration such as '2s'", *at, "refreshInterval")
    auth = UiAuth()
    raw_auth = raw.get("auth", {})
    _refuse_secrets(check, raw_auth, *at, "auth")
    keys = {"bearerTokenFile", "bearerTokenEnv", "basicAuthFile"}
    if check.mapping(raw_auth, keys | _SECRET_KEYS, set(), *at, "auth"):
        given = sorted(k for k in keys if k in raw_auth)
        if len(given) > 1:
            check.add(f"give one of ui.auth.{', '.join(sorted(keys))}", *at, "auth", given[1])
        elif given == ["bearerTokenFile"]:
            auth = UiAuth(bearer=TokenAuth(token_file=Path(str(raw_auth["bearerTokenFile"]))))
        elif given == ["bearerTokenEnv"]:
            auth = UiAuth(bearer=TokenAuth(token_env=str(raw_auth["bearerTokenEnv"])))
        elif given == ["basicAuthFile"]:
            auth = UiAuth(basic_file=Path(str(raw_auth["basicAuthFile"])))
    return UiSettings(
        bool(enabled),
        auth,
        bool(show),
        refresh or UiSettings.refresh_seconds,
        str(external).rstrip("/"),
    )


def _metrics(check: Checker, raw: Any, taken: set[str]) -> MetricsSettings:
    at = ("metrics",)
    if not check.mapping(raw, {"listen", "auth"}, set(), *at):
        return MetricsSettings()
    listen = str(raw.get("listen", ""))
    found = _LISTEN.match(listen)
    if listen and (not found or not 0 < int(found.group(2)) < 65536):
        check.add(
            f"metrics.listen must be host:port such as '0.0.0.0:9090', not {listen!r}",
            *at,
            "listen",
        )
    elif listen and listen in taken:
        check.add("metrics.listen must differ from listen and probeListen", *at, "listen")
    bearer = None
    raw_auth = raw.get("auth", {})
    _refuse_secrets(check, raw_auth, *at, "auth")
    keys = {"bearerTokenFile", "bearerTokenEnv"}
    if check.mapping(raw_auth, keys | _SECRET_KEYS, set(), *at, "auth"):
        given = sorted(k for k in keys if k in raw_auth)
        if len(given) > 1:
            check.add("give one of metrics.auth.bearerTokenFile, bearerTokenEnv", *at, "auth")
        elif given == ["bearerTokenFile"]:
            bearer = TokenAuth(token_file=Path(str(raw_auth["bearerTokenFile"])))
        elif given == ["bearerTokenEnv"]:
            bearer = TokenAuth(token_env=str(raw_auth["bearerTokenEnv"]))
    return MetricsSettings(listen, bearer)


def _notifications(check: Checker, raw: Any) -> tuple[NotificationTarget, ...]:
    if not isinstance(raw, list):
        check.add(
            "notifications must be a list of targets (type, urlFrom or url, …)", "notifications"
        )
        return ()
    targets = [_notification(check, item, index) for index, item in enumerate(raw)]
    names: set[str] = set()
    for index, target in enumerate(targets):
        if target is None:
            continue
        if target.name in names:
            check.add(
                f"two notification targets are named {target.name!r}: give each a distinct "
                "name (it labels gitsync_notifications_total)",
                "notifications",
                index,
            )
        names.add(target.name)
    return tuple(t for t in targets if t is not None)


def _notification(check: Checker, raw: Any, index: int) -> NotificationTarget | None:
    at: tuple[str | int, ...] = ("notifications", index)
    keys = {"name", "type", "url", "urlFrom", "secret", "environments", "events", "timeout"}
    if not check.mapping(raw, keys, {"type"}, *at):
        return None
    where = f"notifications[{index}]"
    kind = raw.get("type")
    if kind not in NOTIFICATION_TYPES:
        check.add(f"{where}.type must be one of {', '.join(NOTIFICATION_TYPES)}, not {kind!r}",
                  *at, "type")  # fmt: skip
        return None
    name = raw.get("name", kind)
    if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9][\w.-]{0,62}$", name):
        check.add(f"{where}.name must be a short name (letters, digits, . _ -)", *at, "name")
    url, url_from = _notification_url(check, raw, kind, at)
    secret = None
    if "secret" in raw:
        secret = _secret_source(check, raw["secret"], f"{where}.secret", (*at, "secret"))
        if kind != "webhook":
            check.add(f"{where}.secret signs generic webhooks only (type: webhook)", *at, "secret")
    environments, events = raw.get("environments", []), raw.get("events", [])
    if not isinstance(environments, list) or not all(
        isinstance(e, str) and e for e in environments
    ):
        check.add(f"{where}.environments must be a list of environment names", *at, "environments")
        environments = []
    if not isinstance(events, list) or not all(e in EVENTS for e in events):
        wrong = [e for e in events if e not in EVENTS] if isinstance(events, list) else events
        check.add(
            f"{where}.events: unknown event {wrong[0] if isinstance(wrong, list) else wrong!r}; "
            f"the events are {', '.join(EVENTS)}",
            *at,
            "events",
        )
        events = []
    timeout = parse_duration(raw.get("timeout", "10s"))
    if timeout is None or timeout > 300:
        check.add(f"{where}.timeout must be a duration up to 5m such as '10s'", *at, "timeout")
        timeout = NotificationTarget.timeout
    if url is None and url_from is None:
        return None
    return NotificationTarget(
        str(name), kind, url or "", url_from, secret,
        tuple(environments), tuple(str(e) for e in events), timeout,
    )  # fmt: skip


def _notification_url(
    check: Checker, raw: Mapping[str, Any], kind: str, at: tuple[str | int, ...]
) -> tuple[str | None, TokenAuth | None]:
    """The target's inline ``url`` or ``urlFrom`` source. A Slack or Teams webhook URL is a
    secret (whoever holds it posts to the channel), as is a URL with credentials or a query
    string: those only through ``urlFrom``. The URL itself is never echoed in a problem."""
    where = f"notifications[{at[-1]}]"
    if ("url" in raw) == ("urlFrom" in raw):
        check.add(f"{where} needs url or urlFrom (one of the two)", *at)
        return None, None
    if "urlFrom" in raw:
        return None, _secret_source(check, raw["urlFrom"], f"{where}.urlFrom", (*at, "urlFrom"))
    url = raw["url"]
    if kind != "webhook":
        check.add(
            f"{where}.url: a {kind} webhook URL is a secret (whoever holds it can post to the "
            "channel); give it with urlFrom: {secretFile: …} or {secretEnv: …} instead",
            *at,
            "url",
        )
        return None, None
    if not isinstance(url, str) or not re.match(r"^https?://[^/\s]+", url):
        check.add(f"{where}.url must be an http(s) URL", *at, "url")
        return None, None
    if _carries_credentials(url) or "?" in url or "@" in url.partition("://")[2].split("/")[0]:
        check.add(
            f"{where}.url carries credentials (user info or a query string); give it with "
            "urlFrom: {secretFile: …} or {secretEnv: …} instead",
            *at,
            "url",
        )
        return None, None
    return url, None


def _secret_source(
    check: Checker, raw: Any, where: str, at: tuple[str | int, ...]
) -> TokenAuth | None:
    """``{secretFile: PATH}`` or ``{secretEnv: NAME}``; a literal value is refused."""
    if isinstance(raw, str):
        check.add(
            f"{where}: secrets are never written in the config; use {{secretFile: PATH}} (a "
            "mounted Secret) or {secretEnv: NAME} (an environment variable) instead",
            *at,
        )
        return None
    if not check.mapping(raw, {"secretFile", "secretEnv"}, set(), *at):
        return None
    given = [k for k in ("secretFile", "secretEnv") if k in raw]
    value = raw.get(given[0]) if len(given) == 1 else None
    if not isinstance(value, str) or not value:
        check.add(f"{where} needs secretFile or secretEnv (one of the two, non-empty)", *at)
        return None
    if given == ["secretFile"]:
        return TokenAuth(token_file=Path(value))
    return TokenAuth(token_env=value)


def _promotion(check: Checker, raw: Any) -> PromotionGate:
    at = ("promotion",)
    if not check.mapping(raw, {"timeout", "pollInterval"}, set(), *at):
        return PromotionGate()
    default = PromotionGate()
    values = []
    for key, fallback in (("timeout", default.timeout), ("pollInterval", default.poll_interval)):
        seconds = parse_duration(raw.get(key, fallback))
        if seconds is None:
            check.add(
                f"promotion.{key} must be a duration such as '30m', not {raw.get(key)!r}", *at, key
            )
        values.append(seconds or fallback)
    return PromotionGate(values[0], values[1])


def _environments(check: Checker, raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(n, str) and n for n in raw):
        check.add("environments must be a list of environment names", "environments")
        return ()
    if len(set(raw)) != len(raw):
        check.add("environments lists a name twice", "environments")
    return tuple(raw)


_AGENT_KEYS = {
    "repository",
    "watch",
    "cacheDir",
    "intervals",
    "status",
    "leaderElection",
    "listen",
    "kuberay",
    "rollout",
    "environments",
    "promotion",
    "webhooks",
    "drift",
    "ui",
    "advertiseURL",
    "probeListen",
    "shutdownGracePeriod",
    "metrics",
    "allowedNamespaces",
    "notifications",
}


def load_agent_config(
    text: str, file: str = "config/gitsync.yaml"
) -> tuple[AgentConfig | None, list[Problem]]:
    documents, problems = parse_documents(text, file)
    if problems:
        return None, problems
    if len(documents) != 1:
        return None, [Problem(file, 1, "the agent config must be exactly one YAML document")]
    check = Checker(documents[0])
    data = documents[0].data
    if not check.mapping(data, _AGENT_KEYS, {"repository"}):
        return None, check.problems
    cache_dir = Path(data.get("cacheDir", DEFAULT_CACHE_DIR))
    repository = _repository(check, data.get("repository"), cache_dir)
    poll, drift = _intervals(check, data.get("intervals", {}))
    status = _status(check, data.get("status", {}))
    election = _election(check, data.get("leaderElection", {}))
    listen = _listen(check, data)
    classify = _kuberay(check, data.get("kuberay", {}))
    rollout = _rollout(check, data.get("rollout", {}))
    environments = _environments(check, data["environments"]) if "environments" in data else ()
    promotion = _promotion(check, data.get("promotion", {}))
    webhooks = _webhooks(check, data.get("webhooks", {}))
    drift_settings = _drift(check, data.get("drift", {}))
    watch = _watch(check, data.get("watch", {}))
    ui = _ui(check, data.get("ui", {}))
    probe_listen = _probe_listen(check, data, listen)
    metrics = _metrics(check, data.get("metrics", {}), {listen, probe_listen})
    advertise = _advertise(check, data)
    grace = _grace(check, data)
    allowed_namespaces = (
        _allowed_namespaces(check, data["allowedNamespaces"]) if "allowedNamespaces" in data else ()
    )
    notifications = _notifications(check, data.get("notifications", []))
    if check.problems or repository is None or grace is None:
        return None, sorted(check.problems, key=lambda p: p.line or 0)
    return AgentConfig(
        repository=repository,
        poll_seconds=poll,
        drift_schedule=drift,
        status=status,
        leader_election=election,
        listen=listen,
        classify=classify,
        rollout=rollout,
        environments=environments,
        promotion=promotion,
        webhooks=webhooks,
        drift=drift_settings,
        watch=watch,
        ui=ui,
        advertise_url=advertise.rstrip("/"),
        probe_listen=probe_listen,
        shutdown_grace=grace,
        metrics=metrics,
        allowed_namespaces=allowed_namespaces,
        notifications=notifications,
    ), []


def _intervals(check: Checker, intervals: Any) -> tuple[float, str]:
    """``intervals``: the poll's seconds and the drift schedule (a cron expression or a
    duration)."""
    poll, drift = 30.0, "*/5 * * * *"
    if not check.mapping(intervals, {"poll", "drift"}, set(), "intervals"):
        return poll, drift
    parsed = parse_duration(intervals.get("poll", "30s"))
    if parsed is None:
        check.add(
            f"intervals.poll must be a duration such as '30s', not {intervals.get('poll')!r}",
            "intervals",
            "poll",
        )
    else:
        poll = parsed
    drift = str(intervals.get("drift", drift))
    if drift_interval(drift) is None and not _is_cron(drift):
        check.add(
            "intervals.drift must be a 5-field cron expression such as '*/5 * * * *' "
            f"or a duration such as '5m', not {drift!r}",
            "intervals",
            "drift",
        )
    return poll, drift


def _listen(check: Checker, data: Mapping[str, Any]) -> str:
    listen = str(data.get("listen", "0.0.0.0:8080"))
    match = _LISTEN.match(listen)
    if not match or not 0 < int(match.group(2)) < 65536:
        check.add(f"listen must be host:port such as '0.0.0.0:8080', not {listen!r}", "listen")
    return listen


def _probe_listen(check: Checker, data: Mapping[str, Any], listen: str) -> str:
    probe_listen = str(data.get("probeListen", ""))
    probe = _LISTEN.match(probe_listen)
    if probe_listen and (not probe or not 0 < int(probe.group(2)) < 65536):
        check.add(
            f"probeListen must be host:port such as '0.0.0.0:8081', not {probe_listen!r}",
            "probeListen",
        )
    elif probe_listen == listen:
        check.add("probeListen must differ from listen", "probeListen")
    return probe_listen


def _advertise(check: Checker, data: Mapping[str, Any]) -> str:
    advertise = str(data.get("advertiseURL", ""))
    if advertise and not _ADVERTISE.match(advertise):
        check.add(
            f"advertiseURL must be http(s)://host:port such as 'http://10.0.0.7:8080', "
            f"not {advertise!r}",
            "advertiseURL",
        )
    return advertise


def _grace(check: Checker, data: Mapping[str, Any]) -> float | None:
    grace = parse_duration(data.get("shutdownGracePeriod", "10s"))
    if grace is None or not 1.0 <= grace <= 600.0:
        check.add(
            "shutdownGracePeriod must be a duration from 1s to 10m such as '10s', "
            f"not {data.get('shutdownGracePeriod')!r}",
            "shutdownGracePeriod",
        )
    return grace


def _allowed_namespaces(check: Checker, raw: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
    at = ("allowedNamespaces",)
    if not isinstance(raw, dict) or not raw:
        check.add(
            "allowedNamespaces must map each environment to its namespaces, such as "
            "{production: [ray-production]}",
            *at,
        )
        return ()
    found = []
    for name, value in raw.items():
        namespaces = [value] if isinstance(value, str) else value
        if not isinstance(name, str) or not isinstance(namespaces, list) or not namespaces:
            check.add(
                f"allowedNamespaces.{name} must be a namespace or a non-empty list of them",
                *at,
                str(name),
            )
            continue
        for index, namespace in enumerate(namespaces):
            if msg := namespace_problem(namespace):
                check.add(msg, *at, name, *(() if isinstance(value, str) else (index,)))
        found.append((name, tuple(str(n) for n in namespaces)))
    return tuple(found)


def _rollout(check: Checker, raw: Any) -> RolloutSettings:
    at = ("rollout",)
    allowed = {
        "concurrency",
        "healthTimeout",
        "healthyReads",
        "healthySeconds",
        "pollInterval",
        "rollback",
        "forceConflicts",
        "stateNamespace",
    }
    if not check.mapping(raw, allowed, set(), *at):
        return RolloutSettings()
    default = RolloutSettings()
    before = len(check.problems)
    counts: dict[str, int] = {}
    for key, attr in (("concurrency", "concurrency"), ("healthyReads", "healthy_reads")):
        value = raw.get(key, getattr(default, attr))
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            check.add(f"rollout.{key} must be a whole number ≥ 1, not {value!r}", *at, key)
        counts[attr] = value
    durations: dict[str, float] = {}
    for key, attr in (
        ("healthTimeout", "health_timeout"),
        ("pollInterval", "poll_interval"),
        ("healthySeconds", "healthy_seconds"),
    ):
        seconds = parse_duration(raw.get(key, getattr(default, attr)))
        if seconds is None:
            check.add(
                f"rollout.{key} must be a duration such as '10m', not {raw.get(key)!r}", *at, key
            )
        durations[attr] = seconds or 0.0
    rollback = raw.get("rollback", "none")
    if rollback not in ("none", "auto"):
        check.add(f"rollout.rollback must be 'none' or 'auto', not {rollback!r}", *at, "rollback")
    force = raw.get("forceConflicts", False)
    if not isinstance(force, bool):
        check.add("rollout.forceConflicts must be true or false", *at, "forceConflicts")
    namespace = raw.get("stateNamespace", default.state_namespace)
    if not isinstance(namespace, str) or not namespace:
        check.add("rollout.stateNamespace must be a namespace name", *at, "stateNamespace")
    if len(check.problems) > before:
        return default
    return RolloutSettings(
        concurrency=counts["concurrency"],
        health_timeout=durations["health_timeout"],
        healthy_reads=counts["healthy_reads"],
        healthy_seconds=durations["healthy_seconds"],
        poll_interval=durations["poll_interval"],
        rollback=rollback,
        force_conflicts=force,
        state_namespace=namespace,
    )


def _kuberay(check: Checker, raw: Any) -> Options:
    """The operator gitsync predicts for: ``version`` picks KubeRay's rules and
    ``zeroDowntime: false`` says the operator runs with ENABLE_ZERO_DOWNTIME=false."""
    if not check.mapping(raw, {"version", "zeroDowntime"}, set(), "kuberay"):
        return Options()
    version = str(raw.get("version", "v1.5"))
    try:
        semantics = kuberay.semantics_for(version)
    except ValueError as exc:
        check.add(str(exc), "kuberay", "version")
        return Options()
    zero_downtime = raw.get("zeroDowntime", True)
    if not isinstance(zero_downtime, bool):
        check.add("kuberay.zeroDowntime must be true or false", "kuberay", "zeroDowntime")
    return Options(semantics, bool(zero_downtime))


def advertised_url(configured: str, listen: str, pod_ip: str, hostname: str) -> str:
    """The base URL this replica publishes on the Lease while it leads: ``advertiseURL`` if
    set, else ``http://$POD_IP:<port>`` (deploy/ sets POD_IP from the downward API), else the
    listen address — the host name when it listens on every address."""
    if configured:
        return configured
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if pod_ip:
        host = pod_ip
    elif host in ("", "0.0.0.0", "::"):  # noqa: S104 - comparing, not binding
        host = hostname
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
