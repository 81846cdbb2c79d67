"""Reading a checkout: repo config problems, file-system hazards, whole-environment rejection,
and the ``gitsync validate`` command."""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gitsync.checkout import read_tree, read_tree_cached
from gitsync.cli import main
from gitsync.manifests.yamldoc import parse_documents
from gitsync.source import GitSource, RepoSource

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plain-layout"
GOOD = (
    (Path(__file__).parent / "corpus" / "status-in-git.yaml")
    .read_text()
    .split("\n", 1)[1]
    .split("status:\n")[0]
)
CONFIG = """environments:
  - name: staging
    path: environments/staging
    namespace: ray-staging
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "gitsync.yaml").write_text(CONFIG)
    (tmp_path / "environments" / "staging").mkdir(parents=True)
    return tmp_path


def problems(root: Path) -> list[tuple[str, int | None, str]]:
    return [(p.file, p.line, p.message) for p in read_tree(root).problems]


def test_examples_are_valid() -> None:
    report = read_tree(EXAMPLES)
    assert report.problems == ()
    names = {
        env.environment.name: sorted(s.key.name for s in env.services)
        for env in report.environments
    }
    assert names == {e: ["embedder", "ranker", "summarizer"] for e in ("staging", "production")}
    waves = {s.wave for env in report.environments for s in env.services}
    assert waves == {0, 1}


def test_symlink_out_of_the_repository_is_refused(
    repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    outside = tmp_path_factory.mktemp("outside") / "secret.yaml"
    outside.write_text(GOOD)
    os.symlink(outside, repo / "environments/staging/svc.yaml")
    [(file, line, message)] = problems(repo)
    assert file == "environments/staging/svc.yaml"
    assert line is None
    assert message.startswith("symlink points outside the repository")


def test_symlink_into_another_environment_is_refused(repo: Path) -> None:
    (repo / "shared").mkdir()
    (repo / "shared/svc.yaml").write_text(GOOD)
    os.symlink("../../shared/svc.yaml", repo / "environments/staging/svc.yaml")
    [(file, _, message)] = problems(repo)
    assert file == "environments/staging/svc.yaml"
    assert "symlink leaves the environment folder 'environments/staging'" in message


def test_symlink_inside_the_environment_is_followed(repo: Path) -> None:
    (repo / "environments/staging/real").mkdir()
    (repo / "environments/staging/real/svc.yaml").write_text(GOOD)
    os.symlink("real", repo / "environments/staging/link")
    report = read_tree(repo)
    assert report.problems == ()
    assert [s.source for s in report.environments[0].services] == [
        "environments/staging/real/svc.yaml"
    ]


def test_symlink_loop_terminates(repo: Path) -> None:
    (repo / "environments/staging/svc.yaml").write_text(GOOD)
    os.symlink(".", repo / "environments/staging/again")
    assert read_tree(repo).problems == ()


def test_environment_path_must_stay_in_the_repository(tmp_path: Path) -> None:
    (tmp_path / "gitsync.yaml").write_text(CONFIG.replace("environments/staging", "../elsewhere"))
    assert problems(tmp_path) == [
        ("gitsync.yaml", 3, "path '../elsewhere' must be relative and stay inside the repository")
    ]


def test_missing_environment_folder_points_at_the_config(tmp_path: Path) -> None:
    (tmp_path / "gitsync.yaml").write_text(CONFIG)
    assert problems(tmp_path) == [
        (
            "gitsync.yaml",
            2,
            "environment 'staging': path 'environments/staging' is not a folder in this revision",
        )
    ]


def test_too_large_file_is_not_read(repo: Path) -> None:
    (repo / "environments/staging/huge.yaml").write_text("# padding\n" * 200_000)
    [(file, line, message)] = problems(repo)
    assert (file, line) == ("environments/staging/huge.yaml", None)
    assert message == "file is 2000000 bytes; manifests are limited to 1048576 bytes"


def test_non_utf8_names_the_line(repo: Path) -> None:
    (repo / "environments/staging/latin1.yaml").write_bytes(GOOD.encode() + b"# caf\xe9\n")
    [(file, line, message)] = problems(repo)
    assert (file, line) == ("environments/staging/latin1.yaml", GOOD.count("\n") + 1)
    assert "not UTF-8 text (byte 0xe9)" in message


def test_billion_laughs_is_refused(repo: Path) -> None:
    bomb = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for previous, name in zip("abcdefgh", "bcdefghi", strict=True):
        bomb += f"{name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]\n"
    (repo / "environments/staging/bomb.yaml").write_text(bomb)
    [(file, line, message)] = problems(repo)
    assert (file, line) == ("environments/staging/bomb.yaml", 1)
    assert "YAML holds or expands to more than 100000 values" in message


def test_one_bad_file_invalidates_the_whole_environment(repo: Path) -> None:
    (repo / "environments/staging/good.yaml").write_text(GOOD.replace("name: svc", "name: good"))
    (repo / "environments/staging/bad.yaml").write_text(GOOD.replace("name: svc", "name: Bad"))
    report = read_tree(repo)
    assert [p.file for p in report.problems] == ["environments/staging/bad.yaml"]
    assert report.environments[0].services == ()


def test_every_problem_is_reported_not_just_the_first(repo: Path) -> None:
    (repo / "environments/staging/a.yaml").write_text(GOOD.replace("name: svc", "name: A_"))
    (repo / "environments/staging/b.yaml").write_text(
        GOOD.replace("num_replicas: 1", "num_replicas: x")
    )
    (repo / "environments/staging/c.yaml").write_text("kind: [\n")
    assert [p[0].rsplit("/", 1)[1] for p in problems(repo)] == ["a.yaml", "b.yaml", "c.yaml"]


def test_duplicate_service_across_files_names_both_places(repo: Path) -> None:
    (repo / "environments/staging/one.yaml").write_text(GOOD)
    (repo / "environments/staging/two.yaml").write_text("# a comment\n" + GOOD)
    assert problems(repo) == [
        (
            "environments/staging/two.yaml",
            2,
            "ray-staging/svc is declared twice in environment 'staging' (first at environments/staging/one.yaml:1)",
        )
    ]


def test_multi_document_files_and_ignored_entries(repo: Path) -> None:
    two = GOOD + "---\n" + GOOD.replace("name: svc", "name: other") + "---\n"
    (repo / "environments/staging/both.yml").write_text(two)
    (repo / "environments/staging/README.md").write_text("not a manifest")
    (repo / "environments/staging/.hidden.yaml").write_text("kind: [")
    report = read_tree(repo)
    assert report.problems == ()
    services = report.environments[0].services
    assert [(s.key.name, s.line) for s in services] == [("other", GOOD.count("\n") + 2), ("svc", 1)]
    assert all(s.manifest["metadata"]["namespace"] == "ray-staging" for s in services)


def test_allowed_kinds_are_loaded_others_refused(repo: Path) -> None:
    config_map = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  a: b\n"
    (repo / "environments/staging/cm.yaml").write_text(config_map)
    assert "v1 ConfigMap is not managed by gitsync" in problems(repo)[0][2]
    (repo / "gitsync.yaml").write_text(
        CONFIG + "allowedKinds:\n  - {apiVersion: v1, kind: ConfigMap}\n"
    )
    report = read_tree(repo)
    assert report.problems == ()
    assert [(o.kind, o.name, o.namespace) for o in report.environments[0].objects] == [
        ("ConfigMap", "settings", "ray-staging")
    ]


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ("", [("gitsync.yaml", 1, "gitsync.yaml must hold exactly one YAML document")]),
        ("environments: []\n", [("gitsync.yaml", 1, "environments must be a non-empty list")]),
        (
            CONFIG + "extra: 1\n",
            [
                (
                    "gitsync.yaml",
                    5,
                    "unknown key 'extra' in the file (allowed: allowedKinds, environments, previews)",
                )
            ],
        ),
        (
            CONFIG.replace("namespace: ray-staging", "namespace: Ray_Staging"),
            [
                (
                    "gitsync.yaml",
                    4,
                    "namespace 'Ray_Staging' is not a DNS-1123 label: at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit",
                )
            ],
        ),
        (
            CONFIG + "  - name: staging\n    path: x\n    namespace: y\n",
            [("gitsync.yaml", 5, "environment 'staging' is declared twice (first on line 2)")],
        ),
        (
            CONFIG + "    after: [production]\n",
            [
                (
                    "gitsync.yaml",
                    5,
                    "environment 'staging' comes after 'production', which is not declared",
                )
            ],
        ),
        (
            CONFIG
            + "    after: [b]\n  - name: b\n    path: environments/staging\n    namespace: b\n    after: [staging]\n",
            [("gitsync.yaml", 1, "the 'after' order has a cycle among: staging, b")],
        ),
        (
            CONFIG + "previews:\n  from: nowhere\n  namespace: ray-previews\n",
            [
                (
                    "gitsync.yaml",
                    6,
                    "previews.from names 'nowhere', which is not a declared environment",
                )
            ],
        ),
        (
            CONFIG.replace("    namespace: ray-staging\n", ""),
            [("gitsync.yaml", 2, "environments[0] needs 'namespace'")],
        ),
    ],
    ids=[
        "empty",
        "no-environments",
        "unknown-key",
        "bad-namespace",
        "duplicate-env",
        "unknown-after",
        "cycle",
        "unknown-preview-source",
        "missing-namespace",
    ],
)
def test_repo_config_problems(
    repo: Path, config: str, expected: list[tuple[str, int, str]]
) -> None:
    (repo / "gitsync.yaml").write_text(config)
    assert problems(repo) == expected


def test_non_utf8_repo_config(tmp_path: Path) -> None:
    (tmp_path / "gitsync.yaml").write_bytes(b"environments:\n  - name: caf\xe9\n")
    [(file, line, message)] = problems(tmp_path)
    assert (file, line) == ("gitsync.yaml", 2)
    assert "not UTF-8 text" in message


def test_missing_repo_config(tmp_path: Path) -> None:
    [(file, line, message)] = problems(tmp_path)
    assert (file, line) == ("gitsync.yaml", None)
    assert "no gitsync.yaml at the repository root" in message


def test_environment_order(tmp_path: Path) -> None:
    report = read_tree(EXAMPLES)
    assert report.config is not None
    assert [[e.name for e in stage] for stage in report.config.ordered()] == [
        ["staging"],
        ["production"],
    ]


# -- gitsync validate ----------------------------------------------------------------------


def test_validate_examples_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(EXAMPLES)]) == 0
    out, err = capsys.readouterr()
    assert out == ""
    assert "ok (staging: 3 RayServices, production: 3 RayServices)" in err


def test_validate_prints_every_problem_and_exits_one(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (repo / "environments/staging/a.yaml").write_text(GOOD.replace("name: svc", "name: A"))
    (repo / "environments/staging/b.yaml").write_text(
        GOOD.replace("route_prefix: /app", "route_prefix: app")
    )
    assert main(["validate", str(repo)]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "environments/staging/a.yaml:4: metadata.name 'A' is not a DNS-1035 label: lowercase letters, "
        "digits and '-', starting with a letter and ending with a letter or digit",
        "environments/staging/b.yaml:11: serveConfigV2: application 'app': route_prefix must start with '/', not 'app'",
    ]
    assert "2 problems in 2 files" in err


def test_validate_json(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (repo / "environments/staging/a.yaml").write_text(GOOD.replace("name: svc", "name: A"))
    assert main(["validate", str(repo), "-o", "json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    assert report["problems"][0]["file"] == "environments/staging/a.yaml"
    assert report["problems"][0]["line"] == 4
    assert report["environments"][0]["name"] == "staging"


def test_validate_refuses_a_missing_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_validate_console_script(tmp_path: Path) -> None:
    gitsync = shutil.which("gitsync") or str(Path(sys.executable).parent / "gitsync")
    result = subprocess.run(
        [gitsync, "validate", str(EXAMPLES)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_parsing_keeps_no_yaml_nodes_alive() -> None:
    """A long-running agent parses every manifest again at each new revision: nothing of a
    parse may stay reachable afterwards (PyYAML's construct_object caches every node)."""
    text = "a: 1\nb: [true, 2.5, null, 3]\nc: {d: 4}\n"

    def yaml_objects() -> int:
        gc.collect()
        return sum(isinstance(o, yaml.Node | yaml.error.Mark) for o in gc.get_objects())

    before = yaml_objects()
    for _ in range(50):
        documents, problems = parse_documents(text, "x.yaml")
        assert problems == []
        assert documents[0].data == {"a": 1, "b": [True, 2.5, None, 3], "c": {"d": 4}}
    del documents
    assert yaml_objects() <= before


def test_a_revisions_report_is_read_once_and_kept_next_to_its_tree(tmp_path: Path) -> None:
    """Trees under the source's cache never change once materialised, so the parsed report
    is reused: a later edit of the files is not seen (proof the cache answered)."""
    tree = tmp_path / "trees" / ("a" * 40)
    shutil.copytree(EXAMPLES, tree)
    first = read_tree_cached(tree)
    assert first == read_tree(tree)
    kept = next(p for p in (tmp_path / "trees").glob("*.pickle") if p.name.count(".") == 2)
    assert kept.name.startswith("a" * 40 + ".report-")  # and one per environment beside it
    for manifest in (tree / "environments").rglob("*.yaml"):
        manifest.write_text("kind: [broken\n")
    assert read_tree_cached(tree) == first
    kept.write_bytes(b"not a pickle")  # torn or foreign: parsed again, and rewritten
    again = read_tree_cached(tree)
    assert not again.ok
    assert read_tree_cached(tree) == again


def test_one_environments_manifests_are_read_without_the_others(tmp_path: Path) -> None:
    """A drift check of one environment reads its part of the kept report: the config and
    every problem whole, the other environments' manifests not at all (a broken part of
    another environment's is never opened)."""
    tree = tmp_path / "trees" / ("a" * 40)
    shutil.copytree(EXAMPLES, tree)
    whole = read_tree_cached(tree)
    names = [e.environment.name for e in whole.environments]
    assert names == ["staging", "production"]
    next(tmp_path.glob("trees/*.0.pickle")).write_bytes(b"torn")  # staging's part
    production = read_tree_cached(tree, environments=["production"])
    assert production.config == whole.config
    assert production.problems == whole.problems
    assert production.environments == (whole.environments[1],)
    assert read_tree_cached(tree, environments=()).environments == ()
    assert read_tree_cached(tree) == whole  # a torn part: the tree is read again


def test_pruning_trees_removes_their_reports(tmp_path: Path) -> None:
    source = GitSource(RepoSource("file:///nowhere", "main", tmp_path))
    for sha in ("a" * 40, "b" * 40):
        shutil.copytree(EXAMPLES, source.trees_dir / sha)
        read_tree_cached(source.trees_dir / sha)
    assert source.prune(keep=["b" * 40]) == ["a" * 40]
    assert {p.name[:40] for p in source.trees_dir.iterdir()} == {"b" * 40}
