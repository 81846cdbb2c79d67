"""Every code block of the documentation is classified and exercised (no cluster needed).

The kinds and their markers are described in tests/docs/blocks.py. Commands that need the
test bed's cluster run in tests/docs/test_cluster_commands.py.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gitsync.checkout import read_tree
from gitsync.cli import build_parser
from gitsync.cli_docs import help_text
from gitsync.config import load_agent_config
from gitsync.manifests.repoconfig import load_repo_config
from gitsync.metrics import Metrics
from gitsync.model import ServiceKey
from gitsync.notify import Event, Failure, Notice, Service, sign, webhook_message
from testbed.binaries import Binaries

from .blocks import KINDS, ROOT, Block, all_blocks, commands, counts, doc_files
from .sandbox import EXAMPLES, make_broken, make_clone, missing_lines, run_gitsync

BLOCKS = all_blocks()
MAX_EXEMPT = 3  # raise only with a reason in the marker; the list is in the failure message
REPO_DIRS = ("config/", "examples/", "deploy/", "docs/", "tests/", "bench/", "testbed/",
             "gitsync/")  # fmt: skip
PROGRAMS = {"gitsync", "make", "kubectl", "helm", "git", ".venv/bin/pytest", "pytest"}
BASE_AGENT_CONFIG = {"repository": {"url": "https://git.example.com/platform/ray-services.git"}}
# Offline runs: the exit code each command must give in each sandbox.
EXPECTED_EXIT = {("validate", "root"): 0, ("validate", "broken"): 1, ("plan", "clone"): 1}


def of_kind(kind: str, **options: str) -> list[Block]:
    return [
        b for b in BLOCKS
        if b.kind == kind and all(b.options.get(k) == v for k, v in options.items())
    ]  # fmt: skip


@pytest.fixture(scope="module")
def sandboxes(
    tmp_path_factory: pytest.TempPathFactory, binaries: Binaries
) -> Iterator[dict[str, Path]]:
    """The folders offline commands run in, with the test bed's kustomize and helm configured
    as an agent configures them (the rendered examples)."""
    base = tmp_path_factory.mktemp("docs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GITSYNC_KUSTOMIZE", str(binaries.kubectl))
        patch.setenv("GITSYNC_HELM", str(binaries.helm))
        yield {
            "root": ROOT,
            "clone": make_clone(base / "clone"),
            "broken": make_broken(base / "broken"),
        }


# -- classification ------------------------------------------------------------------------


def test_every_block_has_a_known_kind() -> None:
    unknown = [f"{b} ({b.info or 'no info string'})" for b in BLOCKS if b.kind not in KINDS]
    assert not unknown, (
        "code blocks without a doctest kind (add <!-- doctest: KIND --> before the fence; "
        "kinds in tests/docs/blocks.py): " + ", ".join(unknown)
    )


def test_the_scan_finds_the_documentation() -> None:
    found = counts(BLOCKS)
    assert len(doc_files()) >= 15
    assert found["sh run=cluster"] >= 4, found
    assert found["sh run=offline"] >= 4, found


def test_exempt_blocks_are_few_and_say_why() -> None:
    exempt = of_kind("exempt")
    listing = "; ".join(f"{b}: {b.options.get('reason', '(no reason)')}" for b in exempt)
    assert all(b.options.get("reason") for b in exempt), listing
    assert len(exempt) <= MAX_EXEMPT, f"{len(exempt)} exempt blocks: {listing}"


def test_the_readme_starts_with_the_two_commands() -> None:
    first = next(b for b in BLOCKS if b.file == ROOT / "README.md")
    assert [words[:2] for words in commands(first.text)] == [["make", "demo"], ["make", "test"]]


# -- sh: static checks of every command line -----------------------------------------------


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([\w.-]+):(?!=)", text, re.MULTILINE))


def make_variables() -> set[str]:
    """The variables the Makefile sets, which ``make NAME=value`` may override."""
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^(\w+)\s*[?:]?=", text, re.MULTILINE))


def repo_paths(words: list[str]) -> list[str]:
    paths = []
    for word in words:
        value = word.split("=", 1)[1] if word.startswith("-") and "=" in word else word
        if value.startswith(REPO_DIRS):
            paths.append(value)
    return paths


SH_LINES = [(b, words) for b in of_kind("sh") for words in commands(b.text)]


@pytest.mark.parametrize(("block", "words"), SH_LINES, ids=[f"{b}:{w[0]}" for b, w in SH_LINES])
def test_command_line(block: Block, words: list[str], binaries: Binaries) -> None:
    program, args = words[0], words[1:]
    assert program in PROGRAMS, f"{block}: unknown program {program!r} in {words}"
    for path in repo_paths(words[1:] if program == ".venv/bin/pytest" else words):
        assert (ROOT / path.split("::")[0]).exists(), f"{block}: {path} does not exist"
    if program == "gitsync":
        try:
            build_parser().parse_args(args)
        except SystemExit as exc:
            pytest.fail(f"{block}: `gitsync {' '.join(args)}` does not parse (exit {exc.code})")
    elif program == "make":
        missing = {a for a in args if "=" not in a} - make_targets()
        assert not missing, f"{block}: no make target {sorted(missing)}"
        unknown = {a.split("=", 1)[0] for a in args if "=" in a} - make_variables()
        assert not unknown, f"{block}: no make variable {sorted(unknown)}"
    elif program == "helm":
        assert args[0] in ("install", "upgrade"), f"{block}: helm {args[0]}"
        # Rendered as the install would render it, without a cluster (helm template takes
        # the same flags): the chart, the values and every --set exist and fit.
        rendered = subprocess.run(
            [str(binaries.helm), "template", *args[1:]], capture_output=True, text=True,
            timeout=60, check=False, cwd=ROOT, env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"},
        )  # fmt: skip
        assert rendered.returncode == 0, f"{block}: helm {' '.join(args)}: {rendered.stderr}"
        kinds = {d["kind"] for d in yaml.safe_load_all(rendered.stdout) if d}
        assert {"Deployment", "ServiceAccount", "ConfigMap"} <= kinds, kinds
    elif program == "kubectl":
        flags = subprocess.run(
            [str(binaries.kubectl), *args, "--help"], capture_output=True, text=True, timeout=30,
            check=False,
        )  # fmt: skip
        assert flags.returncode == 0, f"{block}: kubectl {' '.join(args)}: {flags.stderr}"
        if "-k" in args:
            folder = args[args.index("-k") + 1]
            built = subprocess.run(
                [str(binaries.kubectl), "kustomize", str(ROOT / folder)],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert built.returncode == 0, f"{block}: kustomize {folder}: {built.stderr}"
            kinds = {d["kind"] for d in yaml.safe_load_all(built.stdout) if d}
            assert {"Deployment", "ServiceAccount", "ConfigMap"} <= kinds, kinds


# -- sh run=offline: the commands really run -------------------------------------------------

OFFLINE = [(b, w) for b in of_kind("sh", run="offline") for w in commands(b.text)]


@pytest.mark.parametrize(("block", "words"), OFFLINE, ids=[f"{b}" for b, _ in OFFLINE])
def test_offline_command_runs(block: Block, words: list[str], sandboxes: dict[str, Path]) -> None:
    assert words[0] == "gitsync", f"{block}: only gitsync lines run offline"
    where = block.options.get("cwd", "root")
    code, output = run_gitsync(words[1:], sandboxes[where])
    expected = EXPECTED_EXIT.get((words[1], where), 0)
    assert code == expected, (
        f"{block}: `{' '.join(words)}` exited {code}, not {expected}:\n{output}"
    )


@pytest.mark.parametrize(
    "block", [b for b in of_kind("output") if b.options.get("cwd") != "cluster"], ids=str
)
def test_sample_output_is_what_the_command_prints(block: Block, sandboxes: dict[str, Path]) -> None:
    words = block.options["cmd"].split()
    assert words[0] == "gitsync"
    _, output = run_gitsync(words[1:], sandboxes[block.options.get("cwd", "root")])
    missing = missing_lines(block.text, output)
    assert not missing, f"{block}: not printed by `{block.options['cmd']}`: {missing}\n{output}"


# -- configs, manifests, rules, trees, help --------------------------------------------------


def merged(base: Any, fragment: Any) -> Any:
    if isinstance(base, dict) and isinstance(fragment, dict):
        out = copy.deepcopy(base)
        for key, value in fragment.items():
            out[key] = merged(out.get(key), value)
        return out
    return copy.deepcopy(fragment)


def config_text(block: Block, base: dict[str, Any]) -> str:
    if "file" in block.options:
        shipped = (ROOT / block.options["file"]).read_text()
        assert block.text == shipped, f"{block}: differs from {block.options['file']}"
    if "fragment" in block.options:
        return yaml.safe_dump(merged(base, yaml.safe_load(block.text)))
    return block.text


@pytest.mark.parametrize("block", of_kind("agent-config"), ids=str)
def test_agent_config_loads(block: Block) -> None:
    config, problems = load_agent_config(config_text(block, BASE_AGENT_CONFIG), block.where)
    assert config is not None, f"{block}: " + "; ".join(map(str, problems))


@pytest.mark.parametrize("block", of_kind("repo-config"), ids=str)
def test_repo_config_loads(block: Block) -> None:
    base = yaml.safe_load((EXAMPLES / "gitsync.yaml").read_text())
    config, problems = load_repo_config(config_text(block, base), block.where)
    assert config is not None, f"{block}: " + "; ".join(map(str, problems))


@pytest.mark.parametrize("block", of_kind("rayservice"), ids=str)
def test_rayservice_validates(block: Block, tmp_path: Path) -> None:
    tree = tmp_path / "repo"
    shutil.copytree(EXAMPLES, tree)
    (tree / "environments/staging/from-docs.yaml").write_text(block.text)
    report = read_tree(tree)
    assert report.ok, f"{block}: " + "; ".join(map(str, report.problems))
    names = {s.key.name for env in report.environments for s in env.services}
    assert yaml.safe_load(block.text)["metadata"]["name"] in names


@pytest.mark.parametrize("block", of_kind("kubernetes"), ids=str)
def test_kubernetes_objects_parse(block: Block) -> None:
    for document in yaml.safe_load_all(config_text(block, {})):
        assert {"apiVersion", "kind"} <= set(document), block
        assert document.get("metadata", {}).get("name"), block
        embedded = (document.get("data") or {}).get("gitsync.yaml")
        if document["kind"] == "ConfigMap" and embedded:  # the agent config, as deployed
            config, problems = load_agent_config(embedded, block.where)
            assert config is not None, f"{block}: " + "; ".join(map(str, problems))


def metric_names() -> set[str]:
    """The names the metric families are scraped by (counters get ``_total``)."""
    families = Metrics().registry.collect()
    return {f"{f.name}_total" if f.type == "counter" else f.name for f in families}


def exposed_metrics() -> set[str]:
    """Every series name, histograms' ``_bucket``/``_sum``/``_count`` included."""
    suffixes = ("", "_bucket", "_sum", "_count")
    return {name + s for name in metric_names() for s in suffixes}


