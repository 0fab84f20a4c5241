"""The command layer: every ``fewlabels`` subcommand, one module per command family.

Each module exposes ``add_commands(subparsers)``, which adds its subcommands and sets ``func`` on each to a
``cmd_*(args) -> exit status`` function; :data:`COMMANDS` lists them in the order ``fewlabels --help`` shows
them. Commands load runs (:func:`fewlabels.engine.load_run`) and configs, then call the methods with the loaded
objects: methods never import this package. Adding a command = one module here + its entry in :data:`COMMANDS`
+ its test.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from fewlabels.commands import data, demo, export, fewshot, methods, peft, pseudo_labels, run

__all__ = ["COMMANDS", "add_commands"]

#: the ``add_commands`` of every command family, in ``fewlabels --help`` order
COMMANDS: tuple[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None], ...] = (
    run.add_commands,
    export.add_commands,
    data.add_commands,
    methods.add_commands,
    demo.add_commands,
    pseudo_labels.add_commands,
    fewshot.add_commands,
    peft.add_commands,
)


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add every subcommand of every family in :data:`COMMANDS` to the top-level parser's ``subparsers``."""
    for add in COMMANDS:
        add(subparsers)
