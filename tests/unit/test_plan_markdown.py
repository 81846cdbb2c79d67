"""The plan comment (``plan_markdown``) with hostile values: whatever a manifest holds, every
change stays a list item of its own and no value becomes Markdown or HTML."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from gitsync.diff.structural import short
from gitsync.model import ServiceKey
from gitsync.plan import build_plan, code, fenced, one_line, plan_markdown

RANKER = (
    Path(__file__).resolve().parents[2] / "examples/plain-layout/environments/staging/ranker.yaml"
)

HOSTILE = (
    "\n\n**No RayService changes** <!--",
    "x\r\n- **staging/fake**: `unchanged`\n",
    "``` closes a fence ```` and `` a span",
    "` starts and ends with a backtick `",
    "<img src=x onerror=alert(1)> [link](https://evil.example) @everyone *bold* _em_",
    "\u202eevil\u2066 \u2028 zero\u200bwidth \x1b[31m",
)


def ranker() -> dict[str, Any]:
    obj = yaml.safe_load(RANKER.read_text())
    obj["metadata"]["namespace"] = "ray-staging"
    return obj


def with_value(value: str) -> dict[str, Any]:
    obj = ranker()
    serve = yaml.safe_load(obj["spec"]["serveConfigV2"])
    serve["applications"][0]["deployments"][0]["user_config"]["model_version"] = value
    obj["spec"]["serveConfigV2"] = yaml.safe_dump(serve)
    return obj


def outside_code(line: str) -> str:
    """``line`` without its code spans, by CommonMark's rule: a run of n backticks opens a
    span that the next run of exactly n backticks closes (an unmatched run is literal)."""
    out, i = [], 0
    while i < len(line):
        if line[i] != "`":
            out.append(line[i])
            i += 1
            continue
        run = re.match(r"`+", line[i:])
        assert run is not None
        n = len(run.group())
        close = re.search(rf"(?<!`)`{{{n}}}(?!`)", line[i + n :])
        if close is None:
            out.append(run.group())
            i += n
        else:
            i += n + close.end()
    return "".join(out)


@pytest.mark.parametrize("value", HOSTILE)
def test_a_hostile_value_cannot_hide_the_change_after_it(value: str) -> None:
    # The first service's user_config is hostile; the second service changes after it and must
    # still be its own list item, shown.
    swapped = ranker()
    swapped["metadata"]["name"] = "zz-production-swap"
    moved = ranker()
    moved["metadata"]["name"] = "zz-production-swap"
    moved["spec"]["rayClusterConfig"]["rayVersion"] = "2.50.0"
    key = ServiceKey("ray-staging", "ranker")
    other = ServiceKey("ray-staging", "zz-production-swap")
    plan = build_plan(
        "staging",
        "ray-staging",
        {key: ranker(), other: swapped},
        {key: with_value(value), other: moved},
        prune=True,
    )
    body = plan_markdown([plan], "a" * 40, "b" * 40)
    items = [line for line in body.splitlines() if line.startswith("- ")]
    assert [outside_code(line).split(":")[0] for line in items] == ["- ****", "- ****"]
    assert "zz-production-swap" in items[1]
    assert "cluster-swap" in items[1]
    for line in body.splitlines()[1:]:  # the first is the marker, gitsync's own comment
        rest = outside_code(line).replace("<sub>", "").replace("</sub>", "")
        assert not set(rest) & set("<>[]!_~&@\\"), (line, rest)
        assert rest.count("*") % 4 == 0, line
    assert not re.search(r"[\x00-\x1f\x7f\u2028\u2029\u202e\u2066\u200b]", body.replace("\n", ""))
    # The value is all there, escaped, inside the first item's code spans.
    assert one_line(short(value)) in items[0]


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain", "`plain`"),
        ("a`b", "``a`b``"),
        ("``` x", "```` ``` x ````"),
        (" lead", "`  lead `"),  # CommonMark strips one space from each side
        ("", "` `"),
        ("a\nb\tc\r", "`a\\nb\\tc\\r`"),
        ("\u202e", "`\\u202e`"),
    ],
)
def test_code_spans(text: str, shown: str) -> None:
    assert code(text) == shown


def test_a_fenced_block_outlasts_any_backtick_run_inside() -> None:
    text = "ranker.yaml:3: bad\n```\n<!-- hidden\n`````"
    block = fenced(text)
    fence = block.split("\n", 1)[0]
    assert fence == "``````"
    assert block.endswith("\n" + fence)
    assert block.count(fence) == 2
