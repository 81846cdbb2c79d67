"""The workload every benchmark uses: realistic RayServices in a Git repository.

Each service has a multi-application ``serveConfigV2``, a head and two worker groups, env vars
and resources. :class:`Repo` spreads them over environments (one namespace each) and pushes
every commit to its origin.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

NAMESPACES = 10
SERVE = """applications:
- name: retrieve
  route_prefix: /retrieve
  import_path: retriever.serve:app
  runtime_env:
    env_vars: {{INDEX: "products-v{index}", LOG_LEVEL: info}}
  deployments:
  - name: Retriever
    num_replicas: 2
    ray_actor_options: {{num_cpus: 1}}
- name: rerank
  route_prefix: /rerank
  import_path: reranker.serve:app
  deployments:
  - name: Reranker
    num_replicas: 1
    ray_actor_options: {{num_gpus: 1}}
  - name: Features
    autoscaling_config: {{min_replicas: 1, max_replicas: 4}}
"""


def service(name: str, namespace: str, index: int, replicas: int = 2) -> dict[str, Any]:
    def container(kind: str, cpu: str, memory: str, gpu: int = 0) -> dict[str, Any]:
        limits: dict[str, Any] = {"cpu": cpu, "memory": memory}
        if gpu:
            limits["nvidia.com/gpu"] = gpu
        return {
            "name": f"ray-{kind}",
            "image": "rayproject/ray:2.49.0-py311",
            "env": [
                {"name": "RAY_GRAFANA_HOST", "value": "http://grafana:3000"},
                {"name": "SERVICE_INDEX", "value": str(index)},
            ],
            "resources": {"requests": dict(limits), "limits": limits},
        }

    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "serveConfigV2": SERVE.format(index=index).replace(
                "num_replicas: 2", f"num_replicas: {replicas}"
            ),
            "rayClusterConfig": {
                "rayVersion": "2.49.0",
                "headGroupSpec": {
                    "rayStartParams": {"dashboard-host": "0.0.0.0"},  # noqa: S104 - a manifest
                    "template": {"spec": {"containers": [container("head", "2", "8Gi")]}},
                },
                "workerGroupSpecs": [
                    {
                        "groupName": "cpu",
                        "replicas": 2,
                        "minReplicas": 1,
                        "maxReplicas": 8,
                        "rayStartParams": {},
                        "template": {"spec": {"containers": [container("worker", "4", "16Gi")]}},
                    },
                    {
                        "groupName": "gpu",
                        "replicas": 1,
                        "minReplicas": 0,
                        "maxReplicas": 4,
                        "rayStartParams": {},
                        "template": {"spec": {"containers": [container("worker", "8", "32Gi", 1)]}},
                    },
                ],
            },
        },
    }


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=b", "-c", "user.email=b@example.com", "-c",
         "commit.gpgsign=false", *args],
        cwd=cwd, check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip


@dataclass
class Repo:
    """``count`` RayServices spread over ``namespaces`` environments (``env<n>`` in namespace
    ``<prefix>-<n>``), pushed to ``origin`` (default: a local bare repository)."""

    root: Path
    count: int
    namespaces: int = NAMESPACES
    origin: str = ""
    push_args: list[str] = field(default_factory=list)
    namespace_prefix: str = "bench"
    work: Path = field(init=False)
    bare: Path = field(init=False)

    def __post_init__(self) -> None:
        self.work, self.bare = self.root / "work", self.root / "repo.git"
        environments = []
        for n in range(self.namespaces):
            environments.append(
                {
                    "name": f"env{n}",
                    "path": f"environments/env{n}",
                    "namespace": f"{self.namespace_prefix}-{n}",
                }
            )
        self.write(replicas=2)
        (self.work / "gitsync.yaml").write_text(yaml.safe_dump({"environments": environments}))
        if not self.origin:
            git("init", "-q", "--bare", "-b", "main", str(self.bare), cwd=self.root)
            self.origin = self.bare.as_uri()
        git("init", "-q", "-b", "main", cwd=self.work)
        self.commit("initial")

    def files(self) -> list[Path]:
        return sorted((self.work / "environments").rglob("*.yaml"))

    def write(self, replicas: int, only: int | None = None) -> None:
        per = max(1, self.count // self.namespaces)
        written = 0
        for n in range(self.namespaces):
            folder = self.work / "environments" / f"env{n}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "README.md").write_text("RayServices of this environment\n")  # git keeps it
            for i in range(per):
                if n * per + i >= self.count:
                    break
                changed = only is None or written < only
                namespace = f"{self.namespace_prefix}-{n}"
                obj = service(f"svc{i}", namespace, i, replicas if changed else 2)
                (folder / f"svc{i}.yaml").write_text(yaml.safe_dump(obj, sort_keys=False))
                written += 1

    def commit(self, message: str) -> str:
        """Commits everything and pushes it; the new commit's SHA."""
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "--allow-empty", "-m", message, cwd=self.work)
        git(*self.push_args, "push", "-q", "-f", self.origin, "main", cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)
