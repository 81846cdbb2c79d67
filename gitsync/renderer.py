"""Runs the renderers (kustomize, Helm) for an environment, sandboxed, with a cache.

Owns what needs the file system and processes: finding the tools (``GITSYNC_KUSTOMIZE`` /
``GITSYNC_HELM``, else ``kustomize``, ``kubectl`` or ``helm`` on PATH), collecting the files a
render reads (every kustomization a build reaches, or the chart and its values files),
copying them into a temporary tree (symlinks followed only inside the repository), and running
the tool there: no network (no PATH for git, proxies pointing nowhere), no kubeconfig, no
home, kustomize's load restrictor on and its plugins, exec functions and Helm inflator off, a
time limit, a memory limit and an output limit. The output is kept by a key over everything
the render read, so an environment whose inputs did not change is not rendered again. What
the output means is :mod:`gitsync.manifests.render`'s business.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gitsync.manifests.load import MAX_FILE_BYTES, MAX_TREE_BYTES, is_manifest
from gitsync.manifests.render import (
    KUSTOMIZATION_FILES,
    ImageSite,
    PatchSite,
    cache_key,
    chart_problems,
    clean_message,
    helm_documents,
    kustomize_documents,
    patch_site,
    read_kustomization,
)
from gitsync.manifests.repoconfig import REPO_CONFIG_FILE, EnvironmentConfig, HelmSource
from gitsync.manifests.yamldoc import Document
from gitsync.model import Problem

# The rendered manifests of one environment are held in memory like a tree's manifests.
MAX_RENDER_BYTES = MAX_TREE_BYTES
# Address space per render: the example chart and a 1,000-service overlay need far less; a
# template that makes 100 MB of YAML would hold over 1 GiB before printing a byte.
MAX_RENDER_MEMORY = 1024 * 1024 * 1024
# A render stopped at its time limit may pass on the next try (a busy node): never kept.
TIMED_OUT = "the render took more than"
# Renders kept: the current and the previous few revisions' of every environment (at most 100).
MAX_CACHED_RENDERS = 400
_NOWHERE = "http://127.0.0.1:9"  # the discard port: a proxy that answers nothing


@dataclass
class Inputs:
    """The files a render reads (repo-relative → bytes), the patches, and what is refused."""

    files: dict[str, bytes] = field(default_factory=dict)
    resources: list[str] = field(default_factory=list)  # files listed as resources
    patches: list[PatchSite] = field(default_factory=list)
    images: list[ImageSite] = field(default_factory=list)  # images: entries, outermost first
    problems: list[Problem] = field(default_factory=list)
    size: int = 0  # bytes in files


def renderer_of(root: Path, env: EnvironmentConfig) -> str:
    """``plain``, ``kustomize`` or ``helm``: declared, or ``auto`` (kustomize when the folder
    holds a kustomization)."""
    declared = env.source.renderer
    if declared != "auto":
        return declared
    folder = root / env.path
    return "kustomize" if any((folder / n).is_file() for n in KUSTOMIZATION_FILES) else "plain"


def find_tool(name: str) -> list[str] | None:
    """The argv that renders with ``name`` (kustomize or helm): the configured path, or the
    tool on PATH (kustomize: ``kustomize build``, else ``kubectl kustomize``)."""
    configured = os.environ.get(f"GITSYNC_{name.upper()}", "")
    if name == "helm":
        path = configured or shutil.which("helm")
        return [path, "template"] if path else None
    path = configured or shutil.which("kustomize") or shutil.which("kubectl")
    if not path:
        return None
    return [path, "kustomize"] if "kubectl" in Path(path).name else [path, "build"]


def render_environment(
    root: Path, env: EnvironmentConfig, renderer: str, cache: Path | None = None
) -> tuple[list[Document], list[Problem], int]:
    """The environment's rendered documents (each at its origin file), the problems (a
    refused input, the tool's failure) and how many files the render read."""
    root = root.resolve()
    inputs = _kustomize_inputs(root, env) if renderer == "kustomize" else _helm_inputs(root, env)
    if inputs.problems:
        return [], inputs.problems, len(inputs.files)
    argv = find_tool(renderer)
    if argv is None or not os.access(argv[0], os.X_OK):
        hint = "kubectl or kustomize" if renderer == "kustomize" else "helm"
        return (
            [],
            [
                _env_problem(
                    env,
                    f"renders with {renderer}, which is not installed: put "
                    f"{hint} on PATH or set GITSYNC_{renderer.upper()}",
                )
            ],
            0,
        )
    output, failure = _cached_run(argv, env, renderer, inputs, cache)
    if failure is not None:
        return [], [_env_problem(env, failure)], len(inputs.files)
    texts = _Texts(inputs.files)
    if renderer == "kustomize":
        documents, problems = kustomize_documents(
            output, env.path, texts, inputs.resources, inputs.patches, inputs.images
        )
    else:
        documents, problems = helm_documents(output, _helm(env).chart, texts)
    return documents, problems, len(inputs.files)


