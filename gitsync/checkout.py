"""Reads a materialised tree (a checkout at one revision) from disk, safely.

Owns what only the file system can tell: symlinks that leave the repository or the
environment folder (or loop), unreadable files, missing folders, and the size limits on what
is read into memory (per file, and per revision across every environment). Hands bytes to the
pure :mod:`gitsync.manifests` stage and never interprets them itself.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import sys
import tempfile
from collections.abc import Collection
from dataclasses import dataclass, replace
from pathlib import Path

from gitsync.manifests.load import (
    MAX_FILE_BYTES,
    MAX_TREE_BYTES,
    EnvironmentManifests,
    is_manifest,
    load_environment,
    load_rendered,
)
from gitsync.manifests.repoconfig import (
    REPO_CONFIG_FILE,
    EnvironmentConfig,
    RepoConfig,
    load_repo_config,
)
from gitsync.manifests.yamldoc import Document, decode, parse_documents
from gitsync.model import Problem, SourceFile
from gitsync.renderer import TIMED_OUT, render_environment, renderer_of
from gitsync.windows import problems as window_problems


@dataclass(frozen=True)
class TreeReport:
    """Everything ``gitsync validate`` knows about one tree."""

    config: RepoConfig | None
    environments: tuple[EnvironmentManifests, ...]
    problems: tuple[Problem, ...]  # config problems and every environment's

    @property
    def ok(self) -> bool:
        return not self.problems


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


class ByteBudget:
    """Bytes left for the manifests of one revision, shared by all its environments."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit
        self.exceeded = False


def _resolve(path: Path) -> Path | None:
    """``path`` with every symlink followed, or None for a loop."""
    try:
        return path.resolve()
    except (RuntimeError, OSError):  # RuntimeError: Python 3.11's "Symlink loop"
        return None


def read_environment_files(
    root: Path,
    env_path: str,
    *,
    max_file_bytes: int = MAX_FILE_BYTES,
    budget: ByteBudget | None = None,
) -> tuple[list[SourceFile], list[Problem]]:
    """Every manifest file under ``root/env_path`` with its repo-relative path.

    Hidden entries (``.git``…) are skipped. A symlink is followed only while it stays inside
    the environment folder; one that leaves the repository or the folder, or loops, is a
    problem. A file over the size limit, or over what is left of the revision's ``budget``,
    is reported without being read.
    """
    budget = budget or ByteBudget(MAX_TREE_BYTES)
    root = root.resolve()
    folder = (root / env_path).resolve()
    files: list[SourceFile] = []
    problems: list[Problem] = []
    visited: set[Path] = set()
    pending = [root / env_path]
    while pending:
        directory = pending.pop()
        real_dir = directory.resolve()
        if real_dir in visited:
            continue
        visited.add(real_dir)
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            relative = Path(entry.path).relative_to(root).as_posix()
            path = Path(entry.path)
            if entry.is_symlink():
                why = _symlink_problem(path, root, folder, env_path)
                if why is not None:
                    problems.append(Problem(relative, None, why))
                    continue
            # DirEntry answers from the directory listing (follows symlinks, checked above):
            # no extra system call per file for a tree of thousands of manifests.
            if entry.is_dir():
                pending.append(path)
            elif is_manifest(entry.name) and entry.is_file():
                _read_manifest(entry, relative, max_file_bytes, budget, files, problems)
    return files, problems


def _symlink_problem(path: Path, root: Path, folder: Path, env_path: str) -> str | None:
    """Why the symlink ``path`` cannot be followed, or None when it stays in ``folder``."""
    target = _resolve(path)
    if target is not None and not _inside(target, root):
        return f"symlink points outside the repository (to {os.readlink(path)})"
    if target is not None and not _inside(target, folder):
        return (
            f"symlink leaves the environment folder {env_path!r} "
            f"(to {os.readlink(path)}); copy the file instead"
        )
    if target is None or not target.exists():  # exists() is False for a loop
        return f"symlink is broken or loops (to {os.readlink(path)}); replace it with the file"
    return None


def _read_manifest(
    entry: os.DirEntry[str],
    relative: str,
    max_file_bytes: int,
    budget: ByteBudget,
    files: list[SourceFile],
    problems: list[Problem],
) -> None:
    """Read one manifest file into ``files``, or say in ``problems`` why it was not read."""
    size = entry.stat().st_size
    if size > max_file_bytes:
        problems.append(
            Problem(
                relative,
                None,
                f"file is {size} bytes; manifests are limited to {max_file_bytes} bytes",
            )
        )
        return
    if size > budget.left:
        if not budget.exceeded:  # once: every later file would say the same
            problems.append(
                Problem(
                    relative,
                    None,
                    f"the revision's manifests add up to more than {budget.limit} "
                    "bytes, the limit per revision; this file and the ones after "
                    "it were not read: remove files or split the repository",
                )
            )
        budget.exceeded = True
        return
    budget.left -= size
    try:
        files.append(SourceFile(relative, Path(entry.path).read_bytes()))
    except OSError as exc:
        problems.append(Problem(relative, None, f"cannot read file: {exc.strerror}"))


