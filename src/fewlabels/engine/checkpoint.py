"""Atomic, verified checkpoints.

Each resumable checkpoint is ``checkpoints/step_XXXXXXXX.pt`` (model, optimizer, scheduler, every RNG, step) with a
``.sha256`` beside it. Files are written under a temporary name, fsynced and renamed, so a crash or a full disk
never leaves a half-written file under a real name; the digest is written last, so a checkpoint without a matching
digest is incomplete or corrupt and :func:`latest_valid_checkpoint` falls back to the previous one with a warning.
Loading uses ``torch.load(weights_only=True)`` only: a pickle carrying code is refused. Weights holding NaN or
infinite values are never written (:func:`save_checkpoint`, :func:`save_weights`) and never loaded
(:func:`load_checkpoint`, :func:`load_weights`): a diverged model must not be scored or resumed as if it were trained.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from fewlabels.files import share_like_open

log = logging.getLogger("fewlabels")

_NAME = re.compile(r"^step_(\d{8})\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or read. The message names the file."""


def non_finite_tensors(tensors: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors in ``tensors`` that hold a NaN or an infinite value (in their order).

    The check costs one device synchronisation for the whole mapping, not one per tensor.
    """
    names = [k for k, v in tensors.items() if isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel()]
    if not names:
        return []
    checks = [torch.isfinite(tensors[k]).all() for k in names]
    if len({c.device for c in checks}) == 1:
        finite = torch.stack(checks).tolist()
    else:  # tensors spread over devices: one synchronisation per tensor
        finite = [bool(c) for c in checks]
    return [k for k, ok in zip(names, finite) if not ok]


def _describe_non_finite(names: list[str]) -> str:
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"NaN or infinite values in {shown}"


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
    """Call ``write(tmp_path)`` then fsync and rename to ``path``; on any error the old ``path`` is untouched.

    The file gets the mode a plain ``open(path, "w")`` would give it (0644 under umask 022), not mkstemp's 0600:
    its mode is set after ``write``, which may itself have replaced the temporary file (safetensors does)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        share_like_open(tmp)
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
    """Write the checkpoint of ``step`` atomically with its digest, then prune to the newest ``keep``.

    A state whose ``model`` holds NaN or infinite weights is refused (CheckpointError) and nothing is written.
    """
    path = checkpoint_path(ckpt_dir, step)
    bad = non_finite_tensors(state.get("model", {}))
    if bad:
        raise CheckpointError(f"refusing to write {path}: the model holds {_describe_non_finite(bad)}")
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
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        raise CheckpointError(f"{path}: cannot be loaded safely ({type(e).__name__}: {e})") from e
    model = state.get("model") if isinstance(state, dict) else None
    bad = non_finite_tensors(model) if isinstance(model, Mapping) else []
    if bad:
        raise CheckpointError(f"{path}: the model holds {_describe_non_finite(bad)}")
    return state


def latest_valid_checkpoint(ckpt_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """Newest checkpoint that verifies; corrupt newer ones are reported with a warning and skipped."""
    for path in reversed(list_checkpoints(ckpt_dir)):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as e:
            log.warning("skipping checkpoint: %s; trying the previous one", e)
    return None


def save_weights(model: nn.Module, path: Path, state: Mapping[str, torch.Tensor] | None = None) -> None:
    """Model weights as safetensors (shared tensors stored once), written atomically; NaN or inf weights are refused.

    ``state`` (a method's ``saved_state``) replaces the whole model by those tensors only.
    """
    bad = non_finite_tensors(model.state_dict())
    if bad:
        raise CheckpointError(f"refusing to write {path}: the model holds {_describe_non_finite(bad)}")
    if state is None:
        atomic_write(path, lambda tmp: save_model(model, str(tmp)))
    else:
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))


def load_weights(
    model: nn.Module, path: Path, load: Callable[[nn.Module, dict[str, torch.Tensor]], None] | None = None
) -> None:
    """Load ``path`` into ``model``; CheckpointError naming the file if it does not fit or holds NaN or inf.

    ``load`` (a method's ``load_saved_state``) loads the file's tensors instead of a whole-model load.
    """
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    if load is not None:
        try:
            load(model, load_file(str(path)))
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"{path} does not fit the model: {e}") from e
    else:
        missing, unexpected = load_model(model, str(path), strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"{path} does not fit the model: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
            )
    bad = non_finite_tensors(model.state_dict())
    if bad:
        raise CheckpointError(f"{path} holds {_describe_non_finite(bad)}: the run diverged; it cannot be used")
