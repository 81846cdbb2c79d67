"""YAML text → documents that remember where every value was written.

Stricter than PyYAML's ``safe_load`` in the ways Kubernetes is strict: duplicate keys are
errors, timestamps stay strings (as Kubernetes' YAML-to-JSON decoding keeps them), keys are
strings. Aliases are expanded with a bound on the total size, so a "billion laughs" document
is an error instead of an out-of-memory; nesting is bounded too (the builder recurses), and a
collection tagged with anything but the plain YAML map/seq tags (``!!python/object``…) is an
error instead of being read as if untagged. Pure: text in, values and problems out.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from gitsync.model import Problem

Path = tuple[str | int, ...]

# Far above any real manifest (a large RayService is a few thousand nodes), far below what
# would hurt the agent's memory.
MAX_NODES = 100_000
# A RayService is about 12 levels deep and a serveConfigV2 about 6; libyaml itself stops at
# 1000, which Python's recursion limit would not survive.
MAX_DEPTH = 100

_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SCALARS = yaml.SafeLoader("")  # only its scalar constructors are used, never its stream

TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
MERGE_TAG = "tag:yaml.org,2002:merge"
STR_TAG = "tag:yaml.org,2002:str"
SEQ_TAG = "tag:yaml.org,2002:seq"
MAP_TAG = "tag:yaml.org,2002:map"
# Scalars whose value is the text itself: strings, and timestamps (kept as strings, as
# Kubernetes' YAML-to-JSON decoding keeps them).
_AS_WRITTEN = frozenset({STR_TAG, TIMESTAMP_TAG})
# The JSON-compatible scalars; `!!binary` (bytes), `!!python/…` and custom tags have no JSON
# form, so they are errors here rather than a crash when the object is sent to the API server.
_CONSTRUCTED = frozenset(f"tag:yaml.org,2002:{t}" for t in ("int", "float", "bool", "null"))


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
    def __init__(self, line: int) -> None:
        super().__init__(line)
        self.line = line


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
            raise _TooLarge(node.start_mark.line + 1)
        if len(path) > MAX_DEPTH:
            raise _Invalid(
                f"values are nested more than {MAX_DEPTH} levels deep; no manifest needs that",
                node.start_mark.line + 1,
            )
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.ScalarNode):
            if node.style == "|":
                self.block_scalars.add(path)
            if node.tag in _AS_WRITTEN:  # most scalars: no constructor call
                return node.value
            if node.tag not in _CONSTRUCTED:
                raise _Invalid(
                    f"unsupported YAML tag {node.tag!r}: manifests hold strings, numbers, "
                    "booleans and null",
                    node.start_mark.line + 1,
                )
            # The tag's constructor itself, not construct_object: that one caches every node it
            # builds in the (shared) constructor, which a long-running agent would never free.
            value = _SCALARS.yaml_constructors[node.tag](_SCALARS, node)
            if isinstance(value, float) and not math.isfinite(value):
                raise _Invalid(
                    f"{node.value!r} is not a finite number (JSON, and so Kubernetes, has no "
                    "NaN or infinity); quote it if it is meant as a string",
                    node.start_mark.line + 1,
                )
            return value
        if isinstance(node, yaml.CollectionNode) and node.tag not in (SEQ_TAG, MAP_TAG):
            raise _Invalid(
                f"unsupported YAML tag {node.tag!r}: manifests hold plain mappings, lists "
                "and scalars",
                node.start_mark.line + 1,
            )
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


_VALUE_EVENTS = (yaml.ScalarEvent, yaml.SequenceStartEvent, yaml.MappingStartEvent)


def _overflow_line(text: str, max_nodes: int) -> int | None:
    """The line where ``text`` holds its ``max_nodes``-th value, read as a stream of events.

    Composing builds every node before the builder can count them (a 1 MiB flow list of
    500,000 numbers costs 160 MiB); events are held one at a time. A text shorter than
    ``max_nodes`` characters cannot hold that many values and is not scanned.
    """
    if len(text) <= max_nodes:
        return None
    loader: Any = _Loader(text)  # typeshed leaves the event API untyped
    seen = 0
    try:
        while loader.check_event():
            event = loader.get_event()
            if isinstance(event, _VALUE_EVENTS):
                seen += 1
                if seen > max_nodes:
                    mark = event.start_mark
                    return int(mark.line) + 1 if mark is not None else 1
    except yaml.YAMLError:
        return None  # composing reports it, with its line
    finally:
        loader.dispose()
    return None


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
        if (line := _overflow_line(text, max_nodes)) is not None:
            raise _TooLarge(line)
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
    except _TooLarge as exc:
        return documents, [
            Problem(
                file,
                exc.line + offset,
                f"YAML holds or expands to more than {max_nodes} values (aliases nested "
                "inside aliases, or far too many documents?); refusing to load it: remove the "
                "aliases or split the file",
            )
        ]
    except _Invalid as exc:
        return documents, [Problem(file, exc.line + offset, str(exc))]
    except yaml.reader.ReaderError as exc:  # a character YAML forbids (NUL, other controls)
        line = text[: exc.position].count("\n") + 1 + offset
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        return documents, [
            Problem(file, line, f"invalid YAML: unacceptable character #x{char:04x}: {exc.reason}")
        ]
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
        self.reported: set[tuple[str | int, ...]] = set()  # the paths with a problem

    def add(self, message: str, *path: str | int) -> None:
        self.problems.append(self.doc.problem(message, *path))
        self.reported.add(path)

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
