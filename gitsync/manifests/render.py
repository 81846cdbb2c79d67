"""Rendered environments (kustomize overlays, Helm charts): what a render may read, and its
output mapped back to the files the user wrote.

Owns the checks made before a renderer runs (a kustomization naming a remote base, an
absolute path or a folder outside the repository; a chart depending on a repository), the
cleaning of a renderer's message (no path outside the repository), the cache key of a render,
and the mapping of each rendered document to its origin: the resource file declaring it (or
kustomize's ``config.kubernetes.io/origin`` annotation when a kustomization asks for it) or
Helm's ``# Source:`` comment, and, for a field a patch set, the patch. Pure: texts in, documents and
problems out; :mod:`gitsync.renderer` runs the tools.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import yaml

from gitsync.manifests.yamldoc import Document, Path, parse_documents
from gitsync.model import Problem

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
ORIGIN = "config.kubernetes.io/origin"
TRANSFORMATIONS = "alpha.config.kubernetes.io/transformations"
# Fields of a kustomization that name other files or folders, as kustomize v5 reads them.
_LISTS = (
    "resources",
    "bases",
    "components",
    "crds",
    "configurations",
    "generators",
    "transformers",
    "validators",
    "patchesStrategicMerge",
)
_GENERATORS = ("configMapGenerator", "secretGenerator")
_REMOTE = re.compile(r"^(?:[a-z][a-z0-9+.-]*://|git@|github\.com/|gitlab\.com/|bitbucket\.org/)")
_SOURCE = re.compile(r"^# Source: (.+)$", re.MULTILINE)
_SEPARATOR = re.compile(r"^---[ \t]*$", re.MULTILINE)


@dataclass(frozen=True)
class Reference:
    """A file or folder a kustomization names: as written, resolved repo-relative, and where."""

    written: str
    path: str  # repo-relative, normalised
    file: str  # the kustomization that names it
    line: int
    field: str


@dataclass(frozen=True)
class PatchSite:
    """A patch of a kustomization: the resource it targets and the line of each field it sets."""

    file: str
    kind: str | None
    name: str | None
    lines: Mapping[Path, int]


@dataclass(frozen=True)
class ImageSite:
    """An entry of a kustomization's ``images:``: the image name it matches, what it sets,
    and the entry's line."""

    file: str
    line: int
    name: str
    new_name: str | None = None
    new_tag: str | None = None
    digest: str | None = None

    def wrote(self, image: str) -> bool:
        """Whether ``image`` is what this entry makes of an image named ``name``: its name
        (``newName``, else ``name``), its tag (``newTag``) and its digest, as set."""
        if self.new_name is None and self.new_tag is None and self.digest is None:
            return False  # an entry that changes nothing
        name, tag, digest = split_image(image)
        return (
            name == (self.new_name or self.name)
            and self.new_tag in (None, tag)
            and self.digest in (None, digest)
        )


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """``name[:tag][@digest]`` → (name, tag, digest), as kustomize's ``image.Split`` reads it
    (a ``:`` before the last ``/`` is a registry's port, not a tag)."""
    name, _, digest = image.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1 :], digest or None
    return name, None, digest or None


@dataclass(frozen=True)
class Kustomization:
    """What one kustomization reads: folders, files and patches, and what is refused."""

    references: tuple[Reference, ...]
    patches: tuple[tuple[Reference, str | None, str | None], ...]  # patch file, target
    problems: tuple[Problem, ...]
    images: tuple[ImageSite, ...] = ()


def _remote_problem(ref: str, file: str, line: int, field_name: str) -> Problem | None:
    if _REMOTE.match(ref) or "?ref=" in ref or "//" in ref.split("?", maxsplit=1)[0][1:]:
        return Problem(
            file,
            line,
            f"{field_name}: {ref!r} is remote; rendering has no network: vendor the base into "
            "this repository (or set allowRemote: true on the environment in gitsync.yaml)",
        )
    return None


