"""Secrets never leak: gitsync runs (``sync --once`` and ``run`` with its HTTP server, as
processes) with a repository token, a forge status token, a webhook secret, a status-page
token and an SSH key configured, through failures that are about auth — a wrong repository
token, a wrong status token, an unreachable forge, an unreachable SSH remote, rejected
webhooks — and everything it said is scanned: logs (text and JSON), /metrics, the status
page, `gitsync status`, the commit statuses on the real Gitea, the Kubernetes Events and
rollout state in the namespace. No secret value (nor its basic-auth encoding) may appear.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from testbed.controlplane import ControlPlane, free_port
from testbed.gitea import Gitea
from testbed.simulator import Simulator
from tests.integration.gitops import GitOpsRepo
from tests.reliability.conftest import Figures


class Secrets:
    def __init__(self, tmp: Path, gitea: Gitea) -> None:
        self.repo_token = gitea.token  # real: the repository is private
        self.wrong_repo_token = "gsw-" + secrets.token_hex(16)
        self.wrong_status_token = "gss-" + secrets.token_hex(16)
        self.webhook = "whs-" + secrets.token_hex(16)
        self.ui = "gsu-" + secrets.token_hex(16)
        key_body = base64.b64encode(secrets.token_bytes(240)).decode()
        self.ssh_key = (
            f"-----BEGIN OPENSSH PRIVATE KEY-----\n{key_body}\n-----END OPENSSH PRIVATE KEY-----\n"
        )
        self.files: dict[str, Path] = {}
        for name, value in vars(self).copy().items():
            if isinstance(value, str):
                (tmp / name).write_text(value)
                (tmp / name).chmod(0o600)
                self.files[name] = tmp / name
        (tmp / "known_hosts").write_text("[127.0.0.1]:1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK\n")
        self.user = gitea.admin
        self.key_body = key_body

    def forms(self) -> dict[str, str]:
        """Every secret as it could leak: raw, and as basic-auth credentials."""
        found = {}
        for name in ("repo_token", "wrong_repo_token", "wrong_status_token", "webhook", "ui"):
            value = getattr(self, name)
            found[name] = value
            found[f"{name} (basic)"] = base64.b64encode(f"{self.user}:{value}".encode()).decode()
            found[f"{name} (basic, git)"] = base64.b64encode(f"git:{value}".encode()).decode()
        found["ssh key"] = self.key_body[:40]
        return found


def config_file(
    path: Path,
    repo: GitOpsRepo,
    keys: Secrets,
    tmp: Path,
    *,
    repo_token: str = "repo_token",  # noqa: S107 - the name of a secret file, not a secret
    **extra: Any,
) -> Path:
    document: dict[str, Any] = {
        "repository": {
            "url": repo.url,
            "branch": "main",
            "timeout": "10s",
            "auth": {
                "tokenFile": str(keys.files[repo_token]),
                "scheme": "basic",
                "username": keys.user,
            },
        },
        "cacheDir": str(tmp / f"cache-{path.stem}"),
        "status": {"provider": "gitea", "tokenFile": str(keys.files["repo_token"])},
        "rollout": {
            "healthyReads": 2,
            "healthySeconds": "1500ms",
            "pollInterval": "100ms",
            "healthTimeout": "60s",
            "stateNamespace": repo.namespace,
        },
    }
    for key, value in extra.items():
        document[key] = {**document.get(key, {}), **value} if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(document))
    return path


def gitsync(*args: str, kubeconfig: Path, timeout: float = 180) -> tuple[int, str]:
    run = subprocess.run(
        [sys.executable, "-m", "gitsync.cli", *args, "--kubeconfig", str(kubeconfig)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return run.returncode, run.stdout + run.stderr


def http(
    port: int, path: str, *, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=body,
        method="POST" if body is not None else "GET",
        headers=headers or {},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def wait_ready(port: int, agent: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert agent.poll() is None, log.read_text()[-3000:]
        try:
            if http(port, "/healthz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("the agent did not answer /healthz: " + log.read_text()[-3000:])


def run_agent(
    config: Path, kubeconfig: Path, log: Path, port: int, fmt: str, keys: Secrets, *, settle: float
) -> list[tuple[str, str]]:
    """Starts `gitsync run`, lets it work, sends rejected webhooks, reads /metrics and the
    status page, stops it with SIGTERM; returns what it showed."""
    argv = [
        sys.executable,
        "-m",
        "gitsync.cli",
        "run",
        "--config",
        str(config),
        "--kubeconfig",
        str(kubeconfig),
    ]
    env = {**os.environ, "POD_NAME": f"leak-{fmt}", "WEBHOOK_SECRET": keys.webhook}
    with log.open("wb") as out:
        level = "debug" if fmt == "json" else "info"  # debug: git's own (redacted) stderr too
        agent = subprocess.Popen(
            [*argv, "--log-format", fmt, "--log-level", level],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    shown: list[tuple[str, str]] = []
    try:
        wait_ready(port, agent, log)
        time.sleep(settle)
        body = b'{"ref": "refs/heads/main", "repository": {"clone_url": "x"}}'
        wrong = hmac.new(b"not-the-secret", body, hashlib.sha256).hexdigest()
        for headers in (
            {"X-Gitea-Event": "push", "X-Gitea-Signature": wrong},
            {"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + wrong},
            {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": keys.wrong_status_token},
            {"X-Gitea-Event": "push"},
        ):
            status, answer = http(port, "/webhooks", body=body, headers=headers)
            assert status == 401, (status, answer)
            shown.append((f"webhook answer ({fmt})", answer))
        shown.append((f"/metrics ({fmt})", http(port, "/metrics")[1]))
        for path in ("/", "/api/v1/environments", "/api/v1/openapi.json"):
            status, page = http(port, path, headers={"Authorization": f"Bearer {keys.ui}"})
            assert status == 200, (path, status)
            shown.append((f"{path} ({fmt})", page))
            status, page = http(
                port, path, headers={"Authorization": f"Bearer {keys.wrong_repo_token}"}
            )
            assert status == 401, (path, status)
            shown.append((f"{path} refused ({fmt})", page))
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(40)
    shown.append((f"agent log ({fmt})", log.read_text()))
    return shown


def test_no_secret_appears_anywhere(
    api: client.ApiClient,
    gitea: Gitea,
    control_plane: ControlPlane,
    sim: Simulator,
    namespace: str,
    tmp_path: Path,
    figures: Figures,
) -> None:
    name = f"leak-{uuid.uuid4().hex[:8]}"
    gitea.api("POST", "/user/repos", {"name": name, "default_branch": "main", "private": True})
    repo = GitOpsRepo(
        tmp_path / "gitops",
        namespace,
        origin=gitea.clone_url(name),
        push_args=gitea.git_auth_config(),
    )
    sha = repo.revisions[-1]
    keys = Secrets(tmp_path, gitea)
    kubeconfig = control_plane.kubeconfig
    shown: list[tuple[str, str]] = []

    def phase(label: str, config: Path, *args: str, expect: int | None, says: str) -> None:
        code, output = gitsync(*args, "--config", str(config), kubeconfig=kubeconfig)
        assert expect is None or code == expect, (label, code, output[-3000:])
        assert says in output, (label, output[-3000:])
        shown.append((label, output))

    good = config_file(tmp_path / "good.yaml", repo, keys, tmp_path)
    phase("sync", good, "sync", "--once", expect=0, says="staging: succeeded")
    phase(
        "sync, wrong repository token",
        config_file(tmp_path / "wrong-repo.yaml", repo, keys, tmp_path, repo_token="wrong_repo_token"),
        "sync", "--once", expect=2, says="refused",
    )  # fmt: skip
    phase(
        "sync, wrong status token",
        config_file(tmp_path / "wrong-status.yaml", repo, keys, tmp_path, status={"tokenFile": str(keys.files["wrong_status_token"])}),
        "sync", "--once", expect=None, says="with HTTP 401, not delivered again",
    )  # fmt: skip
    phase(
        "sync, forge unreachable",
        config_file(tmp_path / "no-forge.yaml", repo, keys, tmp_path, status={"url": f"http://127.0.0.1:{free_port()}"}),
        "sync", "--once", expect=None, says="not posted",
    )  # fmt: skip
    ssh = config_file(tmp_path / "ssh.yaml", repo, keys, tmp_path)
    document = yaml.safe_load(ssh.read_text())
    document["repository"].update(
        url=f"ssh://git@127.0.0.1:{free_port()}/{name}.git",
        auth={
            "sshKeyFile": str(keys.files["ssh_key"]),
            "knownHostsFile": str(tmp_path / "known_hosts"),
        },
    )
    document["status"] = {"provider": "gitnotes"}
    ssh.write_text(yaml.safe_dump(document))
    phase("sync, ssh remote unreachable", ssh, "sync", "--once", expect=2, says="127.0.0.1")
    phase("gitsync status", good, "status", expect=None, says="staging")

    port = free_port()
    agent_extra = {
        "listen": f"127.0.0.1:{port}",
        "leaderElection": {"enabled": False},
        "webhooks": {"secretEnv": "WEBHOOK_SECRET"},
        "ui": {"auth": {"bearerTokenFile": str(keys.files["ui"])}},
        "intervals": {"poll": "1s"},
    }
    agent = config_file(tmp_path / "agent.yaml", repo, keys, tmp_path, **agent_extra)
    shown += run_agent(agent, kubeconfig, tmp_path / "agent-json.log", port, "json", keys, settle=3)
    port = free_port()
    agent_extra["listen"] = f"127.0.0.1:{port}"
    broken = config_file(
        tmp_path / "agent-wrong.yaml",
        repo,
        keys,
        tmp_path,
        repo_token="wrong_repo_token",
        **agent_extra,
    )
    shown += run_agent(
        broken, kubeconfig, tmp_path / "agent-text.log", port, "text", keys, settle=3
    )
    assert "refused" in shown[-1][1]  # the wrong token was tried, and said so

    owner = gitea.admin
    statuses = gitea.api("GET", f"/repos/{owner}/{name}/commits/{sha}/statuses")
    assert any(s["context"] == "gitsync/staging" for s in statuses)
    shown.append(("commit statuses (Gitea)", json.dumps(statuses)))
    core = client.CoreV1Api(api)
    events = api.sanitize_for_serialization(core.list_namespaced_event(namespace))
    assert events["items"], "the rollout recorded Kubernetes Events"
    shown.append(("Kubernetes Events", json.dumps(events)))
    maps = api.sanitize_for_serialization(core.list_namespaced_config_map(namespace))
    shown.append(("rollout state ConfigMaps", json.dumps(maps)))

    forms = keys.forms()
    for label, text in shown:
        leaked = sorted(n for n, value in forms.items() if value in text)
        figures.add(
            "secret-scan",
            {
                "captured": label,
                "bytes": len(text),
                "secrets looked for": len(forms),
                "leaked": ", ".join(leaked) or "none",
            },
        )
    leaks = [(label, n) for label, text in shown for n, value in forms.items() if value in text]
    assert leaks == []
