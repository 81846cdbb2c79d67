"""Shell completion generated from the argument parser: the bash script is sourced in a real
bash and asked for candidates, as bash asks when Tab is pressed."""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

import pytest

from gitsync.cli import build_parser, main
from gitsync.completion import SHELLS, model, script

BASH = shutil.which("bash")


def candidates(completion: str, words: list[str], tmp_path: Path) -> list[str]:
    """COMPREPLY after bash runs the completion function for ``words`` (the last one is the
    word being completed), in ``tmp_path`` (file names complete from there)."""
    assert BASH is not None, "bash is needed to test the bash completion"
    source = tmp_path / "completion.bash"
    source.write_text(completion)
    function = completion.split("complete -o filenames -F ", 1)[1].split(maxsplit=1)[0]
    quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in words)
    program = (
        f"source {source}\n"
        f"COMP_WORDS=({quoted}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1))\n"
        f'{function}; printf "%s\\n" "${{COMPREPLY[@]}}"\n'
    )
    answer = subprocess.run(
        [BASH, "--norc", "--noprofile", "-c", program],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=30,
        check=True,
    )
    assert answer.stderr == ""
    return [line for line in answer.stdout.splitlines() if line]


@pytest.fixture
def bash_script(capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["completion", "bash"]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["gitsync", "pl"], ["plan"]),
        (["gitsync", "d"], ["diff", "drift", "demo"]),
        (["gitsync", "--ver"], ["--version"]),
        (["gitsync", "plan", "-o", ""], ["table", "json", "yaml", "markdown"]),
        (["gitsync", "plan", "--output", "j"], ["json"]),
        (["gitsync", "status", "-o", ""], ["text", "json", "yaml"]),
        (["gitsync", "plan", "--kuberay-v"], ["--kuberay-version"]),
        (["gitsync", "diff", "--color", "a"], ["auto", "always"]),
        (["gitsync", "completion", ""], ["bash", "zsh", "fish"]),
        (["gitsync", "plan", "--env", ""], []),  # a value to type, not a flag or a file
        (["gitsync", "--debug", "sy"], ["sync"]),
    ],
)
def test_bash_completes_commands_options_and_values(
    bash_script: str, tmp_path: Path, words: list[str], expected: list[str]
) -> None:
    assert sorted(candidates(bash_script, words, tmp_path)) == sorted(expected)


def test_bash_completes_file_names_for_paths(bash_script: str, tmp_path: Path) -> None:
    (tmp_path / "agent.yaml").write_text("")
    (tmp_path / "kubeconfig").write_text("")
    assert candidates(bash_script, ["gitsync", "sync", "--config", "ag"], tmp_path) == [
        "agent.yaml"
    ]
    assert candidates(bash_script, ["gitsync", "validate", "kub"], tmp_path) == ["kubeconfig"]


def test_completion_follows_the_parser(tmp_path: Path) -> None:
    """A command or option added to the parser completes with no edit to a script."""
    parser = argparse.ArgumentParser(prog="tool")
    commands = parser.add_subparsers(dest="command")
    deploy = commands.add_parser("deploy", help="deploy it")
    deploy.add_argument("--mode", choices=("fast", "safe"))
    completion = script(parser, "bash")
    assert candidates(completion, ["tool", "de"], tmp_path) == ["deploy"]
    assert candidates(completion, ["tool", "deploy", "--mode", ""], tmp_path) == ["fast", "safe"]


@pytest.mark.parametrize("shell", SHELLS)
def test_every_command_and_option_is_in_every_shells_script(shell: str) -> None:
    parser = build_parser()
    text = script(parser, shell)
    _, commands = model(parser)
    for command in commands:
        assert command.name in text
        for option in command.options:
            for flag in option.flags:
                shown = flag.lstrip("-") if shell == "fish" else flag
                assert shown in text, (shell, command.name, flag)
            for choice in option.choices:
                assert choice in text
    assert "--version" in text or "-l version" in text
