"""docs/zero-downtime.md's generator: rows from artifacts, rows of scenarios not rerun kept."""

from __future__ import annotations

import json
from pathlib import Path

from .zero_downtime import BEGIN, DOC, END, generate


def test_rows_come_from_artifacts_and_old_rows_are_kept(tmp_path: Path) -> None:
    (tmp_path / "cluster-swap.json").write_text(
        json.dumps(
            {
                "scenario": "cluster swap",
                "requests": 10,
                "failed": 0,
                "p50_ms": 1.5,
                "p99_ms": 9.0,
                "commit_to_promotion_s": 30.0,
                "commit_to_healthy_s": 33.0,
            }
        )
    )
    doc = f"head\n{BEGIN}\n| old |\n{END}\ntail\n"
    first = generate(doc, tmp_path)
    assert "| cluster swap (`cluster-swap`) | 10 | 0 | 1.5 | 9.0 | 30.0 | 33.0: Healthy |" in first
    assert first.startswith("head\n")
    assert first.endswith(f"{END}\ntail\n")
    (tmp_path / "cluster-swap.json").unlink()
    (tmp_path / "crashed.json").write_text(
        json.dumps({"scenario": "crash", "crash_to_degraded_in_status_s": 2.0})
    )
    second = generate(first, tmp_path)
    assert "(`cluster-swap`) | 10 |" in second  # not rerun: kept
    assert "| crash (`crashed`) | — | — | — | — | — | 2.0: Degraded" in second


def test_the_committed_doc_has_its_markers() -> None:
    text = DOC.read_text()
    assert text.index(BEGIN) < text.index(END)
