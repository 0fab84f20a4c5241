"""Atomic, verified checkpoints.

Each resumable checkpoint is ``checkpoints/step_XXXXXXXX.pt`` (model, optimizer, scheduler, every RNG, step) with a
``.sha256`` beside it. Files are written under a temporary name, fsynced and renamed, so a crash or a full disk
never leaves a half-written file under a real name; the digest is written last, so a checkpoint without a matching
digest is incomplete or corrupt and :func:`latest_valid_checkpoint` falls back to the previous one with a warning.
Loading uses ``torch.load(weights_only=True)`` only: a pickle carrying code is refused.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

log = logging.getLogger("fewlabels")

_NAME = re.compile(r"^step_(\d{8})\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or read. The message names the file."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` then fsync and rename to ``path``; on any error the old ``path`` is untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise CheckpointError(f"could not write {path}: {e}; earlier files are intact") from e
        raise


def _write_text(path: Path, text: str) -> None:
    path.write_text(text)


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def checkpoint_path(ckpt_dir: Path, step: int) -> Path:
    return ckpt_dir / f"step_{step:08d}.pt"


def save_checkpoint(ckpt_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write the checkpoint of ``step`` atomically with its digest, then prune to the newest ``keep``."""
    path = checkpoint_path(ckpt_dir, step)
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    digest = file_digest(path)
    atomic_write(path.with_suffix(".sha256"), lambda tmp: _write_text(tmp, digest + "\n"))
    for old in list_checkpoints(ckpt_dir)[:-keep]:
        old.unlink(missing_ok=True)
        old.with_suffix(".sha256").unlink(missing_ok=True)
    return path


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.iterdir() if _NAME.match(p.name))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Verify the digest and load with ``weights_only=True``; raise CheckpointError naming the file otherwise."""
    digest_file = path.with_suffix(".sha256")
    if not digest_file.is_file():
        raise CheckpointError(f"{path}: no digest file (the write did not finish)")
    if file_digest(path) != digest_file.read_text().strip():
        raise CheckpointError(f"{path}: contents do not match the digest (truncated or corrupt)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        raise CheckpointError(f"{path}: cannot be loaded safely ({type(e).__name__}: {e})") from e


def latest_valid_checkpoint(ckpt_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """Newest checkpoint that verifies; corrupt newer ones are reported with a warning and skipped."""
    for path in reversed(list_checkpoints(ckpt_dir)):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as e:
            log.warning("skipping checkpoint: %s; trying the previous one", e)
    return None


def save_weights(model: nn.Module, path: Path) -> None:
    """Model weights as safetensors (shared tensors stored once), written atomically."""
    atomic_write(path, lambda tmp: save_model(model, str(tmp)))


def load_weights(model: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    missing, unexpected = load_model(model, str(path), strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not fit the model: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
