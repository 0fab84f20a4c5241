"""Built-in methods. Importing this package registers every one of them."""

from __future__ import annotations

import argparse
import importlib

#: method packages, imported in this order; each registers itself and may add CLI commands via ``add_cli``
BUILTIN = ("supervised", "cct", "ac", "scl", "relbitfit")


def _packages() -> list:
    return [importlib.import_module(f"fewlabels.methods.{name}") for name in BUILTIN]


def extend_cli(subparsers: argparse._SubParsersAction) -> None:
    """Let method packages add their own subcommands (e.g. ``fewshot-eval``, ``peft-count``)."""
    for pkg in _packages():
        add = getattr(pkg, "add_cli", None)
        if add is not None:
            add(subparsers)


_packages()
