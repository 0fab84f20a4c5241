"""Command line: ``fewlabels train | eval | predict | data check | demo | report | methods | ...``.

This module is the entry point only: the commands live in :mod:`fewlabels.commands`, one module per command
family. Every command validates its inputs before heavy work and reports problems as one ``error:`` line naming
what was wrong and what to do (exit status 2); a diverged run exits with status 3.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence

from fewlabels.commands import add_commands
from fewlabels.config import ConfigError


def build_parser() -> argparse.ArgumentParser:
    """The ``fewlabels`` parser with every subcommand of :data:`fewlabels.commands.COMMANDS`."""
    from fewlabels import __version__

    p = argparse.ArgumentParser(prog="fewlabels", description="Deep learning with few labels: CCT, AC, SCL, RelBitFit.")
    p.add_argument("--version", action="version", version=f"fewlabels {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its problems become one ``error:`` line on stderr and exit status 2 (3: diverged; 143 and
    130: training stopped by SIGTERM or SIGINT after a checkpoint of its last step)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    from fewlabels.data.base import DataError
    from fewlabels.engine import CheckpointError, RunDirError, TrainingDiverged, TrainingInterrupted
    from fewlabels.engine.allocator import opt_in

    opt_in()  # a command-line process may tune malloc for CPU training; a user's Python process is left alone
    try:
        return int(args.func(args))
    except TrainingInterrupted as e:  # SIGTERM/SIGINT: checkpoint written, status 143/130 as a shell reports it
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except (ConfigError, DataError, RunDirError, CheckpointError, OSError, ValueError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2


def one_line(error: BaseException) -> str:
    """The message of ``error``; for one re-raised from a DataLoader worker (``Caught DataError in DataLoader worker
    process 0. Original Traceback ...``) the original message, without the worker's traceback."""
    text = str(error)
    if "Original Traceback" not in text:
        return text
    pattern = re.compile(r"^[\w.]*(?:Error|Exception|Interrupt): (.+)$")
    raised = [m for m in map(pattern.match, text.splitlines()) if m]
    return raised[-1].group(1) if raised else text.splitlines()[0]
