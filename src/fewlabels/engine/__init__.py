"""Training engine: loop, checkpoints, resume, logging, distribution."""

from fewlabels.engine.checkpoint import CheckpointError
from fewlabels.engine.run import LoadedRun, RunDirError, load_run, read_run_config
from fewlabels.engine.signals import TrainingInterrupted
from fewlabels.engine.trainer import TrainingDiverged, TrainResult, train

__all__ = [
    "CheckpointError",
    "LoadedRun",
    "RunDirError",
    "TrainResult",
    "TrainingDiverged",
    "TrainingInterrupted",
    "load_run",
    "read_run_config",
    "train",
]
