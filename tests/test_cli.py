"""The command line: every command documents itself with an example, and the
package runs as `python -m acorn`."""

import argparse
import subprocess
import sys

import pytest

from acorn.cli import build_parser, main


def _all_commands(parser: argparse.ArgumentParser, prefix=()):
    yield prefix
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _all_commands(sub, (*prefix, name))


COMMANDS = list(_all_commands(build_parser()))


def test_the_pipeline_stages_exist():
    names = {" ".join(c) for c in COMMANDS}
    for expected in ["speedrun", "data world", "tokenizer train", "tokenizer encode", "tokenizer decode",
                     "tokenizer info", "tokenizer eval", "tokens count"]:
        assert expected in names


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "acorn")
def test_help_shows_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out and "acorn " in out.split("example:")[1]


def test_python_dash_m_acorn():
    r = subprocess.run([sys.executable, "-m", "acorn", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("acorn ")


@pytest.mark.parametrize("argv", [["tokenizer"], ["data", "world", "--out", "x", "--size", "huge"],
                                  ["tokenizer", "train", "f.txt", "--out", "o", "--vocab-size", "many"]])
def test_usage_errors_are_one_line_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("acorn: error: ") and "--help" in err
