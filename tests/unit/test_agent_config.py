"""config/gitsync.yaml: defaults, strictness, and never a secret in the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from gitsync.checkout import read_tree
from gitsync.cli import main
from gitsync.config import advertised_url, drift_interval, load_agent_config, parse_duration
from gitsync.errors import InvalidRevision
from gitsync.planning import confined, environment_manifests
from gitsync.source.config import SshAuth, TokenAuth

SHIPPED = Path(__file__).resolve().parents[2] / "config" / "gitsync.yaml"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plain-layout"
MINIMAL = "repository:\n  url: https://git.example.com/ray.git\n"


def test_shipped_config_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    config, problems = load_agent_config(SHIPPED.read_text())
    assert problems == []
    assert config is not None
    assert isinstance(config.repository.auth, TokenAuth)
    assert main(["validate", "--config", str(SHIPPED)]) == 0


def test_defaults_live_in_one_place() -> None:
    config, problems = load_agent_config(MINIMAL)
    assert problems == []
    assert config is not None
    assert (config.repository.branch, config.repository.depth, config.poll_seconds) == (
        "main",
        1,
        30.0,
    )
    assert config.status.provider == "gitnotes"
    assert config.leader_election.enabled is True
    assert (config.classify.semantics.version, config.classify.operator_zero_downtime) == (
        "v1.5",
        True,
    )


def test_max_tree_size_is_a_byte_quantity_with_a_default() -> None:
    config, problems = load_agent_config(MINIMAL)
    assert config is not None
    assert config.repository.max_tree_bytes == 256 * 2**20
    config, problems = load_agent_config(MINIMAL + "  maxTreeSize: 1Gi\n")
    assert problems == []
    assert config is not None
    assert config.repository.max_tree_bytes == 2**30


def test_relay_networks() -> None:
    config, problems = load_agent_config(
        MINIMAL + "webhooks:\n  secretEnv: S\n  relayNetworks: [10.244.0.0/16, 'fd00::/8']\n"
    )
    assert problems == []
    assert config is not None
    assert config.webhooks.relay_networks == ("10.244.0.0/16", "fd00::/8")


def test_ssh_user_in_url_is_not_a_credential() -> None:
    config, problems = load_agent_config(MINIMAL.replace("https://", "ssh://git@"))
    assert problems == []
    assert config is not None


def test_ssh_auth_and_verification() -> None:
    text = MINIMAL.replace(
        "https://git.example.com/ray.git", "git@git.example.com:platform/ray.git"
    ) + (
        "  auth:\n    sshKeyFile: /keys/id\n    knownHostsFile: /keys/known_hosts\n"
        "  verify:\n    method: ssh\n    keysFile: /keys/allowed_signers\n"
    )
    config, problems = load_agent_config(text)
    assert problems == []
    assert config is not None
    assert config.repository.auth == SshAuth(Path("/keys/id"), Path("/keys/known_hosts"))
    assert config.repository.verify is not None
    assert config.repository.verify.method == "ssh"
    assert config.repository.verify.pull_requests is False  # the documented default
    config, problems = load_agent_config(text + "    pullRequests: true\n")
    assert problems == []
    assert config is not None
    assert config.repository.verify is not None
    assert config.repository.verify.pull_requests is True
    config, problems = load_agent_config(text + "    pullRequests: yes please\n")
    assert config is None
    assert "verify.pullRequests must be true or false" in problems[0].message


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("repo:\n  url: x\n", 1, "unknown key 'repo' in the file"),
        (
            MINIMAL + "  auth:\n    token: ghp_abc123\n",
            4,
            "secrets are never written in the config",
        ),
        (
            MINIMAL.replace("https://git.example.com", "https://bob:hunter2@git.example.com"),
            2,
            "the URL carries credentials",
        ),
        (MINIMAL.replace("https://git.example.com/ray.git", "not a url"), 2, "is not a Git URL"),
        (
            MINIMAL.replace("https://git.example.com", "https://ghp_abc123@git.example.com"),
            2,
            "the URL carries credentials",
        ),
        (
            MINIMAL.replace("https://git.example.com", "ssh://git:ghp_abc123@git.example.com"),
            2,
            "the URL carries credentials",
        ),
        (MINIMAL + "  branch: -x\n", 3, "branch"),
        (MINIMAL + "intervals:\n  poll: soon\n", 4, "intervals.poll must be a duration"),
        (MINIMAL + "intervals:\n  drift: hourly\n", 4, "5-field cron expression"),
        (MINIMAL + "intervals:\n  drift: '61 * * * *'\n", 4, "5-field cron expression"),
        (MINIMAL + "intervals:\n  drift: 0s\n", 4, "or a duration such as '5m'"),
        (MINIMAL + "  depth: 0\n", 3, "depth must be a whole number"),
        (MINIMAL + "status:\n  provider: bitbucket\n", 4, "status.provider must be one of"),
        (MINIMAL + "status:\n  provider: gitea\n", 3, "needs tokenFile or tokenEnv"),
        (MINIMAL + "status:\n  provider: gitea\n  token: ghp_abc123\n", 5, "secrets are never"),
        (
            MINIMAL + "status:\n  provider: gitlab\n  tokenEnv: T\n  url: gitlab.example.com\n",
            6,
            "status.url must be an http(s) URL",
        ),
        (
            MINIMAL + "status:\n  targetUrl: 'https://d/{env}'\n",
            4,
            "uses {env}; the fields are {environment}",
        ),
        (
            MINIMAL
            + "status:\n  provider: gitea\n  tokenEnv: T\n  app:\n    appId: 1\n"
            + "    installationId: 2\n    privateKeyFile: /k\n",
            6,
            "status.app is for the github provider only",
        ),
        (MINIMAL + "environments: staging\n", 3, "environments must be a list"),
        (MINIMAL + "promotion:\n  timeout: never\n", 4, "promotion.timeout must be a duration"),
        (MINIMAL + "  auth:\n    sshKeyFile: /k\n", 3, "needs both sshKeyFile and knownHostsFile"),
        (
            MINIMAL + "  verify:\n    method: pgp\n    keysFile: /k\n",
            4,
            "verify.method must be 'gpg' or 'ssh'",
        ),
        (MINIMAL + "  maxTreeSize: big\n", 3, "maxTreeSize must be a size in bytes"),
        (MINIMAL + "  maxTreeSize: 0\n", 3, "maxTreeSize must be a size in bytes"),
        (
            MINIMAL + "webhooks:\n  relayNetworks: [10.0.0.0/33]\n",
            4,
            "webhooks.relayNetworks must be a list of networks",
        ),
        (MINIMAL + "listen: 8080\n", 3, "listen must be host:port"),
        (MINIMAL + "leaderElection:\n  enabled: sometimes\n", 4, "must be true or false"),
        (MINIMAL + "kuberay:\n  version: v0.9\n", 4, "unknown KubeRay version 'v0.9'"),
        (
            MINIMAL + "kuberay:\n  zeroDowntime: maybe\n",
            4,
            "kuberay.zeroDowntime must be true or false",
        ),
        (MINIMAL + "notifications: {type: slack}\n", 3, "notifications must be a list"),
        (
            MINIMAL + "notifications:\n  - type: sms\n",
            4,
            "notifications[0].type must be one of slack, teams, webhook",
        ),
        (
            MINIMAL + "notifications:\n  - type: webhook\n",
            4,
            "notifications[0] needs url or urlFrom",
        ),
        (
            MINIMAL
            + "notifications:\n  - type: slack\n    url: https://hooks.slack.com/services/T0/B0/ghp_abc123\n",
            5,
            "notifications[0].url: a slack webhook URL is a secret",
        ),
        (
            MINIMAL
            + "notifications:\n  - type: webhook\n    url: https://h.example.com/in?key=ghp_abc123\n",
            5,
            "notifications[0].url carries credentials",
        ),
        (
            MINIMAL
            + "notifications:\n  - type: webhook\n    url: https://bob:hunter2@h.example.com/in\n",
            5,
            "notifications[0].url carries credentials",
        ),
        (
            MINIMAL
            + "notifications:\n  - type: webhook\n    url: https://h.example.com/in\n    secret: ghp_abc123\n",
            6,
            "notifications[0].secret: secrets are never written in the config",
        ),
        (
            MINIMAL
            + "notifications:\n  - type: teams\n    urlFrom: {secretFile: /u}\n    secret: {secretEnv: S}\n",
            6,
            "notifications[0].secret signs generic webhooks only",
        ),
        (
            MINIMAL
            + "notifications:\n  - type: teams\n    urlFrom: {secretFile: /u, secretEnv: U}\n",
            5,
            "notifications[0].urlFrom needs secretFile or secretEnv (one of the two",
        ),
        (
            MINIMAL
            + "notifications:\n  - type: teams\n    urlFrom: {secretFile: /u}\n    events: [rollout.done]\n",
            6,
            "notifications[0].events: unknown event 'rollout.done'; the events are rollout.started",
        ),
        (
            MINIMAL
            + "notifications:\n  - type: teams\n    urlFrom: {secretFile: /u}\n    environments: production\n",
            6,
            "notifications[0].environments must be a list",
        ),
        (
            MINIMAL
            + "notifications:\n  - type: teams\n    urlFrom: {secretFile: /u}\n    timeout: 1h\n",
            6,
            "notifications[0].timeout must be a duration up to 5m",
        ),
        (
            MINIMAL
            + "notifications:\n  - {type: slack, urlFrom: {secretEnv: A}}\n  - {type: slack, urlFrom: {secretEnv: B}}\n",
            5,
            "two notification targets are named 'slack'",
        ),
        (MINIMAL + "ui:\n  externalURL: gitsync.example.com\n", 4, "ui.externalURL must be"),
    ],
)
def test_config_problems(text: str, line: int, message: str) -> None:
    config, problems = load_agent_config(text)
    assert config is None
    assert any(p.line == line and message in p.message for p in problems), problems
    assert all("hunter2" not in p.message and "ghp_abc123" not in p.message for p in problems)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("1.5h", 5400.0),
        ("250ms", 0.25),
        (10, 10.0),
        ("0s", None),
        ("x", None),
        (True, None),
    ],
)
def test_durations(value: object, seconds: float | None) -> None:
    assert parse_duration(value) == seconds


def test_validate_config_reports_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "gitsync.yaml"
    bad.write_text(MINIMAL + "intervals:\n  poll: soon\n")
    assert main(["validate", "--config", str(bad)]) == 1
    assert capsys.readouterr().out.startswith(f"{bad}:4: intervals.poll must be a duration")


def test_status_provider_settings() -> None:
    text = MINIMAL + (
        "status:\n  provider: github\n  url: https://ghe.example.com/api/v3/\n"
        "  repository: platform/ray\n  targetUrl: 'https://d/{environment}/{short}'\n"
        "  app:\n    appId: 12345\n    installationId: 678\n"
        "    privateKeyFile: /var/run/secrets/gitsync/app.pem\n"
        "environments: [production]\n"
        "promotion:\n  timeout: 45m\n  pollInterval: 15s\n"
    )
    config, problems = load_agent_config(text)
    assert problems == []
    assert config is not None
    status = config.status
    assert (status.provider, status.url, status.repository) == (
        "github",
        "https://ghe.example.com/api/v3",
        "platform/ray",
    )
    assert status.app is not None
    assert status.app.app_id == "12345"
    assert status.target_url == "https://d/{environment}/{short}"
    assert config.environments == ("production",)
    assert (config.promotion.timeout, config.promotion.poll_interval) == (2700.0, 15.0)


@pytest.mark.parametrize(
    ("schedule", "interval"),
    [("*/5 * * * *", None), ("0 3 * * 1-5", None), ("30s", 30.0), ("5m", 300.0)],
)
def test_the_drift_schedule_is_a_cron_expression_or_an_interval(
    schedule: str, interval: float | None
) -> None:
    config, problems = load_agent_config(MINIMAL + f"intervals:\n  drift: '{schedule}'\n")
    assert not problems
    assert config is not None
    assert config.drift_schedule == schedule
    assert drift_interval(config.drift_schedule) == interval


@pytest.mark.parametrize(
    ("configured", "listen", "pod_ip", "expected"),
    [
        (
            "https://gitsync.example:8443",
            "0.0.0.0:8080",
            "10.0.0.7",
            "https://gitsync.example:8443",
        ),
        ("", "0.0.0.0:8080", "10.0.0.7", "http://10.0.0.7:8080"),
        ("", "0.0.0.0:9000", "fd00::7", "http://[fd00::7]:9000"),
        ("", "127.0.0.1:8080", "", "http://127.0.0.1:8080"),
        ("", "0.0.0.0:8080", "", "http://gitsync-7f9c:8080"),
        ("", "[::]:8080", "", "http://gitsync-7f9c:8080"),
    ],
)
def test_the_url_the_leader_publishes(
    configured: str, listen: str, pod_ip: str, expected: str
) -> None:
    assert advertised_url(configured, listen, pod_ip, "gitsync-7f9c") == expected


def test_advertise_url_must_be_an_http_base_url() -> None:
    config, problems = load_agent_config(MINIMAL + "advertiseURL: http://10.0.0.7:8080/\n")
    assert config is not None
    assert config.advertise_url == "http://10.0.0.7:8080"
    config, problems = load_agent_config(MINIMAL + "advertiseURL: 10.0.0.7:8080\n")
    assert config is None
    assert "advertiseURL must be http(s)://host:port" in problems[0].message


@pytest.mark.parametrize(
    ("line", "probe_listen", "problem"),
    [
        ("", "", None),
        ("probeListen: 0.0.0.0:8081\n", "0.0.0.0:8081", None),
        ("probeListen: nowhere\n", None, "probeListen must be host:port"),
        ("probeListen: 0.0.0.0:8080\n", None, "probeListen must differ from listen"),
    ],
)
def test_probe_listen(line: str, probe_listen: str | None, problem: str | None) -> None:
    config, problems = load_agent_config(MINIMAL + line)
    if problem is None:
        assert problems == []
        assert config is not None
        assert config.probe_listen == probe_listen
    else:
        assert config is None
        assert [p.message for p in problems if p.message.startswith(problem)], problems


def test_the_shutdown_grace_period() -> None:
    config, problems = load_agent_config(MINIMAL)
    assert not problems
    assert config is not None
    assert config.shutdown_grace == 10.0
    config, problems = load_agent_config(MINIMAL + "shutdownGracePeriod: 90s\n")
    assert not problems
    assert config is not None
    assert config.shutdown_grace == 90.0
    for bad in ("0s", "soon", "1h"):
        config, problems = load_agent_config(MINIMAL + f"shutdownGracePeriod: {bad}\n")
        assert config is None
        assert "shutdownGracePeriod must be a duration from 1s to 10m" in problems[0].message
        assert problems[0].line == MINIMAL.count("\n") + 1


@pytest.mark.parametrize(
    ("text", "listen", "bearer", "problem"),
    [
        ("", "", None, None),
        ("metrics: {listen: 0.0.0.0:9090}\n", "0.0.0.0:9090", None, None),
        (
            "metrics: {auth: {bearerTokenFile: /run/t}}\n",
            "",
            TokenAuth(token_file=Path("/run/t")),
            None,
        ),
        ("metrics: {auth: {bearerTokenEnv: T}}\n", "", TokenAuth(token_env="T"), None),
        ("metrics: {listen: 0.0.0.0:8080}\n", None, None, "metrics.listen must differ"),
        ("metrics: {listen: here}\n", None, None, "metrics.listen must be host:port"),
        ("metrics: {auth: {token: abc}}\n", None, None, "'token': secrets are never written"),
        (
            "metrics: {auth: {bearerTokenFile: /a, bearerTokenEnv: B}}\n",
            None,
            None,
            "give one of metrics.auth",
        ),
    ],
)
def test_metrics_listen_and_auth(
    text: str, listen: str | None, bearer: TokenAuth | None, problem: str | None
) -> None:
    config, problems = load_agent_config(MINIMAL + text)
    if problem is None:
        assert problems == []
        assert config is not None
        assert (config.metrics.listen, config.metrics.bearer) == (listen, bearer)
    else:
        assert config is None
        assert [p.message for p in problems if p.message.startswith(problem)], problems
        assert problems[0].line == MINIMAL.count("\n") + 1


ALLOW = MINIMAL + "allowedNamespaces:\n  staging: [ray-staging]\n  production: ray-production\n"


def test_allowed_namespaces_map_environments_to_namespaces() -> None:
    config, problems = load_agent_config(ALLOW)
    assert problems == []
    assert config is not None
    assert config.namespaces_for("staging") == ("ray-staging",)
    assert config.namespaces_for("production") == ("ray-production",)
    assert config.namespaces_for("other") == ()  # set: an unlisted environment may use none
    unset, _ = load_agent_config(MINIMAL)
    assert unset is not None
    assert unset.namespaces_for("anything") is None


@pytest.mark.parametrize(
    ("tail", "line", "message"),
    [
        ("allowedNamespaces: {}\n", 3, "allowedNamespaces must map each environment"),
        ("allowedNamespaces:\n  staging: []\n", 4, "must be a namespace or a non-empty list"),
        ("allowedNamespaces:\n  staging: [Ray_Staging]\n", 4, "namespace"),
    ],
)
def test_allowed_namespaces_problems(tail: str, line: int, message: str) -> None:
    config, problems = load_agent_config(MINIMAL + tail)
    assert config is None
    assert any(p.line == line and message in p.message for p in problems), problems


@pytest.mark.parametrize(
    ("allow", "problem"),
    [
        (ALLOW, None),
        (
            ALLOW.replace("production: ray-production", "production: [ray-prod-2]"),
            "gitsync.yaml:7: environment 'production' deploys to namespace 'ray-production', "
            "which the agent config does not allow (allowedNamespaces.production: ray-prod-2); "
            "nothing of this revision is applied",
        ),
        (
            ALLOW.replace("  production: ray-production\n", ""),
            "gitsync.yaml:7: environment 'production' is not in the agent config's "
            "allowedNamespaces, so it may deploy nowhere (namespace 'ray-production'); nothing "
            "of this revision is applied",
        ),
    ],
)
def test_a_repository_pointing_an_environment_elsewhere_is_invalid_there(
    allow: str, problem: str | None
) -> None:
    config, _ = load_agent_config(allow)
    assert config is not None
    report = read_tree(EXAMPLES)
    assert report.ok
    checked = confined(report, config.namespaces_for)
    assert environment_manifests(checked, "staging", "t").ok
    if problem is None:
        assert checked == report
        return
    assert [str(p) for p in checked.problems] == [problem]
    with pytest.raises(InvalidRevision) as raised:
        environment_manifests(checked, "production", "t")
    assert [str(p) for p in raised.value.problems] == [problem]
    assert read_tree(EXAMPLES) == report  # the tree's own report is not changed


def test_notification_targets() -> None:
    config, problems = load_agent_config(
        MINIMAL
        + "notifications:\n"
        + "  - type: slack\n    urlFrom: {secretFile: /var/run/secrets/gitsync/slack-url}\n"
        + "    environments: [production]\n    events: [rollout.failed, drift.fight]\n"
        + "  - name: audit\n    type: webhook\n    url: https://audit.example.com/gitsync\n"
        + "    secret: {secretEnv: AUDIT_SECRET}\n    timeout: 3s\n"
    )
    assert problems == []
    assert config is not None
    slack, audit = config.notifications
    assert (slack.name, slack.type, slack.url) == ("slack", "slack", "")
    assert slack.url_from == TokenAuth(token_file=Path("/var/run/secrets/gitsync/slack-url"))
    assert (slack.environments, slack.events) == (
        ("production",),
        ("rollout.failed", "drift.fight"),
    )
    assert (slack.secret, slack.timeout) == (None, 10.0)
    assert (audit.name, audit.url, audit.url_from) == (
        "audit",
        "https://audit.example.com/gitsync",
        None,
    )
    assert (audit.secret, audit.timeout, audit.events) == (
        TokenAuth(token_env="AUDIT_SECRET"),
        3.0,
        (),
    )
