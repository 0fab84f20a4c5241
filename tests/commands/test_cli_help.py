"""``--help`` works for the top level and for every subcommand, and no command was lost in the command layer."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from conftest import subprocess_env
from fewlabels.cli import build_parser, main
from fewlabels.commands import COMMANDS

EXPECTED = {
    "train",
    "eval",
    "predict",
    "report",
    "export",
    "data",
    "methods",
    "demo",
    "cct-pseudo-labels",
    "fewshot-eval",
    "peft-count",
    "export-delta",
    "predict-delta",
    "bias-changes",
}


def _subcommands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path of ``parser``, nested ones included (``("data", "check")``)."""
    paths: list[tuple[str, ...]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                paths.append((*prefix, name))
                paths.extend(_subcommands(child, (*prefix, name)))
    return paths


ALL = _subcommands(build_parser())


def test_every_command_family_adds_its_commands_once():
    assert {path[0] for path in ALL} == EXPECTED
    assert len([p for p in ALL if len(p) == 1]) == len(EXPECTED)
    assert ("data", "check") in ALL
    assert len(COMMANDS) == 8


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_top_level_help_exits_zero_and_lists_every_command(flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([flag])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: fewlabels")
    assert all(name in out for name in EXPECTED)
    assert "95% CI" in out  # the help string with a literal % (it crashed argparse's formatting)


@pytest.mark.parametrize("path", ALL, ids=[" ".join(p) for p in ALL])
def test_every_subcommand_help_exits_zero_and_prints_its_usage(path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*path, "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: fewlabels {' '.join(path)}")


def test_the_installed_entry_point_prints_help():
    res = subprocess.run(
        [sys.executable, "-m", "fewlabels", "--help"], capture_output=True, text=True, env=subprocess_env(), timeout=120
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.startswith("usage: fewlabels") and "Traceback" not in res.stderr