def _helm(env: EnvironmentConfig) -> HelmSource:
    if env.source.helm is None:  # load_repo_config refuses render: helm without helm:
        raise ValueError(f"environment {env.name!r} renders with helm but names no chart")
    return env.source.helm


def _env_problem(env: EnvironmentConfig, why: str) -> Problem:
    return Problem(REPO_CONFIG_FILE, env.line, f"environment {env.name!r}: {why}")


class _Texts(Mapping[str, str]):
    """The inputs' text by repo-relative path, decoded when asked."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files

    def __getitem__(self, key: str) -> str:
        return self.files[key].decode("utf-8", errors="replace")

    def __iter__(self) -> Iterator[str]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)


def _kustomize_inputs(root: Path, env: EnvironmentConfig) -> Inputs:
    """Every kustomization the build reaches from the environment's folder, with every file
    under their folders; patch files as :class:`PatchSite`."""
    inputs = Inputs()
    pending, seen = [env.path], set()
    while pending and not inputs.problems:
        folder = pending.pop()
        if folder in seen:
            continue
        seen.add(folder)
        _collect(root, folder, inputs)
        name = next(
            (
                f"{folder}/{n}".lstrip("/")
                for n in KUSTOMIZATION_FILES
                if f"{folder}/{n}".lstrip("/") in inputs.files
            ),
            None,
        )
        if name is None:
            continue
        text = inputs.files[name].decode("utf-8", errors="replace")
        found = read_kustomization(text, name, allow_remote=env.source.allow_remote)
        inputs.problems.extend(found.problems)
        inputs.images.extend(found.images)
        pending.extend(r.path for r in found.references if (root / r.path).is_dir())
        inputs.resources.extend(
            r.path
            for r in found.references
            if r.field in ("resources", "bases") and r.path in inputs.files
        )
        for ref, kind, target in found.patches:
            data = inputs.files.get(ref.path)
            if data is not None:
                inputs.patches.extend(
                    patch_site(ref.path, data.decode(errors="replace"), kind, target)
                )
    return inputs


def _helm_inputs(root: Path, env: EnvironmentConfig) -> Inputs:
    helm = _helm(env)
    inputs = Inputs()
    _collect(root, helm.chart, inputs)
    chart_yaml = inputs.files.get(f"{helm.chart}/Chart.yaml")
    if chart_yaml is None:
        inputs.problems.append(
            _env_problem(
                env,
                f"helm.chart {helm.chart!r} is not a chart folder (no Chart.yaml) in this revision",
            )
        )
        return inputs
    charts = root / helm.chart / "charts"
    vendored = {p.name for p in charts.iterdir()} if charts.is_dir() else set()
    inputs.problems.extend(
        chart_problems(helm.chart, chart_yaml.decode(errors="replace"), vendored)
    )
    for values in helm.values:
        _collect_file(root, values, inputs)
    return inputs


def _collect(root: Path, folder: str, inputs: Inputs) -> None:
    """Every file under ``root/folder`` into ``inputs`` (hidden entries skipped; a symlink
    followed only while it stays inside the repository)."""
    start = root / folder
    real = start.resolve()
    if real != root and root not in real.parents:
        inputs.problems.append(Problem(folder, None, "is a symlink out of the repository"))
        return
    if not start.is_dir():
        inputs.problems.append(Problem(folder or ".", None, "is not a folder in this revision"))
        return
    visited: set[Path] = set()
    pending = [start]
    while pending:
        directory = pending.pop()
        if directory.resolve() in visited:
            continue
        visited.add(directory.resolve())
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            relative = path.relative_to(root).as_posix()
            if entry.is_symlink() and not _link_inside(path, root, relative, inputs):
                continue
            if entry.is_dir():
                pending.append(path)
            elif entry.is_file():
                _collect_file(root, relative, inputs)


def _link_inside(path: Path, root: Path, relative: str, inputs: Inputs) -> bool:
    try:
        target = path.resolve(strict=True)
    except (OSError, RuntimeError):
        inputs.problems.append(
            Problem(
                relative,
                None,
                f"symlink is broken or loops (to {os.readlink(path)}); replace it with the file",
            )
        )
        return False
    if target != root and root not in target.parents:
        inputs.problems.append(
            Problem(
                relative, None, f"symlink points outside the repository (to {os.readlink(path)})"
            )
        )
        return False
    return True


def _collect_file(root: Path, relative: str, inputs: Inputs) -> None:
    if relative in inputs.files:
        return
    path = root / relative
    try:
        real = path.resolve(strict=True)
        if real != root and root not in real.parents:
            inputs.problems.append(Problem(relative, None, "points outside the repository"))
            return
        size = real.stat().st_size
        budget = MAX_FILE_BYTES if is_manifest(relative) else MAX_TREE_BYTES
        if size > budget or inputs.size + size > MAX_TREE_BYTES:
            inputs.problems.append(
                Problem(
                    relative,
                    None,
                    f"file is {size} bytes; rendering reads at most {MAX_TREE_BYTES} bytes",
                )
            )
            return
        inputs.files[relative] = real.read_bytes()
        inputs.size += len(inputs.files[relative])
    except (OSError, RuntimeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "cannot be read"
        inputs.problems.append(Problem(relative, None, f"cannot read file: {why}"))


def _cached_run(
    argv: list[str], env: EnvironmentConfig, renderer: str, inputs: Inputs, cache: Path | None
) -> tuple[str, str | None]:
    """The render's output (from the cache when its inputs were rendered before), or the
    failure's message."""
    tool = Path(argv[0])
    stat = tool.stat() if tool.exists() else None
    parts: list[bytes | str] = [
        *argv,
        str(stat and (stat.st_size, stat.st_mtime_ns)),
        repr(env.source),
        env.namespace,
        env.path,
        env.name,
    ]
    for name in sorted(inputs.files):
        parts += [name, inputs.files[name]]
    key = cache_key(parts)
    if cache is not None:
        for suffix, failed in ((".out", False), (".err", True)):
            try:
                text = (cache / f"{key}{suffix}").read_text()
                os.utime(cache / f"{key}{suffix}")  # recently used: pruned last
            except OSError:
                continue
            return ("", text) if failed else (text, None)
    output, failure, lasting = _render_in_copy(argv, env, renderer, inputs)
    if cache is not None and lasting:
        _store(cache, key + (".err" if failure is not None else ".out"), failure or output)
    return output, failure


