"""Finds the test bed's binaries, building them with testbed/build.sh when missing."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = Path(__file__).resolve().parent / "build.sh"


class TestbedBuildError(RuntimeError):
    """A test-bed binary could not be built; tests that need it must fail, not skip."""


@dataclass(frozen=True)
class Binaries:
    kube_apiserver: Path
    kubectl: Path
    etcd: Path
    kuberay_crds: Path
    sshd: Path
    kuberay_operator: Path
    sshd_library_path: Path  # libwrap, unpacked beside it
    gitea: Path
    gitea_root: Path  # the module copy it was built in: templates, options (STATIC_ROOT_PATH)
    prometheus: Path
    promtool: Path
    monitoring_crds: Path  # ServiceMonitor, PrometheusRule … (prometheus-operator module)
    zsh: Path
    zsh_modules: Path  # zle, complete, zpty … (its module_path)
    zsh_functions: Path  # compinit and the completion functions (its fpath)
    fish: Path
    fish_library_path: Path  # libpcre2-32, unpacked beside it
    fish_functions: Path  # __fish_use_subcommand … (its fish_function_path)
    kube_version: str
    etcd_version: str
    kuberay_version: str
    ray_python: Path  # the Ray venv's interpreter: ray[serve] for the real-Ray mode (rayhost)
    ray_version: str
    helm: Path  # helm template: environments rendered from a chart (kustomize is kubectl's)
    helm_version: str


def testbed_dir() -> Path:
    return Path(os.environ.get("TESTBED_DIR", REPO_ROOT / ".testbed"))


def _read_manifest(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    return values


def ensure_binaries(*, quiet: bool = False) -> Binaries:
    """Runs build.sh (a no-op when everything is cached) and returns the artefact paths."""
    start = time.monotonic()
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise TestbedBuildError(
            f"testbed/build.sh failed with exit code {result.returncode}:\n{result.stdout[-4000:]}"
        )
    if not quiet:
        sys.stderr.write(result.stdout)
        sys.stderr.write(f"testbed: binaries ready in {time.monotonic() - start:.1f} s\n")
    values = _read_manifest(testbed_dir() / "manifest.env")
    binaries = Binaries(
        kube_apiserver=Path(values["KUBE_APISERVER"]),
        kubectl=Path(values["KUBECTL"]),
        etcd=Path(values["ETCD"]),
        kuberay_crds=Path(values["KUBERAY_CRDS"]),
        sshd=Path(values["SSHD"]),
        kuberay_operator=Path(values["KUBERAY_OPERATOR"]),
        sshd_library_path=Path(values["SSHD_LIBRARY_PATH"]),
        gitea=Path(values["GITEA"]),
        gitea_root=Path(values["GITEA_ROOT"]),
        prometheus=Path(values["PROMETHEUS"]),
        promtool=Path(values["PROMTOOL"]),
        monitoring_crds=Path(values["MONITORING_CRDS"]),
        zsh=Path(values["ZSH"]),
        zsh_modules=Path(values["ZSH_MODULES"]),
        zsh_functions=Path(values["ZSH_FUNCTIONS"]),
        fish=Path(values["FISH"]),
        fish_library_path=Path(values["FISH_LIBRARY_PATH"]),
        fish_functions=Path(values["FISH_FUNCTIONS"]),
        kube_version=values["KUBE_VERSION"],
        etcd_version=values["ETCD_VERSION"],
        kuberay_version=values["KUBERAY_VERSION"],
        ray_python=Path(values["RAY_PYTHON"]),
        ray_version=values["RAY_VERSION"],
        helm=Path(values.get("HELM", testbed_dir() / "bin" / "helm-missing")),
        helm_version=values.get("HELM_VERSION", ""),
    )
    for path in (
        binaries.kube_apiserver,
        binaries.kubectl,
        binaries.etcd,
        binaries.kuberay_crds,
        binaries.sshd,
        binaries.kuberay_operator,
        binaries.gitea,
        binaries.gitea_root / "templates",
        binaries.prometheus,
        binaries.promtool,
        binaries.monitoring_crds / "monitoring.coreos.com_servicemonitors.yaml",
        binaries.zsh,
        binaries.zsh_modules / "zsh" / "zpty.so",
        binaries.zsh_functions,
        binaries.fish,
        binaries.fish_functions / "__fish_use_subcommand.fish",
        binaries.ray_python.parent / "ray",
        binaries.helm,
    ):
        if not path.exists():
            raise TestbedBuildError(f"{path} is missing after testbed/build.sh")
    return binaries
