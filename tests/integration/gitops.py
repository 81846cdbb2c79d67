"""A GitOps repository for rollout tests: the example layout with staging deploying into the
test's namespace, served over file:// from a bare repository, and an agent config for it."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import yaml

from gitsync.config import AgentConfig, RolloutSettings, load_agent_config

# The tests' own layout (every environment's files whole, edited in place by many tests), the
# recommended one (a kustomize base and overlays) and a Helm chart with values per environment.
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plain-layout"
KUSTOMIZE = EXAMPLES.parent / "repo-layout"
HELM = EXAMPLES.parent / "helm-layout"


def git(*args: str, cwd: Path) -> str:
    result = subprocess.run(
        [
            "git",
            "-c",
            "user.name=T",
            "-c",
            "user.email=t@example.com",
            "-c",
            "commit.gpgsign=false",
            *args,
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if result.returncode != 0:
        raise AssertionError(f"git {args} failed: {result.stderr}")
    return result.stdout.strip()


class GitOpsRepo:
    def __init__(
        self,
        root: Path,
        namespace: str,
        *,
        prune: bool = False,
        production: str | None = None,
        create_namespace: bool = False,
        self_heal: bool = False,
        previews: dict[str, object] | None = None,
        origin: str | None = None,
        push_args: Sequence[str] = (),
        example: Path = EXAMPLES,
    ) -> None:
        """``origin``: push there (e.g. a Gitea repository, ``push_args`` authenticating)
        instead of to a local bare repository; ``example``: another layout of examples/."""
        self.bare, self.work, self.namespace = root / "repo.git", root / "work", namespace
        self.push_args = tuple(push_args)
        root.mkdir(parents=True)
        if origin is None:
            git("init", "-q", "--bare", "-b", "main", str(self.bare), cwd=root)
        self.origin = origin or self.bare.as_uri()
        shutil.copytree(example, self.work)
        config = yaml.safe_load((self.work / "gitsync.yaml").read_text())
        staging, prod = config["environments"]
        self.staging = str(staging["path"])
        staging.update(
            namespace=namespace, prune=prune, createNamespace=create_namespace, selfHeal=self_heal
        )
        config["environments"] = [staging]
        if production is not None:  # production after staging, in its own namespace
            prod.update(namespace=production, createNamespace=create_namespace, selfHeal=self_heal)
            config["environments"].append(prod)
        else:
            shutil.rmtree(self.work / prod["path"])
        config.pop("previews", None)
        if previews is not None:
            config["previews"] = {"from": "staging", **previews}
        (self.work / "gitsync.yaml").write_text(yaml.safe_dump(config))
        git("init", "-q", "-b", "main", cwd=self.work)
        git("remote", "add", "origin", self.origin, cwd=self.work)
        self.revisions = [self.commit(lambda root: None, "initial")]

    @property
    def url(self) -> str:
        return self.origin

    def path(self, name: str) -> Path:
        return self.work / self.staging / name

    def edit(self, name: str, old: str, new: str) -> None:
        text = self.path(name).read_text()
        assert old in text, (name, old)
        self.path(name).write_text(text.replace(old, new))

    def commit(self, change: Callable[[Path], object], message: str) -> str:
        change(self.work)
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "--allow-empty", "-m", message, cwd=self.work)
        git(*self.push_args, "push", "-q", "-f", "origin", "main", cwd=self.work)
        sha = git("rev-parse", "HEAD", cwd=self.work)
        if hasattr(self, "revisions"):
            self.revisions.append(sha)
        return sha

    def agent_config(self, cache: Path, **rollout: object) -> AgentConfig:
        text = yaml.safe_dump(
            {"repository": {"url": self.url, "branch": "main"}, "cacheDir": str(cache)}
        )
        config, problems = load_agent_config(text)
        assert config is not None, problems
        settings = replace(
            RolloutSettings(),
            healthy_reads=2,
            healthy_seconds=1.5,  # longer than the simulator's requeue (tests/conftest.py)
            poll_interval=0.1,
            health_timeout=30.0,
            state_namespace=self.namespace,
        )
        return replace(config, rollout=replace(settings, **rollout))  # type: ignore[arg-type]

    def config_file(self, cache: Path, path: Path) -> Path:
        document = {
            "repository": {"url": self.url, "branch": "main"},
            "cacheDir": str(cache),
            "rollout": {
                "healthyReads": 2,
                "healthySeconds": "1500ms",
                "pollInterval": "100ms",
                "healthTimeout": "30s",
                "stateNamespace": self.namespace,
            },
        }
        path.write_text(yaml.safe_dump(document))
        return path


def counting_tool(real: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A wrapper that records each run of the real tool (kustomize, helm), to count renders."""
    log = tmp_path / f"{real.name}-runs.log"
    wrapper = tmp_path / f"{real.name}-counting"
    wrapper.write_text(f'#!/bin/sh\necho run >> {log}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper, log


def runs(log: Path) -> int:
    """How many times the wrapped tool ran."""
    return len(log.read_text().splitlines()) if log.exists() else 0


def edit(path: Path, old: str, new: str) -> None:
    """Replaces ``old`` (which must be there) by ``new`` in the file ``path``."""
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new))
