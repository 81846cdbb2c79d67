"""docs/cli.md is exactly what the CLI's own parser renders."""

from __future__ import annotations

from gitsync.cli_docs import OUTPUT, render


def test_cli_reference_is_generated_from_the_parser() -> None:
    assert OUTPUT.read_text(encoding="utf-8") == render(), (
        "docs/cli.md is out of date with gitsync/cli.py; regenerate it with `make docs` "
        "(or `python -m gitsync.cli_docs --write`) and commit the result"
    )
