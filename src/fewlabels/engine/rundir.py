"""Run directories: names that never collide, and one live training process per directory.

A training process holds an exclusive ``flock`` on ``RUN_DIR/.lock`` from the moment it takes the directory until it
ends. The operating system releases the lock when the process dies, however it dies (SIGKILL included), so a killed
run can be resumed at once, while a second ``fewlabels train ... name=dup`` or a ``--resume`` of a run that is still
training is refused with one line naming the process that holds it. Under ``torchrun`` only rank 0 writes the run
directory, so only rank 0 takes the lock. On a platform without ``fcntl`` (Windows) no lock is taken.

A run without a name gets ``<method>-<timestamp>``; the directory is created with ``mkdir(exist_ok=False)``, so two
runs started in the same second get two directories (the second with a ``-2`` suffix, and so on).
"""

from __future__ import annotations

import errno
import os
import socket
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "RunDirError", "RunDirLock", "create_unique_dir", "write_failed"]

#: name of the lock file inside a run directory
LOCK_NAME = ".lock"
#: how long a process keeps trying a lock that is busy (another process's :meth:`RunDirLock.raise_if_held` holds it
#: for microseconds) before it reports the directory as in use
_RETRY_S = 0.5
_BUSY = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)


class RunDirError(ValueError):
    """A path given as a run directory is not one, or cannot be used (taken by another process, not writable)."""


def write_failed(run_dir: Path, error: OSError) -> RunDirError:
    """The one-line error for a write that failed for a reason of the machine: disk full, quota, read-only, access."""
    reason = error.strerror or str(error)
    full = error.errno in (errno.ENOSPC, errno.EDQUOT)
    name = Path(os.fsdecode(error.filename)) if isinstance(error.filename, str | bytes) else None
    if name is not None and name.name.startswith(".") and name.name.endswith(".tmp"):
        name = name.with_name(name.name[1:-4].rsplit(".", 1)[0])  # atomic_write's ".NAME.XXXX.tmp" names NAME
    if name is not None and run_dir.resolve() not in (name.resolve(), *name.resolve().parents):
        return RunDirError(f"cannot write {name}: {reason}" + ("; free some space and try again" if full else ""))
    if full:
        hint = "free some space, then resume the run with --resume (the checkpoints on disk are intact)"
    else:
        hint = "training writes its checkpoints there: make it writable, or copy the run elsewhere and resume that"
    where = f" ({name})" if name is not None and name.resolve() != run_dir.resolve() else ""
    return RunDirError(f"cannot write to the run directory {run_dir}{where}: {reason}; {hint}")


def create_unique_dir(parent: Path, name: str) -> Path:
    """Create ``parent/name``, or ``parent/name-2``, ``-3``... if taken; atomic, so two processes never share one."""
    parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        candidate = parent / (name if n == 1 else f"{name}-{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise RunDirError(f"{parent} already holds 9999 runs named {name}[-N]; choose another name or output_dir")


class RunDirLock:
    """The exclusive lock of one run directory, held by this process until :meth:`release` (or its death)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.path = run_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise RunDirError naming the live process that holds it (or why the file is unusable)."""
        if fcntl is None or self._fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise write_failed(self.run_dir, e) from None
        deadline = time.monotonic() + _RETRY_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno in _BUSY and time.monotonic() < deadline:
                    time.sleep(0.02)
                    continue
                holder = _read_holder(fd)
                os.close(fd)
                if e.errno in _BUSY:
                    raise self._in_use(holder) from None
                raise write_failed(self.run_dir, e) from None
        self._fd = fd
        try:  # who holds it, for the message the next process prints; the lock works without it
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        except OSError:
            pass

    def raise_if_held(self) -> None:
        """Raise RunDirError if a live process holds the directory; cheap, takes nothing and creates no file.

        Used before the expensive set-up of a run (data, model) so that a clash is reported at once; the lock that
        counts is the one :meth:`acquire` takes afterwards.
        """
        if fcntl is None or self._fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return  # no lock file: no process ever trained here, or the file is unreadable (acquire will tell)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in _BUSY:
                    raise self._in_use(_read_holder(fd)) from None
                return
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _in_use(self, holder: str) -> RunDirError:
        return RunDirError(
            f"the run directory {self.run_dir} is in use by another training process{holder}; "
            "wait for it to end (or stop it), or choose another name"
        )

    def release(self) -> None:
        """Give the lock up (closing the file releases it); the lock file stays, empty of meaning."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None


def _read_holder(fd: int) -> str:
    """' (pid 123 on host)' from the lock file's contents, or an empty string."""
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").split()
    except OSError:
        return ""
    if len(text) >= 2 and text[0].isdigit():
        return f" (pid {text[0]} on {text[1]})"
    return ""
