"""``fewlabels data check KIND ROOT``: validate a dataset's layout before training on it."""

from __future__ import annotations

import argparse

__all__ = ["add_commands"]


def cmd_data_check(args: argparse.Namespace) -> int:
    """Print the check report of ROOT as a dataset of KIND; when it found problems, also one ``error:`` line on
    stderr (the count and the first problem) and exit status 1."""
    import sys

    from fewlabels.data.check import check_dataset

    report = check_dataset(args.kind, args.root)
    print(report.format())
    if report.ok:
        return 0
    first = (report.problems[0].splitlines() or [""])[0] if report.problems else "see above"
    where = f"{report.kind} dataset at {report.root}"
    print(f"error: {len(report.problems)} problem(s) in {where}: {first}", file=sys.stderr)
    return 1


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``data`` and its subcommand ``check``."""
    d = subparsers.add_parser("data", help="dataset utilities")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    dc = dsub.add_parser(
        "check",
        help="validate a dataset layout and print counts",
        description="Check that ROOT holds a dataset of KIND in its expected layout.",
    )
    dc.add_argument("kind", help="dataset name, as in configs (`data.dataset`)")
    dc.add_argument("root", nargs="?", help="dataset folder or file (not needed for generated or packaged datasets)")
    dc.set_defaults(func=cmd_data_check)
