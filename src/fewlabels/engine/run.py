"""Reading a finished (or interrupted) run back: its resolved config, its method and its weights."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn

from fewlabels.config import ConfigError, RunConfig
from fewlabels.engine.checkpoint import CheckpointError, latest_valid_checkpoint, load_weights
from fewlabels.engine.rundir import RunDirError
from fewlabels.methods.base import Method
from fewlabels.registry import get_method, load_config

__all__ = ["ARCHITECTURE_KEYS", "LoadedRun", "RunDirError", "load_run", "pick_device", "read_run_config"]

log = logging.getLogger(__name__)

#: config keys (and sections, ending in ".") that shape a trained model: a run read back refuses overrides of them
ARCHITECTURE_KEYS = ("method", "model.", "perturbations.", "domains")


def read_run_config(run_dir: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """The validated config saved in ``run_dir`` (with ``overrides``); RunDirError if it is not a run directory."""
    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise RunDirError(f"{run} is not a run directory (no config.yaml); pass a folder created by `fewlabels train`")
    return load_config(str(run / "config.yaml"), list(overrides))


def pick_device(name: str = "auto") -> torch.device:
    """``cuda`` when asked for (a ConfigError when no GPU is visible) or, for ``auto``, when there is one."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device", "cuda requested but no GPU is visible; use --device cpu (or auto)")
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


@dataclass
class LoadedRun:
    """A trained model with the method that knows how to evaluate it and predict with it."""

    run_dir: Path
    config: RunConfig
    method: Method[Any]
    model: nn.Module
    weights: Path
    device: torch.device

    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        with torch.no_grad():
            return self.method.evaluate(self.model, self.device)

    def predict(self, inputs: Sequence[str | Path], out_dir: str | Path) -> list[Path]:
        self.model.eval()
        with torch.no_grad():
            return self.method.predict(self.model, [Path(p) for p in inputs], Path(out_dir), self.device)


def _unreadable(path: Path) -> str:
    """Why the safetensors file ``path`` cannot be read (its header), or '' when it can."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            fh.keys()
    except (SafetensorError, OSError, ValueError) as e:
        return str(e) or type(e).__name__
    return ""


def load_run(
    run_dir: str | Path, which: str = "best", device: str = "auto", overrides: Sequence[str] = ()
) -> LoadedRun:
    """Rebuild the model of ``run_dir`` from its config and load ``best`` (falls back to ``last``) weights.

    A weights file that cannot be read (empty, truncated, garbage) is skipped with a warning for the next one
    (``best`` -> ``model.safetensors`` -> the last valid checkpoint). Weights that do not fit the model, or that hold
    NaN or infinite values, are refused with a CheckpointError that names the file. Overrides of the keys that shape
    the model (:data:`ARCHITECTURE_KEYS`) and ``device="cuda"`` without a GPU are ConfigErrors.
    """
    run = Path(run_dir)
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if any(key == k or (k.endswith(".") and key.startswith(k)) for k in ARCHITECTURE_KEYS):
            raise ConfigError(
                key, "shapes the trained model, so it cannot be overridden on a trained run (train a new run instead)"
            )
    config = read_run_config(run, overrides)
    dev = pick_device(device)
    method = get_method(config.method)(config)
    candidates = (
        [run / "best.safetensors", run / "model.safetensors"] if which == "best" else [run / "model.safetensors"]
    )
    # The first weights file that loads; an unreadable one (truncated, garbage, empty) falls back to the next, then
    # to the last valid checkpoint, with a warning.
    failures: list[str] = []
    model: nn.Module | None = None
    weights = candidates[0]
    for path in [p for p in candidates if p.is_file()]:
        unreadable = _unreadable(path)
        if unreadable:  # garbage or empty: refused before the model (and maybe the data) is built for it
            failures.append(f"{path.name}: {unreadable}")
            log.warning("cannot use %s (%s); trying the next weights", path, unreadable)
            continue
        method.prepare_inference(run, path)
        model = method.build_model()
        # A method that stores only part of the model (saved_state) loads it onto the freshly built rest.
        partial = method.saved_state(model) is not None
        try:
            load_weights(model, path, method.load_saved_state if partial else None)
        except (SafetensorError, OSError) as e:  # unreadable; weights that do not fit or are not finite are refused
            failures.append(f"{path.name}: {e}")
            log.warning("cannot use %s (%s); trying the next weights", path, e)
            model = None
            continue
        weights = path
        break
    if model is None:
        found = latest_valid_checkpoint(run / "checkpoints")
        if found is None and not failures:
            names = ", ".join(p.name for p in candidates)
            raise RunDirError(f"{run} has no weights yet ({names} missing): train it first")
        if found is None:
            raise CheckpointError(f"{run} has no usable weights ({'; '.join(failures)}) and no valid checkpoint")
        weights, state = found
        method.prepare_inference(run, weights)
        model = method.build_model()
        try:
            method.load_saved_state(model, state["model"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"{weights} does not fit the model: {e}") from e
        log.warning("using the weights of checkpoint %s", weights)
    model.to(dev).eval()
    return LoadedRun(run, config, method, model, weights, dev)
