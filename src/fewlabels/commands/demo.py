"""``fewlabels demo``: the offline demo of the methods on embedded data, with its report."""

from __future__ import annotations

import argparse

__all__ = ["add_commands"]


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo stages into ``--out``."""
    from fewlabels.demo import run_demo

    run_demo(out_dir=args.out, methods=args.method, minutes=args.minutes, seed=args.seed)
    return 0


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``demo``."""
    dm = subparsers.add_parser("demo", help="offline demo of the methods on embedded data, with a report")
    dm.add_argument("--method", action="append", help="run only this method (repeatable)")
    dm.add_argument("--minutes", type=float, default=None, help="scale the time budget")
    dm.add_argument("--out", default="runs/demo", help="demo folder (default runs/demo)")
    dm.add_argument("--seed", type=int, default=0, help="seed of every run (default 0)")
    dm.set_defaults(func=cmd_demo)
