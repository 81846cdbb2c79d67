"""The reliability suite's figures — tables the tests fill in, printed at the end of the run
and written to ``tests/artifacts/reliability/<table>.md`` and ``<table>.json`` (ignored by
git) as they grow, from which ``python -m tests.reliability.report`` writes the figures of
docs/reliability.md — and its agent: one in the test process, on a fresh repository, passes
triggered by the test.

Every scenario also adds one row to the ``summary`` table (:data:`SUMMARY_COLUMNS`, through
:meth:`Figures.summary` or ``figures.add("summary", {...})``): the table the issue asks for.
Unlike the other tables, the summary accumulates across runs: a run replaces the rows of the
scenarios it ran and keeps the others, so running one file refreshes its rows only."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path

import pytest
from kubernetes import client

from gitsync.agent import Agent
from gitsync.config import LeaderElection
from gitsync.metrics import Metrics
from tests.integration.gitops import GitOpsRepo

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "reliability"

SUMMARY = "summary"
# One row per scenario. "data lost" counts what should have survived and did not (a service
# left at an older revision, a commit without its final status, an object gone): it must be 0.
SUMMARY_COLUMNS = ("scenario", "trials", "failures", "data lost", "recovery s")


class Figures:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.tables: dict[str, list[Mapping[str, object]]] = {}

    def add(self, table: str, row: Mapping[str, object]) -> None:
        if table == SUMMARY:
            assert tuple(row) == SUMMARY_COLUMNS, f"summary rows have columns {SUMMARY_COLUMNS}"
            # Read again at every row: another run may have added its rows meanwhile.
            earlier = [r for r in self._earlier_summary() if r["scenario"] != row["scenario"]]
            self.tables[table] = earlier
        self.tables.setdefault(table, []).append(dict(row))
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"{table}.md").write_text("\n".join(self.render(table)) + "\n")
        (self.folder / f"{table}.json").write_text(json.dumps(self.tables[table], indent=1) + "\n")

    def summary(
        self,
        scenario: str,
        *,
        trials: int,
        failures: int,
        data_lost: int,
        recovery_s: float | str | None,
    ) -> None:
        """``recovery_s``: the time from the fault's end to the agent being whole again (a
        figure like ``"0.4-3.1 (median 1.2)"`` when there are many trials); None when the
        scenario has no fault to recover from."""
        value = "" if recovery_s is None else recovery_s
        if isinstance(value, float):
            value = round(value, 2)
        self.add(
            SUMMARY,
            dict(zip(SUMMARY_COLUMNS, (scenario, trials, failures, data_lost, value), strict=True)),
        )

    def _earlier_summary(self) -> list[Mapping[str, object]]:
        try:
            rows = json.loads((self.folder / f"{SUMMARY}.json").read_text())
        except (OSError, ValueError):
            return []
        return [r for r in rows if isinstance(r, dict) and tuple(r) == SUMMARY_COLUMNS]

    def render(self, table: str) -> list[str]:
        rows = self.tables[table]
        columns = list(rows[0])
        cells = [[_cell(row.get(c, "")) for c in columns] for row in rows]
        widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
        line = "| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " |"
        rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
        body = [
            "| " + " | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) + " |"
            for r in cells
        ]
        return [f"## {table}", "", line, rule, *body]


def spread(values: list[float]) -> str:
    """Many trials' seconds as one figure: ``min-max (median m)``."""
    if not values:
        return ""
    ordered = sorted(values)
    low, high, mid = ordered[0], ordered[-1], ordered[len(ordered) // 2]
    return f"{low:.1f}-{high:.1f} (median {mid:.1f})"


def _cell(value: object) -> str:
    text = str(value).replace("\n", "\\n").replace("|", "\\|")
    return text if len(text) <= 110 else text[:107] + "..."


FIGURES = pytest.StashKey[Figures]()


@pytest.fixture(scope="session")
def figures(request: pytest.FixtureRequest) -> Figures:
    return request.config.stash.setdefault(FIGURES, Figures(ARTIFACTS))


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    found = config.stash.get(FIGURES, None)
    if found is None or not found.tables:
        return
    terminalreporter.section("reliability figures")
    for table in found.tables:
        for line in found.render(table):
            terminalreporter.write_line(line)
        terminalreporter.write_line("")
    terminalreporter.write_line(f"(also in {found.folder})")


@pytest.fixture
def agent(
    api: client.ApiClient, tmp_path: Path, namespace: str
) -> Iterator[tuple[Agent, GitOpsRepo]]:
    repo = GitOpsRepo(tmp_path / "gitops", namespace)
    config = replace(
        repo.agent_config(tmp_path / "cache"),
        poll_seconds=3600.0,  # passes run when the test triggers them
        leader_election=LeaderElection(enabled=False),
    )
    running = Agent(config, api, "reliability-agent", metrics=Metrics())
    running.start()
    try:
        yield running, repo
    finally:
        running.shutdown(timeout=10)
