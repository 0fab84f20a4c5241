"""``fewlabels methods [NAME]``: the registered methods, or every config key of one with its default."""

from __future__ import annotations

import argparse

__all__ = ["add_commands"]


def cmd_methods(args: argparse.Namespace) -> int:
    """List the registered methods, or print every config key of ``args.name`` with its type and default."""
    from fewlabels.config import describe
    from fewlabels.registry import available_methods, get_method

    if args.name:
        cls = get_method(args.name)
        print(f"{cls.name}: {cls.description}\n")
        for key, tp, default, help_text in describe(cls.config_class):
            print(f"  {key:<36} {tp:<28} default={default!r}  {help_text}")
        return 0
    for name, cls in available_methods().items():
        print(f"{name:<14} {cls.description}")
    return 0


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``methods``."""
    m = subparsers.add_parser("methods", help="list registered methods (or the config keys of one)")
    m.add_argument("name", nargs="?", help="show every config key of this method with its default")
    m.set_defaults(func=cmd_methods)
