"""fewlabels: deep learning with few labels (CCT, AC, SCL, RelBitFit and their baselines).

import fewlabels
cfg = fewlabels.load_config("configs/supervised/scenes.yaml", ["train.steps=100"])
result = fewlabels.train(cfg)
run = fewlabels.load(result.run_dir)
print(run.evaluate())
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from fewlabels.engine import LoadedRun, TrainResult


def train(config: Any, resume_dir: Any = None) -> TrainResult:
    """Train a validated config (see :func:`load_config`); ``resume_dir`` continues that run exactly.

    The calling process keeps its malloc settings (the command line opts in to the CPU allocator tuning of
    ``fewlabels.engine.allocator``; set ``FEWLABELS_MALLOC_TUNING=1`` to opt in here). Called from the main thread,
    SIGTERM and SIGINT stop the run after the current step with a checkpoint of it and raise
    ``fewlabels.engine.TrainingInterrupted``; the previous signal handlers come back when training ends.
    """
    from fewlabels.engine import train as _train

    return _train(config, resume_dir)


def load(run_dir: Any, which: str = "best", device: str = "auto") -> LoadedRun:
    """Load a trained run: ``.model``, ``.evaluate()``, ``.predict(inputs, out_dir)``."""
    from fewlabels.engine import load_run

    return load_run(run_dir, which, device)


def load_config(path: str, overrides: list[str] | tuple[str, ...] = ()) -> Any:
    """Read a YAML config, apply ``key.sub=value`` overrides and validate it against its method's schema."""
    from fewlabels.registry import load_config as _load

    return _load(path, overrides)


__all__ = ["__version__", "load", "load_config", "train"]