def _store(cache: Path, name: str, text: str) -> None:
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=cache, delete=False) as out:
            out.write(text)
        os.replace(out.name, cache / name)
        _prune(cache)
    except OSError:
        pass  # a read-only cache only costs the next pass a render


def _prune(cache: Path) -> None:
    """Keeps the most recently used renders: a few per environment of a full repository."""
    entries = sorted(cache.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
    for stale in entries[MAX_CACHED_RENDERS:]:
        stale.unlink(missing_ok=True)


def _render_in_copy(
    argv: list[str], env: EnvironmentConfig, renderer: str, inputs: Inputs
) -> tuple[str, str | None, bool]:
    """Output, failure, and whether the answer lasts (a time-out may not: the cache keeps
    only what the same inputs would always give)."""
    with tempfile.TemporaryDirectory(prefix="gitsync-render-") as tmp:
        work = Path(tmp) / "repo"
        for name, data in inputs.files.items():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            (work / name).write_bytes(data)
        if renderer == "kustomize":
            args = [
                *argv,
                str(work / (env.path or ".")),
                "--load-restrictor",
                "LoadRestrictionsRootOnly",
            ]
        else:
            helm = _helm(env)
            args = [
                *argv,
                helm.release_name or env.name,
                str(work / helm.chart),
                "--namespace",
                env.namespace,
            ]
            for values in helm.values:
                args += ["--values", str(work / values)]
        output, failure, lasting = run_sandboxed(args, Path(tmp), env, MAX_RENDER_BYTES)
        if failure is not None:
            failure = f"{renderer} failed: {clean_message(failure, str(work))}"
        return output, failure, lasting


def sandbox_environment(home: Path, allow_network: bool) -> dict[str, str]:
    """The tool's whole environment: no kubeconfig, an empty home, no git, no network."""
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "HOME": str(home),
        "KUBECONFIG": str(home / "no-kubeconfig"),
        "XDG_CONFIG_HOME": str(home),
        "XDG_CACHE_HOME": str(home),
        "XDG_DATA_HOME": str(home),
        "HELM_CONFIG_HOME": str(home),
        "HELM_CACHE_HOME": str(home),
        "HELM_DATA_HOME": str(home),
        "GIT_TERMINAL_PROMPT": "0",
        "LANG": "C.UTF-8",
    }
    if allow_network:
        env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
    else:
        env["PATH"] = str(home / "no-path")  # kustomize fetches remote bases with git
        for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
            env[proxy] = _NOWHERE
    return env


