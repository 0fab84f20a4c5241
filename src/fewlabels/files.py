"""File modes for what a run writes: the mode a plain ``open(path, "w")`` would give, whatever wrote the file.

``tempfile.mkstemp`` (atomic writes) and safetensors' own atomic save create files with mode 0600, so weights and
checkpoints would be unreadable to a teammate sharing the run directory. :func:`share_like_open` gives a written
file ``0o666 & ~umask`` instead: 0644 under the usual umask 022, still 0600 under umask 077.

A leaf module: it imports nothing from the package, so every layer may use it.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

__all__ = ["current_umask", "new_file_mode", "share_like_open"]

_lock = threading.Lock()


def current_umask() -> int:
    """This process's umask, read without changing it where the system says it (Linux ``/proc/self/status``)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _lock:  # elsewhere: set it and put it back at once
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode of a file created now by ``open(path, "w")``: ``0o666`` less this process's umask."""
    return 0o666 & ~current_umask()


def share_like_open(path: str | os.PathLike[str]) -> None:
    """Give ``path`` (a file just written) the mode ``open(path, "w")`` would have given it."""
    os.chmod(Path(path), new_file_mode())
