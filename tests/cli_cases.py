"""What the bad-input catalogues share: ``fewlabels ARGS`` run in this process as a shell would see it, the digests of
the files a case was given, and the config of a tiny few-shot run.

A command run in this process may change the process: its working directory, environment, signal handlers, torch's
thread count, the random generators it seeds, the root logger, the warnings filters and the allocator opt-in of
``main()``. :func:`process_state_kept` puts every one of them back, so that each case starts as a fresh process would
and leaves nothing behind for the next test.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import random
import signal
import subprocess
import traceback
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fewlabels.cli import main
from fewlabels.engine import allocator
from fewlabels.engine.rundir import LOCK_NAME

#: the handlers a command may install (training records SIGTERM/SIGINT to checkpoint and stop)
SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def process_state_kept(cwd: Path | None = None) -> Iterator[None]:
    """Run the body in ``cwd`` (if given), then put back what a command may have changed in this process."""
    saved_cwd = os.getcwd()
    environ = dict(os.environ)
    handlers = {sig: signal.getsignal(sig) for sig in SIGNALS}
    threads = torch.get_num_threads()
    generators = torch.get_rng_state(), np.random.get_state(), random.getstate()
    root = logging.getLogger()
    level, root_handlers = root.level, list(root.handlers)
    opted_in = allocator._opted_in
    try:
        with warnings.catch_warnings():
            if cwd is not None:
                os.chdir(cwd)
            yield
    finally:
        os.chdir(saved_cwd)
        if dict(os.environ) != environ:
            os.environ.clear()
            os.environ.update(environ)
        for sig, handler in handlers.items():
            if handler is not None and signal.getsignal(sig) is not handler:
                signal.signal(sig, handler)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        torch.set_rng_state(generators[0])
        np.random.set_state(generators[1])
        random.setstate(generators[2])
        root.setLevel(level)
        root.handlers[:] = root_handlers
        allocator._opted_in = opted_in  # main() opts the process in; the test process is put back as it was


def run_cli(args: Sequence[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``fewlabels ARGS`` run in this process: its exit status, stdout, and stderr with the warnings it logged and
    the Python warnings it raised (under Python's default filters, as a user's shell would print them). An exception
    that escapes ``main`` is written to stderr as the traceback a user would see (status 1)."""
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setLevel(logging.WARNING)
    with process_state_kept(cwd), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        logging.getLogger().addHandler(handler)  # removed again with the root logger's other changes
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as e:  # argparse: --help, usage errors
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except Exception:  # noqa: BLE001 - what a user would see as a traceback
                err.write(traceback.format_exc())
                code = 1
    for w in caught:
        err.write(warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line))
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def error_lines(stderr: str) -> list[str]:
    """The ``error:`` lines of a command's stderr."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def digests(paths: Iterable[Path]) -> dict[str, str]:
    """sha256 of every file among ``paths`` and below the folders among them, by path; the lock file that training
    keeps in a run directory (the engine's, not the user's) is left out."""
    files: list[Path] = []
    for p in paths:
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            files += [f for f in p.rglob("*") if f.is_file() and f.name != LOCK_NAME]
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(files)}


def given_paths(world: Path, argv: Sequence[str]) -> list[Path]:
    """The existing files and folders below ``world`` among a case's arguments and override values (a run
    directory, inputs, --out, config files, ``data.root=...``)."""
    values = [a.split("=", 1)[1] if "=" in a and not a.startswith(str(world)) else a for a in argv]
    return [Path(v) for v in values if v.startswith(str(world)) and Path(v).exists()]


def tiny_scl_config(output_dir: Path, name: str = "sclrun") -> dict[str, Any]:
    """A few-shot run of one step on generated glyphs (4 per class), 3 validation episodes of 1 shot."""
    return {
        "method": "scl",
        "name": name,
        "output_dir": str(output_dir),
        "model": {"backbone": "conv4"},
        "data": {"dataset": "glyphs", "image_size": 32, "glyphs_per_class": 4},
        "eval": {"shots": [1], "queries": 2, "val_episodes": 3},
        "train": {"steps": 1, "batch_size": 4, "checkpoint_every": 1},
    }