def shipped_rules() -> dict[str, dict[str, Any]]:
    rule = yaml.safe_load((ROOT / "deploy/monitoring/prometheusrule.yaml").read_text())
    return {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}


@pytest.mark.parametrize("block", of_kind("prometheus-rules"), ids=str)
def test_prometheus_rules(block: Block, binaries: Binaries, tmp_path: Path) -> None:
    shipped = shipped_rules()
    for group in yaml.safe_load(block.text)["groups"]:
        for rule in group["rules"]:
            assert rule["alert"] in shipped, f"{block}: {rule['alert']} is not shipped"
            assert rule.items() <= shipped[rule["alert"]].items(), f"{block}: differs from deploy/"
            names = set(re.findall(r"\bgitsync_\w+", rule["expr"]))
            assert names <= exposed_metrics(), f"{block}: unknown {names - exposed_metrics()}"
    path = tmp_path / "rules.yaml"
    path.write_text(block.text)
    checked = subprocess.run(
        [str(binaries.promtool), "check", "rules", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, f"{block}: {checked.stdout}{checked.stderr}"


def tree_entries(text: str) -> list[str]:
    """Paths of a tree drawn with two-space indents: ``name   description``, folders end in
    ``/``; lines indented past the names are wrapped descriptions."""
    stack: list[tuple[int, str]] = []
    paths = []
    for line in text.splitlines():
        indent = len(line) - len(line.lstrip())
        if not line.strip() or indent > 8:
            continue
        names = line.strip().split("  ")[0].split()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1] if stack else ""
        paths.extend(parent + name for name in names)
        if names[0].endswith("/"):
            stack.append((indent, parent + names[0]))
    return paths


@pytest.mark.parametrize("block", of_kind("tree"), ids=str)
def test_tree_matches_the_repository(block: Block) -> None:
    root = ROOT / block.options["root"]
    missing = [p for p in tree_entries(block.text) if not (root / p).exists()]
    assert not missing, f"{block}: not in {block.options['root']}: {missing}"


@pytest.mark.parametrize("block", of_kind("cli-help"), ids=str)
def test_cli_help_block(block: Block) -> None:
    assert block.text == help_text(block.options["command"]), (
        f"{block}: stale; regenerate with `make docs`"
    )


def shape(value: Any) -> Any:
    """A JSON value's structure: the keys of objects, the first item of arrays, the type of
    anything else."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value[:1]]
    return type(value).__name__


@pytest.mark.parametrize("block", of_kind("webhook-body"), ids=str)
def test_webhook_body_is_what_gitsync_sends(block: Block) -> None:
    key = ServiceKey("ray-production", "embedder")
    notice = Notice(
        Event.ROLLOUT_FAILED, "production", "3" * 40, "Use embedder v2", "ray-production",
        (Service(key, "serve-update", "in-place Serve update"),), "Degraded",
        Failure(key, "embed", "DEPLOY_FAILED: …"),
        links=(("commit", "https://c"), ("status", "https://s"), ("page", "https://p")),
    )  # fmt: skip
    sent = webhook_message(notice, "id", "2026-12-04T17:05:09Z")
    documented = json.loads(block.text)
    assert shape(documented) == shape(sent), block
    assert documented["version"] == sent["version"], block


@pytest.mark.parametrize("block", of_kind("receiver"), ids=str)
def test_receiver_verifies_what_gitsync_signs(block: Block) -> None:
    scope: dict[str, Any] = {}
    exec(compile(block.text, str(block), "exec"), scope)  # noqa: S102 - the documentation's own code
    verified = scope["verified"]
    secret, body, now = b"whsec-docs", b'{"version": 1}', int(time.time())

    def headers(timestamp: int, signed: bytes = body, key: bytes = secret) -> dict[str, str]:
        return {
            "X-Gitsync-Timestamp": str(timestamp),
            "X-Gitsync-Signature": sign(key, timestamp, signed),
        }

    assert verified(secret, headers(now), body), block
    assert not verified(secret, headers(now), body + b" "), block
    assert not verified(secret, headers(now, key=b"other"), body), block
    assert not verified(secret, headers(now - 600), body), block
    assert not verified(secret, {}, body), block


# -- the reference pages list everything the code has ----------------------------------------


def test_metrics_page_lists_every_metric_and_alert() -> None:
    page = (ROOT / "docs/metrics.md").read_text()
    listed = set(re.findall(r"`(gitsync_\w+)`", page))
    assert metric_names() - listed == set(), f"docs/metrics.md misses {metric_names() - listed}"
    assert listed - metric_names() == set(), f"docs/metrics.md: unknown {listed - metric_names()}"
    missing = {a for a in shipped_rules() if f"`{a}`" not in page}
    assert not missing, f"docs/metrics.md misses the alerts {sorted(missing)}"


def test_relative_links_resolve() -> None:
    broken = []
    for path in doc_files():
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
            if "://" not in target and not (path.parent / target).exists():
                broken.append(f"{path.relative_to(ROOT)} → {target}")
    assert not broken, broken