def _env_problem(env: EnvironmentConfig, why: str) -> Problem:
    return Problem(REPO_CONFIG_FILE, env.line, f"environment {env.name!r}: path {env.path!r} {why}")


def _read_repo_config(root: Path, max_file_bytes: int) -> tuple[bytes | None, Problem | None]:
    """The bytes of ``gitsync.yaml``: a regular file at the root, within the file limit."""
    path = root / REPO_CONFIG_FILE
    if path.is_symlink():
        target = os.readlink(path)
        return None, Problem(
            REPO_CONFIG_FILE,
            None,
            f"{REPO_CONFIG_FILE} is a symlink (to {target}); it must be a regular file",
        )
    if not path.is_file():
        return None, Problem(
            REPO_CONFIG_FILE,
            None,
            f"no {REPO_CONFIG_FILE} at the repository root ({root}); see examples/repo-layout/",
        )
    size = path.stat().st_size
    if size > max_file_bytes:
        return None, Problem(
            REPO_CONFIG_FILE, None, f"file is {size} bytes; it is limited to {max_file_bytes}"
        )
    return path.read_bytes(), None


def _environment_folder(root: Path, env: EnvironmentConfig) -> Problem | None:
    try:
        folder = (root / env.path).resolve(strict=True)
    except FileNotFoundError:
        return _env_problem(env, "is not a folder in this revision")
    except (RuntimeError, OSError) as exc:  # a loop, a name too long for the file system
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "loops"
        return _env_problem(env, f"cannot be followed ({why})")
    if not _inside(folder, root.resolve()):
        return _env_problem(env, "is a symlink out of the repository")
    if not folder.is_dir():
        return _env_problem(env, "is not a folder in this revision")
    return None


def _repo_config(root: Path, max_file_bytes: int) -> tuple[RepoConfig | None, list[Problem]]:
    data, unreadable = _read_repo_config(root, max_file_bytes)
    if data is None:
        return None, [p for p in (unreadable,) if p is not None]
    text, undecodable = decode(data, REPO_CONFIG_FILE)
    if text is None:
        return None, [p for p in (undecodable,) if p is not None]
    config, problems = load_repo_config(text)
    if config is None:
        return None, list(problems)
    unreadable_windows = window_problems(config)
    if unreadable_windows:
        return None, list(unreadable_windows)
    return config, list(problems)


def read_repo_config(root: Path) -> RepoConfig | None:
    """A checkout's ``gitsync.yaml`` alone (None when it is invalid): what needs only the
    config reads neither manifests nor renders."""
    return _repo_config(root, MAX_FILE_BYTES)[0]


def read_tree(
    root: Path,
    *,
    max_file_bytes: int = MAX_FILE_BYTES,
    max_tree_bytes: int = MAX_TREE_BYTES,
    render_cache: Path | None = None,
) -> TreeReport:
    """Loads ``gitsync.yaml`` and every environment of a checkout (``render_cache``: where
    renders are kept by their inputs, :mod:`gitsync.renderer`)."""
    config, problems = _repo_config(root, max_file_bytes)
    if config is None:
        return TreeReport(None, (), tuple(problems))
    environments = []
    all_problems: list[Problem] = []
    seen: set[Problem] = set()
    budget = ByteBudget(max_tree_bytes)
    for env in config.environments:
        loaded = read_environment(
            root,
            config,
            env,
            max_file_bytes=max_file_bytes,
            budget=budget,
            render_cache=render_cache,
        )
        environments.append(loaded)
        # A base two overlays share is one problem, reported once.
        all_problems.extend(p for p in loaded.problems if p not in seen)
        seen.update(loaded.problems)
    return TreeReport(config, tuple(environments), tuple(all_problems))


