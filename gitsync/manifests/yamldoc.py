"""YAML text → documents that remember where every value was written.

Stricter than PyYAML's ``safe_load`` in the ways Kubernetes is strict: duplicate keys are
errors, timestamps stay strings (as Kubernetes' YAML-to-JSON decoding keeps them), keys are
strings. Aliases are expanded with a bound on the total size, so a "billion laughs" document
is an error instead of an out-of-memory. Pure: text in, values and problems out.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from gitsync.model import Problem

Path = tuple[str | int, ...]

# Far above any real manifest (a large RayService is a few thousand nodes), far below what
# would hurt the agent's memory.
MAX_NODES = 100_000

_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SCALARS = yaml.SafeLoader("")  # only its scalar constructors are used, never its stream
_UNDEFINED = yaml.SafeLoader.yaml_constructors[None]  # raises "could not determine a constructor"

TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
MERGE_TAG = "tag:yaml.org,2002:merge"
STR_TAG = "tag:yaml.org,2002:str"
# Scalars whose value is the text itself: strings, and timestamps (kept as strings, as
# Kubernetes' YAML-to-JSON decoding keeps them).
_AS_WRITTEN = frozenset({STR_TAG, TIMESTAMP_TAG})


@dataclass(frozen=True)
class Document:
    """One YAML document: its value and the 1-based line of every value in it."""

    file: str
    data: Any
    line: int
    lines: Mapping[Path, int] = field(repr=False)
    offset: int = 0
    block_scalars: frozenset[Path] = field(
        default=frozenset(), repr=False
    )  # `|` strings  # added to every line: a document embedded in another file's string

    def line_of(self, *path: str | int) -> int:
        """The line of ``path``, or of its nearest written ancestor."""
        for end in range(len(path), -1, -1):
            found = self.lines.get(tuple(path[:end]))
            if found is not None:
                return found + self.offset
        return self.line + self.offset

    def problem(self, message: str, *path: str | int) -> Problem:
        return Problem(self.file, self.line_of(*path), message)


def dotted(path: tuple[str | int, ...]) -> str:
    """``("spec", "workerGroupSpecs", 0, "replicas")`` → ``spec.workerGroupSpecs[0].replicas``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


class _TooLarge(Exception):
    pass


class _Invalid(Exception):
    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.line = line


class _Builder:
    def __init__(self, max_nodes: int) -> None:
        self.remaining = max_nodes
        self.lines: dict[Path, int] = {}
        self.block_scalars: set[Path] = set()

    def build(self, node: yaml.Node, path: Path) -> Any:
        self.remaining -= 1
        if self.remaining < 0:
            raise _TooLarge
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.ScalarNode):
            if node.style == "|":
                self.block_scalars.add(path)
            if node.tag in _AS_WRITTEN:  # most scalars: no constructor call
                return node.value
            # The tag's constructor itself, not construct_object: that one caches every node it
            # builds in the (shared) constructor, which a long-running agent would never free.
            construct: Any = _SCALARS.yaml_constructors.get(node.tag, _UNDEFINED)
            return construct(_SCALARS, node)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, index)) for index, item in enumerate(node.value)]
        if isinstance(node, yaml.MappingNode):
            result: dict[str, Any] = {}
            for key_node, value_node in node.value:
                line = key_node.start_mark.line + 1
                if key_node.tag == MERGE_TAG:
                    raise _Invalid("merge keys (<<) are not supported in manifests", line)
                if not isinstance(key_node, yaml.ScalarNode):
                    raise _Invalid("mapping keys must be strings", line)
                if key_node.tag == STR_TAG:
                    self.remaining -= 1
                    key = key_node.value
                else:
                    key = str(self.build(key_node, (*path, "\0key")))
                if key in result:
                    first = self.lines[(*path, key)]
                    raise _Invalid(f"duplicate key {key!r} (first written on line {first})", line)
                self.lines[(*path, key)] = line
                result[key] = self.build(value_node, (*path, key))
            return result
        raise _Invalid(f"unsupported YAML node {node.tag}", node.start_mark.line + 1)


def _error_line(exc: yaml.YAMLError) -> int:
    # An unclosed bracket is noticed lines later (problem_mark); where it opened
    # (context_mark) is the line to fix.
    mark = getattr(exc, "context_mark", None) or getattr(exc, "problem_mark", None)
    return mark.line + 1 if mark is not None else 1


def _describe(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        parts = [p for p in (exc.context, exc.problem) if p]
        return "invalid YAML: " + "; ".join(parts)
    return f"invalid YAML: {exc}"


def _compose(text: str) -> Iterator[yaml.Node | None]:
    loader = _Loader(text)
    try:
        while loader.check_node():
            yield loader.get_node()
    finally:
        loader.dispose()


def parse_documents(
    text: str, file: str, *, max_nodes: int = MAX_NODES, offset: int = 0
) -> tuple[list[Document], list[Problem]]:
    """Every document in ``text`` (empty ones dropped), or the problem that stopped parsing.

    ``offset`` shifts reported lines, for YAML embedded in a string of another document.
    """
    documents: list[Document] = []
    builder = _Builder(max_nodes)
    try:
        for node in _compose(text):
            if node is None:
                continue
            builder.lines, builder.block_scalars = {}, set()
            data = builder.build(node, ())
            if data is not None:
                documents.append(
                    Document(
                        file,
                        data,
                        node.start_mark.line + 1,
                        builder.lines,
                        offset,
                        frozenset(builder.block_scalars),
                    )
                )
    except _TooLarge:
        return documents, [
            Problem(
                file,
                1 + offset,
                f"YAML expands to more than {max_nodes} values "
                "(aliases nested inside aliases?); refusing to load it",
            )
        ]
    except _Invalid as exc:
        return documents, [Problem(file, exc.line + offset, str(exc))]
    except yaml.YAMLError as exc:
        return documents, [Problem(file, _error_line(exc) + offset, _describe(exc))]
    return documents, []


def decode(data: bytes, file: str) -> tuple[str | None, Problem | None]:
    """UTF-8 text (a BOM is allowed), or a problem naming the line of the first bad byte."""
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        return None, Problem(
            file, line, f"not UTF-8 text (byte 0x{data[exc.start]:02x}); save the file as UTF-8"
        )


class Checker:
    """Collects problems about one document; strict mapping and string checks."""

    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.problems: list[Problem] = []

    def add(self, message: str, *path: str | int) -> None:
        self.problems.append(self.doc.problem(message, *path))

    def mapping(self, value: Any, allowed: set[str], required: set[str], *path: str | int) -> bool:
        where = dotted(path) or "the file"
        if not isinstance(value, Mapping):
            self.add(f"{where} must be a mapping", *path)
            return False
        for key in value:
            if key not in allowed:
                self.add(
                    f"unknown key {key!r} in {where} (allowed: {', '.join(sorted(allowed))})",
                    *path,
                    key,
                )
        for key in sorted(required - set(value)):
            self.add(f"{where} needs {key!r}", *path)
        return True

    def string(self, value: Any, *path: str | int) -> str | None:
        if not isinstance(value, str) or not value:
            self.add(f"{dotted(path)} must be a non-empty string", *path)
            return None
        return value
