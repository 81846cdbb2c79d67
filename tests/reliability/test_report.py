"""The generated figures of docs/reliability.md: the summary merges across runs, tables the
run did not produce are kept, and nothing outside the markers changes. No test bed needed."""

from __future__ import annotations

import json
from pathlib import Path

from tests.reliability.conftest import SUMMARY_COLUMNS, Figures
from tests.reliability.report import BEGIN, DOC, END, generate, sections, table_rows

DOC_TEXT = f"# Title\n\nhand-written\n\n{BEGIN}\n{END}\n\n| limit | value |\n|---|---|\n"


def test_a_run_replaces_its_rows_and_keeps_the_others(tmp_path: Path) -> None:
    figures = Figures(tmp_path)
    figures.summary("git down", trials=1, failures=0, data_lost=0, recovery_s=2.345)
    figures.summary("crash", trials=20, failures=0, data_lost=0, recovery_s="1.0-3.0 (median 2.0)")
    figures.add("crash-safety", {"trial": 1, "kill at": "wave 0"})
    first = generate(DOC_TEXT, tmp_path)
    assert first.startswith("# Title\n\nhand-written\n\n")
    assert first.endswith(f"{END}\n\n| limit | value |\n|---|---|\n")
    rows = {r["scenario"]: r for r in table_rows(sections(first)["summary"])}
    assert rows["git down"]["recovery s"] == "2.35"
    assert rows["crash"]["trials"] == "20"

    # A later run of another file: its rows are added, the earlier ones (and tables) kept.
    later = tmp_path / "later"
    Figures(later).summary("load", trials=50, failures=1, data_lost=0, recovery_s=None)
    second = generate(first, later)
    found = sections(second)
    assert set(found) == {"summary", "crash-safety"}
    assert [r["scenario"] for r in table_rows(found["summary"])] == ["git down", "crash", "load"]
    assert generate(second, later) == second  # idempotent


def test_the_summary_accumulates_across_runs_in_the_artifacts(tmp_path: Path) -> None:
    Figures(tmp_path).summary("a", trials=1, failures=0, data_lost=0, recovery_s=1.0)
    Figures(tmp_path).summary("b", trials=2, failures=0, data_lost=0, recovery_s=1.0)
    again = Figures(tmp_path)
    again.summary("a", trials=3, failures=0, data_lost=0, recovery_s=1.0)
    rows = json.loads((tmp_path / "summary.json").read_text())
    assert [(r["scenario"], r["trials"]) for r in rows] == [("b", 2), ("a", 3)]
    assert tuple(rows[0]) == SUMMARY_COLUMNS


def test_the_document_has_its_markers() -> None:
    text = DOC.read_text()
    assert text.count(BEGIN) == 1
    assert text.count(END) == 1