def _with_memory_limit(args: list[str]) -> list[str]:
    """``args`` run under the address-space limit: a Python that sets it, then execs the tool
    (``preexec_fn`` is unsafe in the agent's threads, and a limit set from outside after the
    start races the Go runtime's first reservations)."""
    code = (
        "import os, resource, sys; "
        f"resource.setrlimit(resource.RLIMIT_AS, ({MAX_RENDER_MEMORY}, {MAX_RENDER_MEMORY})); "
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    return [sys.executable, "-I", "-S", "-c", code, *args]


def run_sandboxed(
    args: list[str], tmp: Path, env: EnvironmentConfig, max_bytes: int
) -> tuple[str, str | None, bool]:
    """Runs the tool with the time and output limits: (output, failure, lasting)."""
    sandbox = sandbox_environment(tmp / "home", env.source.allow_remote)
    with (tmp / "out").open("w+b") as out, (tmp / "err").open("w+b") as err:
        proc = subprocess.Popen(
            _with_memory_limit(args),
            cwd=tmp,
            env=sandbox,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        deadline, why = time.monotonic() + env.source.timeout, None
        while proc.poll() is None:
            if os.fstat(out.fileno()).st_size > max_bytes:
                why = f"the render is over {max_bytes} bytes, the limit per environment"
            elif time.monotonic() > deadline:
                why = (
                    f"{TIMED_OUT} {env.source.timeout:g} s, the limit "
                    "(renderTimeout in gitsync.yaml)"
                )
            if why is not None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return "", why, False
            time.sleep(0.02)
        if os.fstat(out.fileno()).st_size > max_bytes:
            return "", f"the render is over {max_bytes} bytes, the limit per environment", True
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            message = err.read(64 * 1024).decode(errors="replace") or f"exit {proc.returncode}"
            if "out of memory" in message or "cannot allocate memory" in message:
                message = f"the render needed more than {MAX_RENDER_MEMORY >> 20} MiB, the limit"
            return "", message, True
        return out.read().decode(errors="replace"), None, True
