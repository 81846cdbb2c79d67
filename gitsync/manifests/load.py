"""An environment's files at one revision → its desired RayServices, or every problem.

All or nothing: one invalid file makes the whole environment invalid at that revision, so
nothing from it is applied. Pure: the files arrive as bytes (read by gitsync.checkout).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from gitsync.manifests.podpolicy import PodPolicy, enforce, problem_text
from gitsync.manifests.rayservice import check_document
from gitsync.manifests.render import RenderedDocument
from gitsync.manifests.repoconfig import RAYSERVICE, EnvironmentConfig, Kind
from gitsync.manifests.yamldoc import Document, decode, parse_documents
from gitsync.model import (
    Desired,
    DesiredObject,
    DesiredService,
    Problem,
    ServiceKey,
    SourceFile,
)

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
MAX_FILE_BYTES = 1024 * 1024  # the API server's own request limit is about 3 MiB
# Every manifest of one revision is held in memory during a pass: 1,000 RayServices of ~5 KB
# are 5 MB, so this bounds a hostile tree without getting near a real one.
MAX_TREE_BYTES = 32 * 1024 * 1024
# The scale target is 1,000 services per agent (docs/architecture.md, 'Targets'); an
# environment declaring more is a generated or broken tree, and would hold every pass for
# minutes.
MAX_OBJECTS = 2000
# Past this many problems an environment is not read further: the first ones say what is
# wrong, and a generated tree with one mistake per document would otherwise list thousands.
MAX_PROBLEMS = 100


@dataclass(frozen=True)
class EnvironmentManifests:
    environment: EnvironmentConfig
    services: tuple[DesiredService, ...]
    objects: tuple[DesiredObject, ...]
    problems: tuple[Problem, ...]
    files: int
    # The repository's allowedKinds besides RayService: the kinds whose gitsync-managed
    # objects are listed (and pruned) even when Git no longer declares any of them.
    kinds: tuple[Kind, ...] = ()

    @property
    def desired(self) -> dict[ServiceKey, Desired]:
        """Every desired object of the environment by key: RayServices and other kinds."""
        found: dict[ServiceKey, Desired] = {s.key: s for s in self.services}
        found.update((o.key, o) for o in self.objects)
        return found

    @property
    def ok(self) -> bool:
        return not self.problems


def is_manifest(path: str) -> bool:
    return path.endswith(MANIFEST_SUFFIXES)


def load_environment(
    env: EnvironmentConfig,
    files: Sequence[SourceFile],
    *,
    allowed_kinds: tuple[Kind, ...] = (),
    read_problems: Iterable[Problem] = (),
    max_file_bytes: int = MAX_FILE_BYTES,
    max_objects: int = MAX_OBJECTS,
    any_namespace: bool = False,
) -> EnvironmentManifests:
    """``any_namespace``: a manifest naming another namespace than the environment's is not
    a problem (previews, whose transform puts every body in the preview namespace)."""
    reading = _Reading(env, allowed_kinds, any_namespace, max_objects, list(read_problems))
    manifests = sorted((f for f in files if is_manifest(f.path)), key=lambda f: f.path)
    for file in manifests:
        if reading.over_limit or len(reading.problems) >= MAX_PROBLEMS:
            break
        reading.read_file(file, max_file_bytes)
    return reading.result(len(manifests))


def load_rendered(
    env: EnvironmentConfig,
    documents: Sequence[Document],
    *,
    files: int,
    allowed_kinds: tuple[Kind, ...] = (),
    read_problems: Iterable[Problem] = (),
    max_objects: int = MAX_OBJECTS,
    any_namespace: bool = False,
) -> EnvironmentManifests:
    """:func:`load_environment` for a rendered environment: the documents a renderer wrote,
    each placed at its origin file (:mod:`gitsync.manifests.render`); ``files`` is how many
    files the render read."""
    reading = _Reading(env, allowed_kinds, any_namespace, max_objects, list(read_problems))
    if not reading.problems:
        for doc in documents:
            if not reading._within_limits(doc):
                break
            reading._read_document(doc)
    return reading.result(files)


@dataclass
class _Reading:
    """One environment's manifests being read: what they declare so far, and the problems."""

    env: EnvironmentConfig
    allowed_kinds: tuple[Kind, ...]
    any_namespace: bool
    max_objects: int
    problems: list[Problem]
    services: list[DesiredService] = field(default_factory=list)
    objects: list[DesiredObject] = field(default_factory=list)
    seen: dict[ServiceKey, DesiredService | DesiredObject] = field(default_factory=dict)
    declared: int = 0
    over_limit: bool = False

    def result(self, files: int) -> EnvironmentManifests:
        env, problems, services, objects = self.env, self.problems, self.services, self.objects
        if problems:
            return EnvironmentManifests(env, (), (), tuple(sorted(problems, key=_order)), files)
        services.sort(key=lambda s: (s.wave, s.key))
        objects.sort(key=lambda o: (o.wave, o.key))
        kinds = tuple(k for k in self.allowed_kinds if k != RAYSERVICE)
        return EnvironmentManifests(env, tuple(services), tuple(objects), (), files, kinds)

    def read_file(self, file: SourceFile, max_file_bytes: int) -> None:
        if len(file.data) > max_file_bytes:
            self.problems.append(
                Problem(
                    file.path,
                    None,
                    f"file is {len(file.data)} bytes; manifests are limited to "
                    f"{max_file_bytes} bytes",
                )
            )
            return
        text, problem = decode(file.data, file.path)
        if problem is not None or text is None:
            self.problems.extend([problem] if problem else [])
            return
        documents, parse_problems = parse_documents(text, file.path)
        self.problems.extend(parse_problems)
        for doc in documents:
            if not self._within_limits(doc):
                break
            self._read_document(doc)

    def _within_limits(self, doc: Document) -> bool:
        """Count ``doc``; False (and the problem, once) when reading must stop before it."""
        self.declared += 1
        if self.declared > self.max_objects:
            self.over_limit = True  # reported once; nothing more is read
            self.problems.append(
                Problem(
                    doc.file,
                    doc.line,
                    f"environment {self.env.name!r} declares more than {self.max_objects} "
                    "objects, the limit per environment; split it into several environments",
                )
            )
            return False
        if len(self.problems) >= MAX_PROBLEMS:
            self.problems.append(
                Problem(
                    doc.file,
                    doc.line,
                    f"more than {MAX_PROBLEMS} problems in environment {self.env.name!r}; "
                    "reading stopped here: fix these first",
                )
            )
            return False
        return True

    def _read_document(self, doc: Document) -> None:
        env = self.env
        found, doc_problems = check_document(
            doc, env, self.allowed_kinds, any_namespace=self.any_namespace
        )
        self.problems.extend(doc_problems)
        if found is None:
            return
        identity = found.key
        if identity in self.seen:
            first = self.seen[identity]
            what = str(found.key)
            self.problems.append(
                Problem(
                    doc.file,
                    doc.line,
                    f"{what} is declared twice in environment "
                    f"{env.name!r} (first at {first.source}:{first.line})",
                )
            )
            return
        self.seen[identity] = found
        if isinstance(found, DesiredService) and env.policy is not None:
            found, refused = _with_policy(found, doc, env.policy, f"{env.name}'s policy")
            self.problems.extend(refused)
        if isinstance(found, DesiredService):
            if isinstance(doc, RenderedDocument) and doc.patched:
                found = replace(found, patched=dict(doc.patched))
            self.services.append(found)
        else:
            self.objects.append(found)


def _with_policy(
    service: DesiredService, doc: Document, policy: PodPolicy, where: str
) -> tuple[DesiredService, list[Problem]]:
    """The service as its pod-spec policy lets it run, and what the policy refuses."""
    result = enforce(service.manifest, policy)
    refused = [doc.problem(problem_text(v, where), *v.path) for v in result.refused]
    return replace(service, manifest=result.manifest), refused


def _order(problem: Problem) -> tuple[str, int]:
    return problem.file, problem.line or 0