def resolve(folder: str, written: str) -> str | None:
    """``written`` (relative to the repo-relative ``folder``) as a repo-relative path, or
    None when it is absolute or leaves the repository."""
    if written.startswith("/"):
        return None
    joined = posixpath.normpath(posixpath.join(folder or ".", written))
    if joined == ".." or joined.startswith("../"):
        return None
    return "" if joined == "." else joined


def read_kustomization(text: str, file: str, *, allow_remote: bool = False) -> Kustomization:
    """The references of the kustomization ``file`` (repo-relative) and what is refused."""
    documents, problems = parse_documents(text, file)
    if problems or len(documents) != 1 or not isinstance(documents[0].data, Mapping):
        return Kustomization((), (), tuple(problems or [Problem(file, 1, "not a kustomization")]))
    doc = documents[0]
    found: list[tuple[str, Path, str]] = []
    patches: list[tuple[str, Path, str | None, str | None]] = []
    for key in _LISTS:
        for index, item in enumerate(_list(doc.data.get(key))):
            if isinstance(item, str) and "\n" not in item:  # an inline patch has lines
                found.append((item, (key, index), key))
                if key == "patchesStrategicMerge":
                    patches.append((item, (key, index), None, None))
    for key in ("patches", "patchesJson6902", "replacements"):
        for index, item in enumerate(_list(doc.data.get(key))):
            if isinstance(item, Mapping) and isinstance(item.get("path"), str):
                found.append((item["path"], (key, index, "path"), key))
                target = _mapping(item.get("target"))
                if key != "replacements":
                    patches.append(
                        (item["path"], (key, index, "path"), target.get("kind"), target.get("name"))
                    )
    openapi = _mapping(doc.data.get("openapi"))
    if isinstance(openapi.get("path"), str):
        found.append((openapi["path"], ("openapi", "path"), "openapi"))
    found.extend(_generator_files(doc))
    return replace(_checked(doc, found, patches, allow_remote), images=tuple(_images(doc)))


def _images(doc: Document) -> Iterable[ImageSite]:
    """The ``images:`` entries, each at its line (the image transformer kustomize runs on
    every container of every resource the kustomization builds)."""
    for index, item in enumerate(_list(doc.data.get("images"))):
        if isinstance(item, Mapping) and isinstance(item.get("name"), str):
            written = {k: item.get(k) for k in ("newName", "newTag", "digest")}
            text = {k: None if v is None else str(v) for k, v in written.items()}
            yield ImageSite(
                doc.file,
                doc.line_of("images", index),
                item["name"],
                text["newName"],
                text["newTag"],
                text["digest"],
            )


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _generator_files(doc: Document) -> Iterable[tuple[str, Path, str]]:
    for key in _GENERATORS:
        for index, item in enumerate(_list(doc.data.get(key))):
            if not isinstance(item, Mapping):
                continue
            for sub in ("files", "envs"):
                for at, entry in enumerate(_list(item.get(sub))):
                    if isinstance(entry, str):
                        yield entry.split("=", 1)[-1], (key, index, sub, at), key
            if isinstance(item.get("env"), str):
                yield item["env"], (key, index, "env"), key


def _checked(
    doc: Document,
    found: list[tuple[str, Path, str]],
    patches: list[tuple[str, Path, str | None, str | None]],
    allow_remote: bool,
) -> Kustomization:
    folder = posixpath.dirname(doc.file)
    problems: list[Problem] = []
    refs: dict[Path, Reference] = {}
    for written, at, key in found:
        line = doc.line_of(*at)
        remote = _remote_problem(written, doc.file, line, key)
        if remote is not None:
            problems.extend([] if allow_remote else [remote])
            continue
        path = resolve(folder, written)
        if path is None:
            problems.append(
                Problem(
                    doc.file,
                    line,
                    f"{key}: {written!r} is outside the "
                    "repository; rendering reads only this repository's files",
                )
            )
            continue
        refs[at] = Reference(written, path, doc.file, line, key)
    if "helmCharts" in doc.data or "helmGlobals" in doc.data:
        problems.append(
            doc.problem(
                "helmCharts: kustomize's Helm inflator is off; declare "
                "the chart as the environment's helm source in gitsync.yaml",
                "helmCharts",
            )
        )
    sites = tuple((refs[at], kind, name) for _, at, kind, name in patches if at in refs)
    return Kustomization(tuple(refs.values()), sites, tuple(problems))