def read_environment(
    root: Path,
    config: RepoConfig,
    env: EnvironmentConfig,
    *,
    max_file_bytes: int = MAX_FILE_BYTES,
    budget: ByteBudget | None = None,
    any_namespace: bool = False,
    render_cache: Path | None = None,
) -> EnvironmentManifests:
    """One environment of a checkout, rendered when it is a kustomization or a chart;
    ``any_namespace`` as in :func:`load_environment`."""
    files: list[SourceFile] = []
    folder_problem = _environment_folder(root, env)
    renderer = renderer_of(root, env) if folder_problem is None else "plain"
    if folder_problem is not None:
        read_problems = [folder_problem]
    elif renderer != "plain":
        documents, problems, count = render_environment(root, env, renderer, render_cache)
        return load_rendered(
            env,
            documents,
            files=count,
            allowed_kinds=config.allowed_kinds,
            read_problems=problems,
            any_namespace=any_namespace,
        )
    else:
        files, read_problems = read_environment_files(
            root,
            env.path,
            max_file_bytes=max_file_bytes,
            budget=budget or ByteBudget(MAX_TREE_BYTES),
        )
    return load_environment(
        env,
        files,
        allowed_kinds=config.allowed_kinds,
        read_problems=read_problems,
        max_file_bytes=max_file_bytes,
        any_namespace=any_namespace,
    )


def document_at(root: Path, source: str, line: int) -> Document | None:
    """The document starting at ``line`` of ``source`` in a checkout (read again, for the
    line of a field inside it), or None when it cannot be read."""
    path = root / source
    try:
        if not _inside(path.resolve(strict=True), root.resolve()):
            return None
        data = path.read_bytes()[: MAX_FILE_BYTES + 1]
    except (OSError, RuntimeError):
        return None
    text, _ = decode(data, source)
    documents, _ = parse_documents(text or "", source)
    return next((doc for doc in documents if doc.line == line), None)


def read_tree_cached(
    root: Path, renders: Path | None = None, environments: Collection[str] | None = None
) -> TreeReport:
    """:func:`read_tree` for a revision's tree that never changes once materialised (the
    git source's ``trees/<sha>``): the report is kept next to the tree, so a later pass at the
    same revision, in this process or the next, skips parsing (1,000 RayServices: about
    0.7 s). The file is keyed by the parser's own source, so a gitsync that validates
    differently never reads an older one's verdict. Renders are kept in ``renders`` (default:
    ``renders`` beside the tree).

    Each environment's manifests are kept in a file of their own: with ``environments``,
    only theirs are read (the report's ``environments`` holds those alone; its config and
    problems are whole), so a drift check of one environment does not unpickle every other's
    (3,000 RayServices in 10 environments: a tenth of a second rather than one)."""
    stem = f"{root.name}.report-{_parser_fingerprint()}"
    index = root.with_name(f"{stem}.pickle")
    kept = _unpickled(index)
    if isinstance(kept, _Index):
        wanted = [
            n for n, name in enumerate(kept.names) if environments is None or name in environments
        ]
        found = [_unpickled(root.with_name(f"{stem}.{n}.pickle")) for n in wanted]
        parts = tuple(part for part in found if isinstance(part, EnvironmentManifests))
        if len(parts) == len(wanted):
            return replace(kept.skeleton, environments=parts)
    report = read_tree(root, render_cache=renders or root.parent / "renders")
    if any(TIMED_OUT in p.message for p in report.problems):
        return report  # the next pass renders again
    try:
        for n, loaded in enumerate(report.environments):
            _pickle(root.with_name(f"{stem}.{n}.pickle"), loaded)
        names = tuple(loaded.environment.name for loaded in report.environments)
        _pickle(index, _Index(replace(report, environments=()), names))  # last: all are in
    except OSError:
        pass  # a read-only cache only costs the next pass the parse
    if environments is None:
        return report
    return replace(
        report,
        environments=tuple(e for e in report.environments if e.environment.name in environments),
    )


@dataclass(frozen=True)
class _Index:
    """A cached report without its environments' manifests (each in a file of its own),
    and the names of those environments, in order."""

    skeleton: TreeReport
    names: tuple[str, ...]


def _unpickled(path: Path) -> object:
    try:
        with path.open("rb") as file:
            # Our own file, next to the tree we materialised: it is trusted as the tree is.
            return pickle.load(file)  # noqa: S301
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError, TypeError):
        return None  # absent, partial or from another layout: read the tree


def _pickle(path: Path, value: object) -> None:
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f"{path.name}.", delete=False) as out:
        pickle.dump(value, out, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(out.name, path)


@functools.cache
def _parser_fingerprint() -> str:
    digest = hashlib.sha256(sys.version.encode())
    package = Path(__file__).resolve().parent
    for source in sorted([package / "checkout.py", package / "model.py", package / "renderer.py",
                          *(package / "manifests").glob("*.py")]):  # fmt: skip
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]
