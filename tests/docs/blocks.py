"""Every fenced code block of the documentation, with the kind that says how it is exercised.

A block's kind comes from an HTML comment on the line before its fence, or from its info
string (only ``sh`` is inferred). A block without a kind is ``unclassified`` and fails
tests/docs/test_blocks.py, so new documentation cannot skip its examples silently.

Markers (``<!-- doctest: KIND [key=value ...] -->``, parsed with shlex):

- ``run offline [cwd=clone|broken]`` (an ``sh`` block): every ``gitsync`` line is also run,
  from the repository root or in a sandbox (``clone``: a Git repository of
  examples/plain-layout whose ``HEAD`` changes a Serve deployment in staging and the image in
  production, ``origin/main`` its parent; ``broken``: examples/plain-layout with an invalid
  ``num_replicas`` in staging).
- ``run cluster``: its ``gitsync`` lines that name ``config/gitsync.yaml`` (or
  ``path/to/checkout``) run against the test bed with an agent config built from
  config/gitsync.yaml.
- ``run agent``: ``gitsync run`` is started against the test bed, probed and stopped.
- ``output cmd="gitsync ..." [cwd=...]``: sample output; every line must appear in what the
  command prints (commit SHAs are compared as placeholders).
- ``agent-config [file=PATH] [fragment]``, ``repo-config [file=PATH] [fragment]``: loaded by
  the real loader (a fragment merged into a complete config first); ``file`` must be equal.
- ``rayservice``: added to a copy of examples/plain-layout and validated.
- ``kubernetes``: YAML objects with apiVersion, kind and metadata.name.
- ``prometheus-rules``: each rule must be the shipped one in deploy/monitoring, use only
  metrics gitsync registers, and pass ``promtool check rules``.
- ``tree root=DIR``: every file and folder of the tree exists under DIR.
- ``cli-help command=NAME``: equal to that command's help (docs/cli.md).
- ``webhook-body``: a notification webhook's JSON body; the same fields, nested alike and
  of the same types, as :func:`gitsync.notify.webhook_message` produces.
- ``receiver``: Python defining ``verified(secret, headers, body)``; run, it must accept a
  request :func:`gitsync.notify.sign` signed and refuse a tampered, foreign or stale one.
- ``exempt reason="..."``: not exercised; counted and capped in the test.

Every ``sh`` block, run or not, is checked statically: ``gitsync`` lines parse with the real
argument parser, ``make`` targets exist, repository paths exist, ``kubectl`` lines pass
kubectl's own flag parsing and ``-k DIR`` kustomizations build.
"""

from __future__ import annotations

import re
import shlex
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"^<!--\s*doctest:\s*(.*?)\s*-->$")
FENCE = re.compile(r"^(```+)\s*([\w-]*)\s*$")
KINDS = {
    "sh",
    "output",
    "agent-config",
    "repo-config",
    "rayservice",
    "kubernetes",
    "prometheus-rules",
    "tree",
    "cli-help",
    "webhook-body",
    "receiver",
    "exempt",
}


def doc_files() -> list[Path]:
    return [
        ROOT / "README.md",
        *sorted((ROOT / "docs").glob("*.md")),
        *sorted((ROOT / "examples").glob("*/README.md")),
        ROOT / "deploy" / "README.md",
    ]


@dataclass(frozen=True)
class Block:
    file: Path
    line: int  # of the opening fence, 1-based
    info: str
    kind: str
    options: dict[str, str] = field(hash=False)
    text: str

    @property
    def where(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}"

    def __str__(self) -> str:
        return self.where


def _marker(text: str) -> tuple[str, dict[str, str]]:
    words = shlex.split(text)
    kind, rest = (words[0], words[1:]) if words else ("", [])
    options: dict[str, str] = {}
    if kind == "run":
        kind, options["run"], rest = "sh", rest[0] if rest else "", rest[1:]
    for word in rest:
        key, sep, value = word.partition("=")
        options[key] = value if sep else "true"
    return kind, options


def extract(path: Path) -> list[Block]:
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        fence, info = match.groups()
        end = index + 1
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        previous = next((lines[i] for i in range(index - 1, -1, -1) if lines[i].strip()), "")
        marked = MARKER.match(previous.strip())
        if marked:
            kind, options = _marker(marked.group(1))
        else:
            kind, options = ("sh" if info == "sh" else "unclassified"), {}
        text = "\n".join(lines[index + 1 : end]) + "\n"
        blocks.append(Block(path, index + 1, info, kind, options, text))
        index = end + 1
    return blocks


def all_blocks() -> list[Block]:
    return [block for path in doc_files() for block in extract(path)]


def commands(text: str) -> list[list[str]]:
    """The command lines of an ``sh`` block: continuations joined, comments dropped, leading
    ``VAR=value`` assignments removed."""
    joined = re.sub(r"\\\n", " ", text)
    result = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
            words = words[1:]
        if words:
            result.append(words)
    return result


def counts(blocks: list[Block]) -> Counter[str]:
    return Counter(
        f"sh run={b.options['run']}" if b.kind == "sh" and "run" in b.options else b.kind
        for b in blocks
    )


if __name__ == "__main__":
    found = all_blocks()
    for kind, n in sorted(counts(found).items()):
        print(f"{n:4d}  {kind}")
    print(f"{len(found):4d}  blocks in {len(doc_files())} files")
