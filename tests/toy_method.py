"""A tiny registered method for engine tests: an MLP with BatchNorm regressing a fixed linear target.

Imported by the tests (and by subprocesses through ``python -m toy_method``) to exercise the engine quickly.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fewlabels.config import RunConfig, TrainConfig
from fewlabels.data.base import FewDataset
from fewlabels.methods.base import Method, Source, StepOutput
from fewlabels.registry import register_method


@dataclass
class ToyData:
    n: int = 64
    noise: float = 0.1
    nan_index: int = -1


@dataclass
class ToyConfig(RunConfig):
    method: str = "toy"
    data: ToyData = field(default_factory=ToyData)
    step_delay: float = 0.0
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=8, batch_size=8, lr=0.05, scheduler="constant", log_every=1, checkpoint_every=4
        )
    )


class ToyDataset(FewDataset):
    def __init__(self, cfg: ToyData) -> None:
        g = np.random.default_rng(123)
        self.x = g.normal(size=(cfg.n, 8)).astype(np.float32)
        self.y = (self.x @ g.normal(size=(8,))).astype(np.float32)
        self.cfg = cfg

    def __len__(self) -> int:
        return self.cfg.n

    def sample(self, index: int, rng: np.random.Generator | None) -> dict[str, torch.Tensor]:
        x = self.x[index].copy()
        if rng is not None:  # augmentation: seeded noise
            x += rng.normal(size=x.shape).astype(np.float32) * self.cfg.noise
        if index == self.cfg.nan_index:
            x[0] = np.nan
        return {"x": torch.from_numpy(x), "y": torch.tensor(self.y[index])}


@register_method
class ToyMethod(Method[ToyConfig]):
    name = "toy"
    description = "engine test method"
    config_class = ToyConfig
    metric = "neg_mse"

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 1))

    def train_sources(self) -> dict[str, Source]:
        return {"main": Source(ToyDataset(self.config.data), self.config.train.batch_size)}

    def training_step(
        self, model: nn.Module, batch: dict[str, dict[str, Any]], step: int, total_steps: int
    ) -> StepOutput:
        if self.config.step_delay:
            time.sleep(self.config.step_delay)
        b = batch["main"]
        loss = F.mse_loss(model(b["x"]).squeeze(1), b["y"])
        return StepOutput(loss, {"mean_target": b["y"].mean()})

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        ds = ToyDataset(ToyData(n=self.config.data.n, noise=0.0))
        x = torch.from_numpy(ds.x).to(device)
        y = torch.from_numpy(ds.y).to(device)
        return {"neg_mse": -float(F.mse_loss(model(x).squeeze(1), y))}


if __name__ == "__main__":
    from fewlabels.cli import main

    raise SystemExit(main(sys.argv[1:]))
