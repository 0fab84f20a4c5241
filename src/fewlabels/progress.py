"""Progress of long loops on stderr: a bar on a terminal, a sparse status line in logs.

One policy for every long command (``train``, ``eval``, ``predict``, ``fewshot-eval``, ``report``, ``data check``):

- stderr is a terminal: a tqdm bar with the count, the rate and the ETA (removed when the loop ends, unless
  ``leave``);
- otherwise (a log file, CI, a pipe): one line such as ``eval: 120/500 images, 3.1 images/s, eta 2m03s`` at most
  every :func:`status_interval` seconds (30 by default), and always a final line when the loop completes;
- nothing on the processes of rank > 0 under ``torch.distributed``, nothing with ``FEWLABELS_PROGRESS=0``;
- never anything on stdout, where the commands print their results (JSON, CSV, summaries).

Environment: ``FEWLABELS_PROGRESS_INTERVAL`` (seconds between status lines when stderr is not a terminal) and
``FEWLABELS_PROGRESS=0`` (no progress at all). This module imports nothing from the package: every layer may use it.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import IO, Any, TypeVar

__all__ = [
    "DEFAULT_INTERVAL",
    "INTERVAL_ENV",
    "SWITCH_ENV",
    "Progress",
    "format_duration",
    "is_main_process",
    "progress_enabled",
    "status_interval",
    "track",
]

#: seconds between two status lines when stderr is not a terminal
DEFAULT_INTERVAL = 30.0
#: the environment variable that sets that interval (seconds, e.g. ``1`` in tests or ``300`` for quiet logs)
INTERVAL_ENV = "FEWLABELS_PROGRESS_INTERVAL"
#: the environment variable that switches progress off (``0``, ``off``, ``false`` or ``no``)
SWITCH_ENV = "FEWLABELS_PROGRESS"

T = TypeVar("T")


def status_interval() -> float:
    """Seconds between status lines: ``FEWLABELS_PROGRESS_INTERVAL``, else :data:`DEFAULT_INTERVAL`."""
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value >= 0 or math.isinf(value):
        raise ValueError(f"{INTERVAL_ENV}={raw!r}: give the seconds between progress lines (a number >= 0)")
    return value


def progress_enabled() -> bool:
    """False when ``FEWLABELS_PROGRESS`` is ``0``, ``off``, ``false`` or ``no``."""
    return os.environ.get(SWITCH_ENV, "").strip().lower() not in ("0", "off", "false", "no")


def is_main_process() -> bool:
    """Rank 0 of an initialised ``torch.distributed`` group, else the ``RANK`` that torchrun sets (0 without it).

    torch is not imported here: a process that has not imported ``torch.distributed`` has no group.
    """
    dist: Any = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return int(dist.get_rank()) == 0
    return os.environ.get("RANK", "0").strip() in ("", "0")


def format_duration(seconds: float) -> str:
    """``2m03s``, ``1h05m``; ``?`` when unknown (not finite)."""
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(max(seconds, 0.0)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _format_rate(rate: float) -> str:
    """A rate with about three significant digits (``3.14``, ``31.4``, ``314``)."""
    if rate >= 100:
        return f"{rate:.0f}"
    return f"{rate:.1f}" if rate >= 10 else f"{rate:.2f}"


def _is_terminal(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except (OSError, ValueError):  # a closed or detached stream
        return False


def _reports_no_size(stream: IO[str]) -> bool:
    """Whether the terminal of ``stream`` says it has 0 columns (a pseudo-terminal nobody sized): tqdm would then
    draw nothing unless given a size."""
    try:
        return os.get_terminal_size(stream.fileno()).columns == 0
    except (AttributeError, OSError, ValueError):  # no file descriptor: the width is tqdm's to find
        return False


class Progress:
    """Progress of a loop of ``total`` items: a tqdm bar when ``stream`` (default stderr) is a terminal, else a
    status line at most every ``interval`` seconds and a final one when the count reaches ``total``.

    Use it as a context manager (or call :meth:`close`)::

        with Progress(len(images), "predict", "images") as progress:
            for image in images:
                ...
                progress.update()

    ``initial`` is the count already done (a resumed run): rates and the ETA count only the items done here.
    ``enabled=False`` (or a process of rank > 0, or ``FEWLABELS_PROGRESS=0``, or ``total == 0``) shows nothing.
    ``interval`` defaults to :func:`status_interval`; ``clock`` (seconds) is for tests.
    """

    def __init__(
        self,
        total: int,
        label: str,
        unit: str = "items",
        *,
        initial: int = 0,
        enabled: bool = True,
        leave: bool = False,
        interval: float | None = None,
        stream: IO[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.label, self.unit = int(total), label, unit
        self.initial = self.n = int(initial)
        self.stream: IO[str] = stream if stream is not None else sys.stderr
        self.interval = status_interval() if interval is None else float(interval)
        self.clock = clock
        self.active = enabled and self.total > 0 and progress_enabled() and is_main_process()
        self.tty = self.active and _is_terminal(self.stream)
        self.postfix = ""
        self.finished = False
        self.lines = 0  # status lines written (not on a terminal)
        self.start = self.last_line = clock()
        self.bar: Any = None
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(
                total=self.total,
                initial=self.initial,
                desc=label,
                unit=unit,
                file=self.stream,
                leave=leave,
                **({"ncols": 100, "nrows": 20} if _reports_no_size(self.stream) else {"dynamic_ncols": True}),
            )

    # --- counting ---------------------------------------------------------------------------------------------
    def update(self, n: int = 1) -> None:
        """``n`` more items done."""
        self.update_to(self.n + int(n))

    def update_to(self, count: int) -> None:
        """``count`` items done in all (``initial`` included)."""
        if not self.active:
            self.n = int(count)
            return
        delta, self.n = int(count) - self.n, int(count)
        if self.bar is not None:
            self.bar.update(delta)
            return
        now = self.clock()
        if self.n >= self.total:
            if not self.finished:
                self.finished = True
                self._write(self.status(now))
        elif now - self.last_line >= self.interval:
            self._write(self.status(now))

    def set_postfix(self, text: str) -> None:
        """Extra values shown after the count (e.g. ``loss 0.1234, 512 samples/s``)."""
        self.postfix = text
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)

    # --- what is shown ----------------------------------------------------------------------------------------
    def rate(self, now: float | None = None) -> float:
        """Items per second done here (0 before any)."""
        elapsed = (self.clock() if now is None else now) - self.start
        done = self.n - self.initial
        return done / elapsed if done > 0 and elapsed > 0 else 0.0

    def eta(self, now: float | None = None) -> float:
        """Seconds left at the current rate (infinite before the first item)."""
        rate = self.rate(now)
        return max(self.total - self.n, 0) / rate if rate > 0 else (0.0 if self.n >= self.total else math.inf)

    def status(self, now: float | None = None) -> str:
        """The status line: ``label: n/total unit, rate unit/s, eta 2m03s`` (``done in ...`` once complete)."""
        now = self.clock() if now is None else now
        parts = [f"{self.label}: {self.n}/{self.total} {self.unit}"]
        if self.postfix:
            parts.append(self.postfix)
        parts.append(f"{_format_rate(self.rate(now))} {self.unit}/s")
        if self.n >= self.total:
            parts.append(f"done in {format_duration(now - self.start)}")
        else:
            parts.append(f"eta {format_duration(self.eta(now))}")
        return ", ".join(parts)

    def _write(self, line: str) -> None:
        self.last_line = self.clock()
        self.lines += 1
        print(line, file=self.stream, flush=True)

    # --- the end ----------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Remove the bar (or keep it, with ``leave``); no line is added for a loop that stopped short."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.active = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


def track(items: Iterable[T], total: int, label: str, unit: str = "items", **options: Any) -> Iterator[T]:
    """Yield ``items`` (``total`` of them) while showing their :class:`Progress` (``options``: its keywords)."""
    with Progress(total, label, unit, **options) as progress:
        for item in items:
            yield item
            progress.update()
