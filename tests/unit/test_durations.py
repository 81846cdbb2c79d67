"""Durations: the short forms and Go's ``time.ParseDuration`` syntax, everywhere one is read."""

from __future__ import annotations

import pytest
import yaml

from gitsync.config import load_agent_config
from gitsync.manifests.durations import parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1h30m", 5400.0),
        ("2m30.5s", 150.5),
        ("1h0m0s", 3600.0),
        ("1h30m15s", 5415.0),
        ("500us", 0.0005),
        ("250ms", 0.25),
        ("1.5h", 5400.0),
        ("72h", 259200.0),
        ("1d", 86400.0),
        ("30", 30.0),
        ("1ns", 1e-9),
        (45, 45.0),
    ],
)
def test_go_and_short_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    # durationpy.from_str takes "1h 30m" (it checks only the ends), weeks, months and years, and
    # rounds 1ns to zero: why gitsync/manifests/durations.py keeps its own grammar.
    ["1h30", "1h 30m", "", "0s", "-1s", "ms", "1x", "h1", True, "1w", "1y", "1mm", "1..5s"],
)
def test_what_is_no_duration(text: object) -> None:
    assert parse_duration(text) is None


def test_the_agent_config_takes_go_durations() -> None:
    text = yaml.safe_dump(
        {
            "repository": {"url": "https://git.example.com/a/b.git"},
            "intervals": {"poll": "1m30s"},
            "rollout": {"healthTimeout": "1h30m"},
        }
    )
    config, problems = load_agent_config(text, "gitsync.yaml")
    assert problems == []
    assert config is not None
    assert config.poll_seconds == 90.0
    assert config.rollout.health_timeout == 5400.0
