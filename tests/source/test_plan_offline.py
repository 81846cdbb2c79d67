"""``gitsync plan REPO --env E --from A --to B``: Git against Git, on a real repository history."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gitsync.cli import main

from .repos import git

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plain-layout"


def commit(repo: Path, message: str) -> str:
    git("add", "-A", cwd=repo)
    git(
        "-c",
        "user.name=T",
        "-c",
        "user.email=t@example.com",
        "-c",
        "commit.gpgsign=false",
        "commit",
        "-q",
        "-m",
        message,
        cwd=repo,
    )
    return git("rev-parse", "HEAD", cwd=repo)


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


@pytest.fixture
def history(tmp_path: Path) -> tuple[Path, list[str]]:
    repo = tmp_path / "repo"
    subprocess.run(["cp", "-r", str(EXAMPLES), str(repo)], check=True)
    git("init", "-q", "-b", "main", cwd=repo)
    shas = [commit(repo, "examples")]
    staging = repo / "environments/staging"
    edit(staging / "ranker.yaml", "num_replicas: 1", "num_replicas: 3")
    edit(
        staging / "embedder.yaml",
        "image: rayproject/ray:2.49.0-py311",
        "image: rayproject/ray:2.50.0-py311",
    )
    shas.append(commit(repo, "scale the ranker, upgrade the embedder"))
    (staging / "summarizer.yaml").unlink()
    shas.append(commit(repo, "retire the summarizer"))
    return repo, shas


def test_plan_json_between_two_revisions(
    history: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    repo, shas = history
    code = main(
        ["plan", str(repo), "--env", "staging", "--from", shas[0], "--to", shas[1], "-o", "json"]
    )
    assert code == 1
    plan = json.loads(capsys.readouterr().out)
    assert (plan["environment"], plan["from"], plan["to"]) == ("staging", shas[0], shas[1])
    by_name = {
        c["name"]: (w["wave"], c["action"], c["details"])
        for w in plan["waves"]
        for c in w["changes"]
    }
    assert by_name["embedder"][:2] == (0, "cluster-swap")
    assert by_name["ranker"][:2] == (1, "serve-update")
    assert by_name["ranker"][2] == ["app rank: deployment Ranker: num_replicas: 1 → 3"]
    assert by_name["summarizer"][:2] == (1, "unchanged")
    assert any("twice" in w for w in plan["warnings"])


def test_prunes_come_last(
    history: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    repo, shas = history
    edit(
        repo / "gitsync.yaml",
        "namespace: ray-staging\n",
        "namespace: ray-staging\n    prune: true\n",
    )
    pruning = commit(repo, "staging prunes")
    args = ["plan", str(repo), "--env", "staging", "--from", shas[1], "--to", pruning]
    assert main([*args, "-o", "json"]) == 1
    plan = json.loads(capsys.readouterr().out)
    last = plan["waves"][-1]
    assert last["prune"] is True
    assert [(c["name"], c["action"]) for c in last["changes"]] == [("summarizer", "prune")]
    assert "no longer in Git: will be deleted" in last["changes"][0]["summary"]


def test_without_prune_a_service_git_dropped_is_an_orphan_everywhere_the_plan_shows(
    history: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """The example's staging does not prune: table, JSON and the pull request comment must
    say what the rollout does (leave it running), never that it will be deleted."""
    repo, shas = history
    args = ["plan", str(repo), "--env", "staging", "--from", shas[1], "--to", shas[2]]
    assert main([*args, "-o", "json"]) == 0  # nothing to apply
    last = json.loads(capsys.readouterr().out)["waves"][-1]
    assert last["orphans"] is True
    assert "prune" not in last
    [change] = last["changes"]
    assert (change["name"], change["action"]) == ("summarizer", "orphan")
    assert change["summary"].startswith("no longer in Git; left running because prune is off")
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "  orphans:\n    summarizer  orphan" in table
    assert "no changes to apply; 1 left running (prune is off)" in table
    assert main([*args, "-o", "markdown"]) == 0
    comment = capsys.readouterr().out
    assert "**`staging/summarizer`**: `orphan` (`no longer in Git; left running" in comment
    for text in (table, comment):
        assert "deleted" not in text.replace("to delete it", "")


def test_no_changes_exits_zero_and_says_so(
    history: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    repo, shas = history
    assert main(["plan", str(repo), "--env", "production", "--from", shas[0], "--to", shas[2]]) == 0
    out = capsys.readouterr().out
    assert "no changes" in out
    assert "(3 unchanged)" in out


def test_invalid_target_revision_is_an_error_naming_the_problem(
    history: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    repo, shas = history
    edit(repo / "environments/staging/ranker.yaml", "name: ranker", "name: Ranker")
    bad = commit(repo, "break it")
    assert main(["plan", str(repo), "--env", "staging", "--from", shas[2], "--to", bad]) == 2
    err = capsys.readouterr().err
    assert "environments/staging/ranker.yaml:5: metadata.name 'Ranker'" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--env", "nowhere", "--from", "HEAD~1"], "no environment 'nowhere' in gitsync.yaml"),
        (["--env", "staging", "--from", "no-such-branch"], "'no-such-branch' names no commit"),
    ],
)
def test_errors_exit_two(
    history: tuple[Path, list[str]],
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    repo, _ = history
    assert main(["plan", str(repo), *args]) == 2
    assert message in capsys.readouterr().err


def test_not_a_repository(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(tmp_path), "--env", "staging", "--from", "HEAD~1"]) == 2
    assert "is not a Git repository" in capsys.readouterr().err


def test_console_script_pipes_json(history: tuple[Path, list[str]]) -> None:
    repo, shas = history
    gitsync = Path(sys.executable).parent / "gitsync"
    result = subprocess.run(
        [
            str(gitsync),
            "plan",
            str(repo),
            "--env",
            "staging",
            "--from",
            shas[0],
            "--to",
            shas[1],
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert json.loads(result.stdout)["waves"]


def test_every_environment_in_after_order_without_env(
    history: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    repo, shas = history
    assert main(["plan", str(repo), "--from", shas[0], "--to", shas[1], "-o", "json"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert [p["environment"] for p in document["environments"]] == ["staging", "production"]
    assert main(["plan", str(repo), "--from", shas[0], "--to", shas[1]]) == 1
    out = capsys.readouterr().out
    assert out.index("environment staging") < out.index("environment production")


def test_agent_config_sets_the_operator_rules(
    history: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo, shas = history
    config = tmp_path / "gitsync.yaml"
    config.write_text(
        "repository:\n  url: https://git.example.com/ray.git\nkuberay:\n  version: v1.5\n  zeroDowntime: false\n"
    )
    edit(
        repo / "environments/staging/embedder.yaml",
        "upgradeStrategy:\n    type: NewCluster\n  ",
        "",
    )
    edit(
        repo / "environments/staging/embedder.yaml",
        "image: rayproject/ray:2.50.0-py311",
        "image: rayproject/ray:2.51.0-py311",
    )
    head = commit(repo, "image without an upgradeStrategy")
    args = ["plan", str(repo), "--env", "staging", "--from", shas[2], "--to", head, "-o", "json"]
    assert main([*args, "--config", str(config)]) == 1
    [change] = [
        c
        for w in json.loads(capsys.readouterr().out)["waves"]
        for c in w["changes"]
        if c["name"] == "embedder"
    ]
    assert change["action"] == "cluster-ignored"
    assert main(args) == 1
    [change] = [
        c
        for w in json.loads(capsys.readouterr().out)["waves"]
        for c in w["changes"]
        if c["name"] == "embedder"
    ]
    assert change["action"] == "cluster-swap"


def test_json_and_yaml_give_each_changed_field_as_path_old_new(
    history: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    repo, shas = history
    args = ["plan", str(repo), "--env", "staging", "--from", shas[0], "--to", shas[1]]
    assert main([*args, "-o", "json"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert main([*args, "-o", "yaml"]) == 1
    assert yaml.safe_load(capsys.readouterr().out) == document  # one shape, two spellings
    fields = {c["name"]: c["fields"] for w in document["waves"] for c in w["changes"]}
    assert fields["ranker"] == [
        {
            "path": "spec.serveConfigV2.applications[rank].deployments[Ranker].num_replicas",
            "old": 1,
            "new": 3,
        }
    ]
    image = "spec.rayClusterConfig.headGroupSpec.template.spec.containers[ray-head].image"
    assert {"path": image, "old": "rayproject/ray:2.49.0-py311",
            "new": "rayproject/ray:2.50.0-py311"} in fields["embedder"]  # fmt: skip
    assert fields["summarizer"] == []


def test_validate_speaks_yaml_too(
    history: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    repo, _ = history
    assert main(["validate", str(repo), "-o", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert main(["validate", str(repo), "-o", "yaml"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == document
