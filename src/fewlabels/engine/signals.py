"""Stopping a run cleanly on SIGTERM (schedulers, spot machines) and SIGINT (Ctrl-C).

From the first training step to the end of training, :class:`StopRequest` replaces the handlers of both signals
with one that only records the signal (before that, while the data and the model are being set up, the process's
own handlers apply: Ctrl-C interrupts at once, as there is nothing to save yet). The training loop looks at the
record after each optimizer step; once every process agrees to stop, it writes a checkpoint of that step and raises
:class:`TrainingInterrupted`, which the command line turns into one ``error:`` line and the conventional exit status
128 + signal number (143 for SIGTERM, 130 for SIGINT). A second signal while the first is being honoured stops at
once (the last checkpoint on disk is intact, as after a kill), except a second SIGTERM within
``DUPLICATE_SIGTERM_S`` seconds of the first: SLURM signals every process of a job step and torchrun forwards its own
SIGTERM to its workers, so one request arrives twice.

Handlers can only be installed from the main thread; a run started in another thread keeps the process's handlers
and is not stoppable this way. The previous handlers come back when training ends, however it ends.
"""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType, TracebackType
from typing import Any

__all__ = ["STOP_SIGNALS", "StopRequest", "TrainingInterrupted", "signal_name"]

#: a second SIGTERM within this many seconds of the first is the same request delivered twice (SLURM + torchrun)
DUPLICATE_SIGTERM_S = 5.0

#: the signals that ask a run to stop after its current step
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)


def signal_name(signum: int) -> str:
    """'SIGTERM' for 15, or 'signal N' for a number that is not a known signal."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class TrainingInterrupted(BaseException):
    """Training stopped on a signal. Like KeyboardInterrupt, it is not an ``Exception``: code that catches every
    error (a data reader's ``except Exception``) does not swallow a user's request to stop.

    ``exit_code`` is the status a shell reports for a process ended by that signal (128 + its number).
    """

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopRequest:
    """Context manager recording SIGTERM/SIGINT during training; ``signum`` is the first one received, or None.

    Outside the main thread it installs nothing and ``signum`` stays None.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._first_at = 0.0
        self._previous: dict[signal.Signals, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if self.signum is None:
            self.signum, self._first_at = signum, now
            return
        if signum == signal.SIGTERM and self.signum == signal.SIGTERM and now - self._first_at < DUPLICATE_SIGTERM_S:
            # SLURM signals every process of a job step and torchrun forwards its own SIGTERM to its workers: the
            # same request arrives twice within moments. Only a later one means "stop at once".
            return
        raise TrainingInterrupted(
            signum,
            f"stopped at once by a second {signal_name(signum)}; the last checkpoint on disk is intact "
            "(resume with `fewlabels train --resume RUN_DIR`)",
        )

    def install(self) -> None:
        """Record SIGTERM/SIGINT from now on (main thread only; elsewhere, and when installed already, a no-op)."""
        if self._previous or threading.current_thread() is not threading.main_thread():
            return
        for sig in STOP_SIGNALS:
            previous = signal.getsignal(sig)
            # None: a handler installed outside Python, which cannot be reinstalled from here; restore the default.
            self._previous[sig] = signal.SIG_DFL if previous is None else previous
            signal.signal(sig, self._handle)

    def restore(self) -> None:
        """Put back the handlers that :meth:`install` replaced."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def __enter__(self) -> StopRequest:
        self.install()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.restore()
