"""Keep freed activation memory in the process on CPU (glibc), instead of returning it to the OS every step.

PyTorch's CPU allocator has no cache: every activation is a ``malloc`` and every free a ``free``. glibc serves
blocks above its mmap threshold with a fresh ``mmap`` and unmaps them when freed, so a training step that
allocates the same multi-MB activations every step page-faults through all of them again each time. The cost
grows faster than the batch: once a tensor crosses the threshold its allocation is no longer reused. (AC's
two-view step spent ~10% of its time this way at batch 16 x 64 x 32 x 32 on a 2-core machine; CPU runs of the
other methods gain less.) Raising the mmap threshold to glibc's maximum and the trim threshold out of reach keeps
such blocks in the heap for reuse, the effect of ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` or of
linking jemalloc/tcmalloc as PyTorch's CPU tuning guide suggests, without an extra dependency.

The price: the process keeps its peak heap after a large free instead of shrinking (a training process does not
shrink anyway). Because the setting is process-wide, the library never makes it on its own: a user's Python process
that calls ``fewlabels.train()`` keeps its malloc settings. The ``fewlabels`` command line opts in (:func:`opt_in`), and
so does ``FEWLABELS_MALLOC_TUNING=1`` in the environment; ``FEWLABELS_MALLOC_TUNING=0`` leaves glibc's defaults alone
even then. Other C libraries (musl, macOS, Windows) are left alone too.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import sys

__all__ = ["keep_freed_memory", "opt_in", "tune_for_training"]

log = logging.getLogger("fewlabels")

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: glibc's upper limit for M_MMAP_THRESHOLD on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX = 4 MiB x sizeof(long))
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
_TRIM_THRESHOLD = 1 << 30

_opted_in = False


def opt_in() -> None:
    """Let training tune this process's allocator (see the module doc); the command line calls it at start-up."""
    global _opted_in
    _opted_in = True


def tune_for_training() -> bool:
    """Apply :func:`keep_freed_memory` if this process opted in (or set ``FEWLABELS_MALLOC_TUNING=1``).

    Training on CPU calls this; it returns True if the thresholds are set, and False (leaving malloc untouched) in a
    process that did not opt in.
    """
    if not (_opted_in or os.environ.get("FEWLABELS_MALLOC_TUNING") == "1"):
        return False
    return keep_freed_memory()


@functools.cache
def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process (see the module doc); True if they were set.

    This is the switch itself, for benchmarks and tools that want it unconditionally; training goes through
    :func:`tune_for_training`, which honours the opt-in.

    Does nothing (False) off Linux, on a C library without ``mallopt``, when ``FEWLABELS_MALLOC_TUNING=0``, or
    when the process already chose thresholds through the ``MALLOC_*_THRESHOLD_`` environment variables.
    """
    ok = False
    wanted = os.environ.get("FEWLABELS_MALLOC_TUNING", "1") != "0"
    preset = any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"))
    if wanted and not preset and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):
            mallopt = None
        if mallopt is not None:
            mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            mallopt.restype = ctypes.c_int
            ok = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(
                mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
            )
            if not ok:
                log.debug("mallopt refused the thresholds; glibc defaults kept")
    return ok
