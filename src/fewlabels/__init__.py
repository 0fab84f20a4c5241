"""fewlabels: deep learning with few labels (CCT, AC, SCL, RelBitFit and their baselines).

import fewlabels
cfg = fewlabels.load_config("configs/supervised/scenes.yaml", ["train.steps=100"])
result = fewlabels.train(cfg)
run = fewlabels.load(result.run_dir)
print(run.evaluate())
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from fewlabels.engine import LoadedRun, TrainResult
    from fewlabels.methods.scl.predict import FewShotPredictions


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


def load_fewshot_run(
    run_dir: Any, which: str = "last", device: str = "auto", overrides: Sequence[str] = ()
) -> LoadedRun:
    """Load a few-shot run (``scl``, ``scl-distill``, ``protonet``) for evaluation or prediction.

    The run kind is checked on the saved config before the ``overrides`` (which may be ``eval.*`` keys that only a
    few-shot config has) are applied. The training split is never read, so ``overrides`` may point ``data`` at a
    dataset that holds only test classes. ``which``: ``last`` (model.safetensors, the reference's protocol) or
    ``best`` (best on validation, falling back to last).
    """
    from fewlabels.config import ConfigError
    from fewlabels.engine import load_run, read_run_config
    from fewlabels.methods.scl.config import FewShotConfig

    saved = read_run_config(run_dir)
    if not isinstance(saved, FewShotConfig):
        raise ConfigError("run_dir", f"{run_dir} is a {saved.method!r} run; this needs a few-shot run")
    return load_run(run_dir, which=which, device=device, overrides=overrides)


def fewshot_predict(
    run: Any,
    support_dir: Any,
    queries: Sequence[Any],
    *,
    which: str = "last",
    device: str = "auto",
    overrides: Sequence[str] = (),
) -> FewShotPredictions:
    """Classify query images (files or folders) into the classes of ``support_dir`` (one folder per class).

    ``run``: a run directory (loaded with :func:`load_fewshot_run`, ``which`` weights and ``overrides``) or a run
    loaded already. The protocol (classifier, feature types, support augmentation) is the run's ``eval`` section.
    """
    from fewlabels.config import ConfigError
    from fewlabels.engine import LoadedRun
    from fewlabels.methods.scl.config import FewShotConfig
    from fewlabels.methods.scl.predict import fewshot_predict as _predict

    loaded = run if isinstance(run, LoadedRun) else load_fewshot_run(run, which, device, overrides)
    if not isinstance(loaded.config, FewShotConfig):
        raise ConfigError("run_dir", f"{loaded.run_dir} is a {loaded.config.method!r} run; this needs a few-shot run")
    return _predict(loaded.config, loaded.model, support_dir, queries, loaded.device)


def load_config(path: str, overrides: list[str] | tuple[str, ...] = ()) -> Any:
    """Read a YAML config, apply ``key.sub=value`` overrides and validate it against its method's schema."""
    from fewlabels.registry import load_config as _load

    return _load(path, overrides)


__all__ = ["__version__", "fewshot_predict", "load", "load_config", "load_fewshot_run", "train"]
