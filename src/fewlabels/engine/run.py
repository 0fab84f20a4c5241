"""Reading a finished (or interrupted) run back: its resolved config, its method and its weights."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fewlabels.config import RunConfig
from fewlabels.engine.checkpoint import load_weights
from fewlabels.engine.rundir import RunDirError
from fewlabels.methods.base import Method
from fewlabels.registry import get_method, load_config

__all__ = ["LoadedRun", "RunDirError", "load_run", "pick_device", "read_run_config"]


def read_run_config(run_dir: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """The validated config saved in ``run_dir`` (with ``overrides``); RunDirError if it is not a run directory."""
    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise RunDirError(f"{run} is not a run directory (no config.yaml); pass a folder created by `fewlabels train`")
    return load_config(str(run / "config.yaml"), list(overrides))


def pick_device(name: str = "auto") -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


@dataclass
class LoadedRun:
    """A trained model with the method that knows how to evaluate it and predict with it."""

    run_dir: Path
    config: RunConfig
    method: Method
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


def load_run(
    run_dir: str | Path, which: str = "best", device: str = "auto", overrides: Sequence[str] = ()
) -> LoadedRun:
    """Rebuild the model of ``run_dir`` from its config and load ``best`` (falls back to ``last``) weights.

    Weights that do not fit the model, or that hold NaN or infinite values, are refused with a CheckpointError that
    names the file.
    """
    run = Path(run_dir)
    config = read_run_config(run, overrides)
    method = get_method(config.method)(config)
    candidates = (
        [run / "best.safetensors", run / "model.safetensors"] if which == "best" else [run / "model.safetensors"]
    )
    weights = next((p for p in candidates if p.is_file()), None)
    if weights is None:
        raise RunDirError(f"{run} has no weights yet ({', '.join(p.name for p in candidates)} missing): train it first")
    model = method.build_model()
    # A method that stores only part of the model (saved_state) loads it onto the freshly built rest.
    partial = method.saved_state(model) is not None
    load_weights(model, weights, method.load_saved_state if partial else None)
    dev = pick_device(device)
    model.to(dev).eval()
    return LoadedRun(run, config, method, model, weights, dev)
