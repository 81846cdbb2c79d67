"""Hostile rendered environments, rendered by the test bed's real kustomize (kubectl's) and
helm: each is refused with a clear problem naming the file (and line) or the environment,
nothing is loaded from it, in bounded time, and the renderer's message holds no path outside
the repository. Overlays escaping the repository, remote bases, plugins and exec functions,
a chart looping in its templates, a chart rendering 100 MB (stopped by the memory limit
before its output is whole) and one whose output passes the output limit.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from gitsync import renderer
from gitsync.checkout import read_tree
from testbed.binaries import Binaries

KUSTOMIZE = Path(__file__).resolve().parents[2] / "examples" / "repo-layout"
HELM = Path(__file__).resolve().parents[2] / "examples" / "helm-layout"
MAX_SECONDS = 20


def write(root: Path, name: str, text: str) -> None:
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(text)


STAGING = "overlays/staging/kustomization.yaml"
TEMPLATE = "charts/ray-services/templates/rayservice.yaml"


def escaping(root: Path) -> None:
    write(root, STAGING, "resources:\n  - ../../base\n  - ../../../../outside\n")


def outside_the_overlay(root: Path) -> None:  # inside the repository, outside the root
    write(root, STAGING, "resources:\n  - ../../base\npatches:\n  - path: ../../base/ranker.yaml\n")


def symlink_out(root: Path) -> None:
    (root / "base/secret.yaml").symlink_to("/etc/passwd")


def remote_base(root: Path) -> None:
    write(root, STAGING, "resources:\n  - github.com/example/bases//ray?ref=v1\n")


def generator_plugin(root: Path) -> None:
    write(root, STAGING, "resources:\n  - ../../base\ngenerators:\n  - gen.yaml\n")
    write(
        root,
        "overlays/staging/gen.yaml",
        "apiVersion: example.com/v1\nkind: SecretsFromVault\nmetadata:\n  name: g\n",
    )


def exec_function(root: Path) -> None:
    write(root, STAGING, "resources:\n  - ../../base\ntransformers:\n  - fn.yaml\n")
    write(
        root,
        "overlays/staging/fn.yaml",
        "apiVersion: example.com/v1\nkind: Run\nmetadata:\n  name: f\n  annotations:\n"
        "    config.kubernetes.io/function: |\n      exec:\n        path: /bin/sh\n",
    )


def kustomize_helm(root: Path) -> None:
    write(root, STAGING, "helmCharts:\n  - name: ray\n    repo: https://example.com/charts\n")


def looping_chart(root: Path) -> None:
    write(
        root, TEMPLATE, "{{- range until 100000 }}{{- range until 100000 }}{{- end }}{{- end }}\n"
    )
    gitsync = (root / "gitsync.yaml").read_text()
    (root / "gitsync.yaml").write_text(
        gitsync.replace("releaseName: ray\n", "releaseName: ray\n    renderTimeout: 2s\n")
    )


def huge_chart(root: Path) -> None:  # 100 MB of ConfigMaps
    write(
        root,
        TEMPLATE,
        '{{- $pad := repeat 1000 "x" }}{{- range until 100000 }}\n---\n'
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c{{ . }}\ndata:\n"
        "  pad: {{ $pad }}\n{{- end }}\n",
    )


def big_chart(root: Path) -> None:  # 5 MB of ConfigMaps, against a 2 MiB output limit
    write(
        root,
        TEMPLATE,
        '{{- $pad := repeat 1000 "x" }}{{- range until 5000 }}\n---\n'
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c{{ . }}\ndata:\n"
        "  pad: {{ $pad }}\n{{- end }}\n",
    )


def remote_dependency(root: Path) -> None:
    chart = root / "charts/ray-services/Chart.yaml"
    chart.write_text(
        chart.read_text() + "dependencies:\n  - name: redis\n    version: 1.0.0\n"
        "    repository: oci://registry.example.com/charts\n"
    )


@dataclass(frozen=True)
class Case:
    name: str
    example: Path
    make: Callable[[Path], None]
    where: str  # the problem's file:line (or file)
    expect: str
    output_limit: int | None = None  # bytes, in place of the renderer's own (32 MiB)


CASES = [
    Case("overlay-escapes", KUSTOMIZE, escaping, f"{STAGING}:3", "is outside the repository"),
    Case(
        "file-outside-overlay",
        KUSTOMIZE,
        outside_the_overlay,
        "gitsync.yaml:",
        "is not in or below",
    ),
    Case("symlink-out", KUSTOMIZE, symlink_out, "base/secret.yaml", "outside the repository"),
    Case("remote-base", KUSTOMIZE, remote_base, f"{STAGING}:2", "rendering has no network"),
    Case(
        "generator-plugin",
        KUSTOMIZE,
        generator_plugin,
        "gitsync.yaml:",
        "external plugins disabled",
    ),
    Case("exec-function", KUSTOMIZE, exec_function, "gitsync.yaml:", "kustomize failed"),
    Case("kustomize-helm", KUSTOMIZE, kustomize_helm, f"{STAGING}:1", "Helm inflator is off"),
    Case("looping-chart", HELM, looping_chart, "gitsync.yaml:", "took more than 2 s"),
    Case("100MB-chart", HELM, huge_chart, "gitsync.yaml:", "the render needed more than"),
    Case(
        "output-over-limit",
        HELM,
        big_chart,
        "gitsync.yaml:",
        f"the render is over {2 << 20} bytes, the limit per environment",
        output_limit=2 << 20,
    ),
    Case(
        "remote-dependency",
        HELM,
        remote_dependency,
        "charts/ray-services/Chart.yaml:",
        "rendering has no network",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_hostile_render_is_refused_clearly_in_bounded_time(
    case: Case, tmp_path: Path, binaries: Binaries, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITSYNC_KUSTOMIZE", str(binaries.kubectl))
    monkeypatch.setenv("GITSYNC_HELM", str(binaries.helm))
    if case.output_limit is not None:
        monkeypatch.setattr(renderer, "MAX_RENDER_BYTES", case.output_limit)
    root = tmp_path / "repo"
    shutil.copytree(case.example, root)
    case.make(root)
    start = time.monotonic()
    report = read_tree(root)
    assert time.monotonic() - start < MAX_SECONDS
    staging = report.environments[0]
    assert staging.services == ()
    assert staging.problems
    shown = [str(p) for p in staging.problems]
    assert any(p.startswith(case.where) and case.expect in p for p in shown), shown
    for problem in shown:
        assert tempfile.gettempdir() not in problem