def patch_site(file: str, text: str, kind: str | None, name: str | None) -> list[PatchSite]:
    """The patch file's documents as sites: a strategic-merge patch names its own target; a
    JSON 6902 patch (a list of operations) names each operation's path."""
    documents, problems = parse_documents(text, file)
    sites: list[PatchSite] = []
    for doc in [] if problems else documents:
        if isinstance(doc.data, Mapping):
            meta = _mapping(doc.data.get("metadata"))
            sites.append(
                PatchSite(file, kind or doc.data.get("kind"), name or meta.get("name"), doc.lines)
            )
        elif isinstance(doc.data, list):
            lines = {}
            for index, op in enumerate(doc.data):
                if isinstance(op, Mapping) and isinstance(op.get("path"), str):
                    lines[_pointer(op["path"])] = doc.line_of(index, "value")
            sites.append(PatchSite(file, kind, name, lines))
    return sites


def _pointer(pointer: str) -> Path:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.strip("/").split("/")]
    return tuple(int(p) if p.isdigit() else p for p in parts if p != "")


def clean_message(text: str, workdir: str, *, limit: int = 2000) -> str:
    """A renderer's message without the temporary folder and any other absolute path."""
    text = text.replace(workdir.rstrip("/") + "/", "").replace(workdir, ".")
    text = re.sub(r"(?<![\w.])/(?:[\w.@+-]+/)*[\w.@+-]+", "<outside the repository>", text)
    text = " ".join(line.strip() for line in text.strip().splitlines() if line.strip())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def cache_key(parts: Iterable[bytes | str]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


@dataclass(frozen=True)
class RenderedDocument(Document):
    """A rendered resource read as if from its origin file; a field a patch set is reported
    at the patch (``patched``: path → (file, line))."""

    patched: Mapping[Path, tuple[str, int]] = field(default_factory=dict, repr=False)

    def problem(self, message: str, *path: str | int) -> Problem:
        for end in range(len(path), 0, -1):
            site = self.patched.get(tuple(path[:end]))
            if site is not None:
                return Problem(site[0], site[1], message)
        return super().problem(message, *path)


def _leaves(value: Any, at: Path = ()) -> Iterable[tuple[Path, Any]]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _leaves(item, (*at, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, (*at, index))
    else:
        yield at, value


def _at(value: Any, path: Path) -> Any:
    for part in path:
        try:
            value = value[part]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return value


_MISSING = object()


def _strip_annotations(data: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The object without kustomize's build annotations, and its origin text."""
    meta = data.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("annotations"), dict):
        return data, None
    annotations = dict(meta["annotations"])
    origin = annotations.pop(ORIGIN, None)
    annotations.pop(TRANSFORMATIONS, None)
    meta = (
        {**meta, "annotations": annotations}
        if annotations
        else {k: v for k, v in meta.items() if k != "annotations"}
    )
    return {**data, "metadata": meta}, origin if isinstance(origin, str) else None


def origin_path(origin: str | None, folder: str) -> str | None:
    """The repo-relative file of a kustomize origin annotation (``path`` is relative to the
    kustomization built; a generated object names the kustomization in ``configuredIn``)."""
    if origin is None:
        return None
    try:
        data = yaml.safe_load(origin)
    except yaml.YAMLError:
        return None
    if not isinstance(data, Mapping) or data.get("repo"):
        return None
    written = data.get("path") or data.get("configuredIn")
    return resolve(folder, written) if isinstance(written, str) else None


def _find_origin(
    sources: Mapping[str, list[Document]], file: str | None, data: Any
) -> Document | None:
    """The document the rendered ``data`` came from: in ``file`` when the origin annotation
    names it, else in any resource file. Same kind, and the longest name that the rendered
    name contains (kustomize adds prefixes and suffixes)."""
    kind = data.get("kind") if isinstance(data, Mapping) else None
    rendered = _at(data, ("metadata", "name"))
    best: tuple[int, Document] | None = None
    for path in [file] if file is not None else sorted(sources):
        for doc in sources.get(path, []):
            name = _at(doc.data, ("metadata", "name"))
            if (
                isinstance(doc.data, Mapping)
                and doc.data.get("kind") == kind
                and isinstance(name, str)
                and isinstance(rendered, str)
                and name in rendered
                and (best is None or len(name) > best[0])
            ):
                best = (len(name), doc)
    return best[1] if best is not None else None


def _patched(
    origin: Document, data: Any, patches: Iterable[PatchSite], images: Iterable[ImageSite] = ()
) -> dict[Path, tuple[str, int]]:
    """Fields whose rendered value differs from the origin's, and that a patch of this
    resource sets, or an ``images:`` entry (an ``image`` the entry's name, tag and digest
    account for: kustomize runs the image transformer after the patches)."""
    names = {_at(origin.data, ("metadata", "name")), _at(data, ("metadata", "name"))}
    kind = _at(data, ("kind",))
    sites = [s for s in patches if s.kind in (None, kind) and (s.name is None or s.name in names)]
    images = list(images)
    found: dict[Path, tuple[str, int]] = {}
    if not sites and not images:
        return found
    for path, value in _leaves(data):
        if _at(origin.data, path) == value:
            continue
        image = _image_site(images, path, value)
        if image is not None:
            found[path] = (image.file, image.line)
            continue
        for end in range(len(path), 0, -1):
            site = next((s for s in sites if path[:end] in s.lines), None)
            if site is not None:
                found[path[:end]] = (site.file, site.lines[path[:end]])
                break
    return found


def _image_site(images: list[ImageSite], path: Path, value: Any) -> ImageSite | None:
    """The ``images:`` entry that wrote the container image at ``path``: the first that
    accounts for it, the environment's own kustomization before the bases it builds on."""
    if not path or path[-1] != "image" or not isinstance(value, str):
        return None
    return next((site for site in images if site.wrote(value)), None)


def parse_stream(output: str, file: str) -> tuple[list[Document], list[Problem]]:
    """A renderer's output, one document at a time: each is bounded like a file of its own
    (1,000 rendered RayServices are far more values than one file may hold), and keeps its
    line in the whole output."""
    separators = list(_SEPARATOR.finditer(output))
    starts = [0, *(m.end() for m in separators)]
    ends = [*(m.start() for m in separators), len(output)]
    documents: list[Document] = []
    lines, counted = 0, 0  # newlines in output[:counted]
    for start, end in zip(starts, ends, strict=True):
        lines += output.count("\n", counted, start)
        counted = start
        found, problems = parse_documents(output[start:end], file, offset=lines)
        if problems:
            return [], problems
        documents.extend(found)
    return documents, []


def kustomize_documents(
    output: str,
    folder: str,
    sources: Mapping[str, str],
    resources: Iterable[str],
    patches: Iterable[PatchSite] = (),
    images: Iterable[ImageSite] = (),
) -> tuple[list[Document], list[Problem]]:
    """``kustomize build``'s output as documents read from their origin files (``sources``:
    repo-relative path → text; ``resources``: the files kustomizations list as resources);
    ``folder`` is the environment's kustomization; ``patches`` and ``images`` (the
    environment's kustomization's first) place the fields they set.

    The origin is the ``config.kubernetes.io/origin`` annotation when the kustomization asks
    for it, else the resource file declaring the same kind and name: gitsync does not add
    ``buildMetadata: [originAnnotations]`` itself, because kustomize v5 (as kubectl v1.35
    embeds it) then applies patches about 30 times slower (100 services each patched: 2 s →
    57 s), and the slowdown grows with the number of resources."""
    rendered, problems = parse_stream(output, f"{folder}/kustomization.yaml (rendered)")
    if problems:
        return [], problems
    parsed = {f: parse_documents(sources.get(f, ""), f)[0] for f in resources if f in sources}
    patch_list, image_list = list(patches), list(images)
    index: dict[tuple[str, str], Document] = {}  # (kind, name) → first declaring document
    for found in (d for file in sorted(parsed) for d in parsed[file]):
        key = (_at(found.data, ("kind",)), _at(found.data, ("metadata", "name")))
        if all(isinstance(k, str) for k in key):
            index.setdefault(key, found)
    documents: list[Document] = []
    for doc in rendered:
        data, origin = (
            _strip_annotations(doc.data) if isinstance(doc.data, dict) else (doc.data, None)
        )
        named = origin_path(origin, folder)
        if named is not None and named not in parsed:
            parsed[named] = parse_documents(sources.get(named, ""), named)[0]
        key = (_at(data, ("kind",)), _at(data, ("metadata", "name")))
        exact = index.get(key) if all(isinstance(k, str) for k in key) else None
        source = exact if exact is not None and named in (None, exact.file) else None
        source = source or _find_origin(parsed, named, data)
        file = source.file if source is not None else named or f"{folder}/kustomization.yaml"
        documents.append(_as_rendered(file, data, source, patch_list, image_list))
    return documents, []


def _as_rendered(
    file: str,
    data: Any,
    source: Document | None,
    patches: list[PatchSite],
    images: list[ImageSite],
) -> Document:
    if source is None:
        return RenderedDocument(file, data, 1, {})
    unchanged = frozenset(p for p in source.block_scalars if _at(data, p) == _at(source.data, p))
    patched = _patched(source, data, patches, images)
    return RenderedDocument(file, data, source.line, source.lines, 0, unchanged, patched)


def helm_documents(
    output: str, chart: str, sources: Mapping[str, str]
) -> tuple[list[Document], list[Problem]]:
    """``helm template``'s output as documents read from their templates (``# Source:
    <chart name>/templates/…`` names the template; ``chart`` is the chart's repo-relative
    folder); a field is placed at the template's first line that writes its key."""
    rendered, problems = parse_stream(output, f"{chart} (rendered)")
    if problems:
        return [], problems
    marks = [
        (output.count("\n", 0, m.start()) + 1, m.group(1).strip()) for m in _SOURCE.finditer(output)
    ]
    documents: list[Document] = []
    for doc in rendered:
        written = next((s for line, s in reversed(marks) if line < doc.line + doc.offset), None)
        file = f"{chart}/{written.split('/', 1)[1]}" if written and "/" in written else chart
        lines = _template_lines(sources.get(file, ""), doc)
        documents.append(Document(file, doc.data, 1, lines))
    return documents, []


def _template_lines(template: str, doc: Document) -> dict[Path, int]:
    """Each rendered field's line: the first line of the template writing its last key."""
    text_lines = template.splitlines()
    found: dict[Path, int] = {}
    for path in doc.lines:
        key = next((p for p in reversed(path) if isinstance(p, str)), None)
        if key is None:
            continue
        pattern = re.compile(rf"^\s*(?:-\s+)?{re.escape(key)}:")
        number = next((i + 1 for i, t in enumerate(text_lines) if pattern.match(t)), None)
        if number is not None:
            found[path] = number
    return found


def chart_problems(chart: str, chart_yaml: str, vendored: set[str]) -> list[Problem]:
    """A chart whose dependency is not vendored under ``charts/``: ``helm template`` would
    need a repository (refused: rendering has no network)."""
    file = f"{chart}/Chart.yaml"
    documents, problems = parse_documents(chart_yaml, file)
    if problems or not documents or not isinstance(documents[0].data, Mapping):
        return problems or [Problem(file, 1, "Chart.yaml must be a mapping")]
    doc = documents[0]
    out = []
    for index, dep in enumerate(_list(doc.data.get("dependencies"))):
        if not isinstance(dep, Mapping):
            continue
        name, repo = str(dep.get("name", "")), str(dep.get("repository", ""))
        if repo.startswith("file://") or any(v.startswith(name) for v in vendored):
            continue
        out.append(
            doc.problem(
                f"dependency {name!r} comes from {repo or 'a repository'}; rendering has no "
                f"network: vendor it under {chart}/charts/ (helm dependency build, then commit it)",
                "dependencies",
                index,
            )
        )
    return out
