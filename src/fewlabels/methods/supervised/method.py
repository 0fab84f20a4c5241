"""Supervised-only semantic segmentation: the baseline every semi-supervised result is compared against."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fewlabels.methods.base import Method, Source, StepOutput
from fewlabels.methods.supervised.common import (
    SegData,
    backbone_param_groups,
    build_model,
    build_segmentation_data,
    evaluate_segmentation,
    predict_masks,
    segmentation_figure,
)
from fewlabels.methods.supervised.config import SupervisedConfig
from fewlabels.parallel import global_mean
from fewlabels.registry import register_method


@register_method
class SupervisedSegmentation(Method):
    """Encoder-decoder trained with cross-entropy (ignore index 255) on the labeled images only."""

    name = "supervised"
    description = "supervised-only semantic segmentation (the baseline of CCT)"
    config_class = SupervisedConfig
    metric = "miou"
    metric_mode = "max"
    config: SupervisedConfig

    @cached_property
    def data(self) -> SegData:
        return build_segmentation_data(self.config.data)

    def build_model(self) -> nn.Module:
        return build_model(self.config.model, self.data.num_classes)

    def train_sources(self) -> dict[str, Source]:
        return {"labeled": Source(self.data.labeled, self.config.train.batch_size)}

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        return backbone_param_groups(model, self.config.model.backbone_lr_scale)

    def training_step(self, model: nn.Module, batch: dict, step: int, total_steps: int) -> StepOutput:
        labeled = batch["labeled"]
        logits = model(labeled["image"])
        mask = labeled["mask"]
        ignore = self.data.ignore_index
        total = F.cross_entropy(logits.float(), mask, ignore_index=ignore, reduction="sum")
        # Mean over the labeled pixels of the global batch (the same value with 1 or N processes).
        return StepOutput(global_mean(total, (mask != ignore).sum()))

    def predictor(self, model: nn.Module) -> nn.Module:
        """Logits function used by evaluation, prediction and figures (the model itself)."""
        return model

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        return evaluate_segmentation(
            model, self.data.val, self.data.num_classes, self.config.eval, device, self.data.class_names
        )

    def predict(self, model: nn.Module, inputs: Sequence[Path], out_dir: Path, device: torch.device) -> list[Path]:
        return predict_masks(model, inputs, out_dir, self.data.num_classes, self.config.eval, device)

    def report_figures(self, model: nn.Module, out_dir: Path, device: torch.device) -> dict[str, Path]:
        path = segmentation_figure(
            {"prediction": model}, self.data.val, self.data.num_classes, out_dir / "predictions.png", device
        )
        return {"validation images: image / ground truth / prediction": path}
