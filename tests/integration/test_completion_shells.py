"""`gitsync completion zsh` and `gitsync completion fish` in the real shells (Debian's zsh and
fish, unpacked by testbed/build.sh): each is asked for candidates as it asks when Tab is
pressed. zsh runs interactively on a pseudo-terminal (its zpty module) with compinit, and a
Tab goes through its completion widget; fish answers ``complete --do-complete``. The bash
script is tested the same way in tests/unit/test_completion.py."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
from pathlib import Path

import pytest

from gitsync.cli import main
from gitsync.completion import script
from testbed.binaries import Binaries

# Words typed, then what the shell offers: commands, flags, an option's choices, a positional's.
CASES = [
    ("gitsync pl", ["plan"]),
    ("gitsync d", ["demo", "diff", "drift"]),
    ("gitsync --ver", ["--version"]),
    ("gitsync plan -o ", ["json", "markdown", "table", "yaml"]),
    ("gitsync status --output j", ["json"]),
    ("gitsync plan --kuberay-v", ["--kuberay-version"]),
    ("gitsync diff --color a", ["always", "auto"]),
    ("gitsync completion ", ["bash", "fish", "zsh"]),
    ("gitsync --debug sy", ["sync"]),
]

# Run by zsh -f: starts an interactive zsh on a pseudo-terminal, types the words and a Tab,
# and prints every candidate the completion system adds (compadd wrapped), one per line.
ZSH_DRIVER = r"""
zmodload zsh/zpty || exit 3
zpty z $ZSH_BIN -i
zpty -w z "PROMPT=''; autoload -U compinit; compinit -u -D"
zpty -w z "zstyle ':completion:*' list-grouped false; zstyle ':completion:*' insert-tab false"
zpty -w z 'compadd () {
  if [[ ${@[1,-1]} =~ "(^|\s)-(O|A|D)\s" ]]; then builtin compadd "$@"; return $?; fi
  typeset -a __hits
  builtin compadd -A __hits "$@"
  local ret=$?
  (( $#__hits )) && print -rl -- "<hit>"${^__hits}
  builtin compadd "$@"
  return $ret
}'
zpty -w z 'finish () { print -r -- "<do""ne>"; exit }; zle -N finish; bindkey "^X" finish'
zpty -w z 'bindkey "^I" complete-word'
zpty -w z "print -r -- RE''ADY"
zpty -r z out '*READY*' || exit 4
zpty -w -n z "$LINE"$'\t'
zpty -w -n z $'\C-X'
all=""
for i in {1..400}; do
  if zpty -rt z chunk; then all+=$chunk; [[ $all == *'<done>'* ]] && break; else sleep 0.05; fi
done
[[ $all == *'<done>'* ]] || { print -r -- "no answer: $all"; exit 5 }
print -r -- "$all" | grep -a -o '<hit>[^<]*' | sed 's/^<hit>//' | tr -d '\r' | sort -u
"""


def zsh_candidates(binaries: Binaries, completion: str, line: str, tmp_path: Path) -> list[str]:
    functions = tmp_path / "functions"
    functions.mkdir(exist_ok=True)
    (functions / "_gitsync").write_text(completion)
    home = tmp_path / "zdotdir"
    home.mkdir(exist_ok=True)
    # Read by the interactive zsh before anything else: where its modules (zle, complete) and
    # functions (compinit, _arguments) were unpacked, and the script under test first.
    (home / ".zshenv").write_text(
        f"module_path=({binaries.zsh_modules})\n"
        f"fpath=({functions} {binaries.zsh_functions}/**/*(/N))\n"
    )
    driver = tmp_path / "driver.zsh"
    driver.write_text(ZSH_DRIVER)
    answer = subprocess.run(
        [str(binaries.zsh), "-f", "-c", f"module_path=({binaries.zsh_modules}); source {driver}"],
        env={**os.environ, "ZDOTDIR": str(home), "ZSH_BIN": str(binaries.zsh), "LINE": line},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert answer.returncode == 0, (answer.stdout, answer.stderr)
    return [word for word in answer.stdout.splitlines() if word]


def fish_candidates(binaries: Binaries, completion: str, line: str, tmp_path: Path) -> list[str]:
    source = tmp_path / "gitsync.fish"
    source.write_text(completion)
    program = (
        f"set fish_function_path {binaries.fish_functions}; source {source}; "
        f"complete --do-complete {quote_fish(line)}"
    )
    answer = subprocess.run(
        [str(binaries.fish), "--no-config", "-c", program],
        env={**os.environ, "LD_LIBRARY_PATH": str(binaries.fish_library_path)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert answer.returncode == 0, answer.stderr
    assert answer.stderr == ""
    return sorted({row.split("\t", 1)[0] for row in answer.stdout.splitlines() if row})


def quote_fish(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


@pytest.fixture(scope="module")
def scripts() -> dict[str, str]:
    """What `gitsync completion zsh|fish` prints."""
    generated = {}
    for shell in ("zsh", "fish"):
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            assert main(["completion", shell]) == 0
        generated[shell] = buffer.getvalue()
    return generated


@pytest.mark.parametrize(("line", "expected"), CASES)
def test_zsh_completes_commands_options_and_values(
    binaries: Binaries, scripts: dict[str, str], tmp_path: Path, line: str, expected: list[str]
) -> None:
    assert zsh_candidates(binaries, scripts["zsh"], line, tmp_path) == sorted(expected)


@pytest.mark.parametrize(("line", "expected"), CASES)
def test_fish_completes_commands_options_and_values(
    binaries: Binaries, scripts: dict[str, str], tmp_path: Path, line: str, expected: list[str]
) -> None:
    assert fish_candidates(binaries, scripts["fish"], line, tmp_path) == sorted(expected)


def test_both_shells_complete_file_names_for_paths(
    binaries: Binaries, scripts: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "agent.yaml").write_text("")
    assert zsh_candidates(binaries, scripts["zsh"], "gitsync sync --config ag", tmp_path) == [
        "agent.yaml"
    ]
    assert fish_candidates(binaries, scripts["fish"], "gitsync sync --config ag", tmp_path) == [
        "agent.yaml"
    ]


def test_both_shells_follow_the_parser(binaries: Binaries, tmp_path: Path) -> None:
    """A command or option added to the parser completes with no edit to a script."""
    parser = argparse.ArgumentParser(prog="gitsync")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("deploy", help="deploy it").add_argument("--mode", choices=("fast", "safe"))
    for shell, candidates in (("zsh", zsh_candidates), ("fish", fish_candidates)):
        completion = script(parser, shell)
        assert candidates(binaries, completion, "gitsync de", tmp_path) == ["deploy"], shell
        assert candidates(binaries, completion, "gitsync deploy --mode ", tmp_path) == [
            "fast",
            "safe",
        ], shell
