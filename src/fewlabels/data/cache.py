"""On-disk cache for generated datasets.

The embedded datasets (``scenes``, ``glyphs``) are pure functions of their parameters, so they are built once
and stored as ``.npz`` files under :func:`cache_dir`. The file name carries a hash of (name, parameters,
format version): changing any parameter, or bumping :data:`CACHE_FORMAT_VERSION` when a generator changes,
selects a new file instead of silently reusing stale data. Files are written to a temporary name in the same
folder, flushed to disk and then renamed with :func:`os.replace`, which is atomic on POSIX and Windows:
several processes (data-loader workers, ranks of a distributed run) may build the same entry at once and none
of them ever reads a partial file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CACHE_FORMAT_VERSION", "cache_dir", "cache_key", "cached_arrays"]

#: Bump when the layout of cached files or the output of a generator changes.
CACHE_FORMAT_VERSION = 1


def cache_dir() -> Path:
    """The cache folder: ``$FEWLABELS_CACHE`` when set and non-empty, else ``~/.cache/fewlabels``.

    The folder is not created here; :func:`cached_arrays` creates it when it first writes.
    """
    env = os.environ.get("FEWLABELS_CACHE", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fewlabels"


def cache_key(name: str, params: Mapping[str, Any]) -> str:
    """A stable hex digest of (name, params, :data:`CACHE_FORMAT_VERSION`).

    ``params`` must be JSON-serialisable (tuples become lists; other objects are turned into ``str``). Key
    order does not matter.
    """
    payload = json.dumps(
        {"name": name, "params": dict(params), "version": CACHE_FORMAT_VERSION},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _safe_name(name: str) -> str:
    cleaned = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
    return cleaned or "entry"


def _load(path: Path) -> dict[str, np.ndarray] | None:
    """Read a cache file, or return None when it is missing or unreadable (it is then rebuilt)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None


def _write_atomic(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            # Passing a file object keeps numpy from appending ".npz" to the temporary name.
            payload: dict[str, Any] = dict(arrays)
            np.savez(handle, **payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp creates 0600; a shared cache folder should stay readable
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except OSError:
            pass
        raise


def cached_arrays(
    name: str,
    params: Mapping[str, Any],
    build: Callable[[], dict[str, np.ndarray]],
) -> dict[str, np.ndarray]:
    """Return the arrays cached for ``(name, params)``, calling ``build()`` and storing its result on a miss.

    Args:
        name: family of the entry (e.g. ``"scenes"``); used in the file name, so keep it short.
        params: every parameter the built arrays depend on (JSON-serialisable).
        build: zero-argument function returning a dict of NumPy arrays (no object arrays).

    Returns:
        A dict with the same keys as ``build()`` returned. On a hit the arrays are read from disk; a corrupt
        file is rebuilt and replaced. When the cache folder cannot be written, a warning is issued and the
        freshly built arrays are returned uncached.
    """
    path = cache_dir() / f"{_safe_name(name)}-{cache_key(name, params)[:20]}.npz"
    hit = _load(path)
    if hit is not None:
        return hit
    arrays = build()
    if not isinstance(arrays, dict) or not all(isinstance(v, np.ndarray) for v in arrays.values()):
        raise TypeError(f"cached_arrays({name!r}): build() must return a dict of numpy arrays")
    for key, value in arrays.items():
        if value.dtype == object:
            raise TypeError(f"cached_arrays({name!r}): array {key!r} has dtype object, which cannot be cached")
    try:
        _write_atomic(path, arrays)
    except OSError as err:
        warnings.warn(
            f"could not write dataset cache {path} ({err}); set FEWLABELS_CACHE to a writable folder",
            stacklevel=2,
        )
    return arrays
