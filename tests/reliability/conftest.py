"""The reliability suite's figures — tables the tests fill in, printed at the end of the run
and written to ``tests/artifacts/reliability/<table>.md`` (ignored by git) as they grow — and
its agent: one in the test process, on a fresh repository, passes triggered by the test."""

from __future__ import annotations

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


class Figures:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.tables: dict[str, list[Mapping[str, object]]] = {}

    def add(self, table: str, row: Mapping[str, object]) -> None:
        self.tables.setdefault(table, []).append(row)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"{table}.md").write_text("\n".join(self.render(table)) + "\n")

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
    running = Agent(config, api, "reliability-agent", Metrics())
    running.start()
    try:
        yield running, repo
    finally:
        running.shutdown(timeout=10)
