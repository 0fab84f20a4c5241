"""Configuration of the supervised baseline: the encoder-decoder sections it shares with CCT, and its training."""

from __future__ import annotations

from dataclasses import dataclass, field

from fewlabels.config import RunConfig, TrainConfig
from fewlabels.methods.segmentation.config import SegDataConfig, SegEvalConfig, SegModelConfig

__all__ = ["SupervisedConfig"]


@dataclass
class SupervisedConfig(RunConfig):
    """Supervised-only segmentation: the encoder-decoder trained with cross-entropy on the labeled images."""

    method: str = "supervised"
    model: SegModelConfig = field(default_factory=SegModelConfig)
    data: SegDataConfig = field(default_factory=SegDataConfig)
    eval: SegEvalConfig = field(default_factory=SegEvalConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=300, batch_size=8, lr=0.01))
