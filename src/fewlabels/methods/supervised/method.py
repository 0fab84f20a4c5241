"""Supervised-only semantic segmentation: the baseline every semi-supervised result is compared against."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import nn

from fewlabels.data.base import fill_batch
from fewlabels.data.segmentation import SegmentationData
from fewlabels.methods.base import Source, StepOutput
from fewlabels.methods.segmentation.config import SegEvalConfig
from fewlabels.methods.segmentation.method import SegmentationMethod, build_segmentation_data
from fewlabels.methods.supervised.config import SupervisedConfig
from fewlabels.parallel import global_mean
from fewlabels.registry import register_method

__all__ = ["SupervisedSegmentation"]


@register_method
class SupervisedSegmentation(SegmentationMethod[SupervisedConfig, SegmentationData]):
    """Encoder-decoder trained with cross-entropy (ignoring the dataset's ignore index) on the labeled images only;
    data, evaluation, prediction and figures are the shared ones of :class:`SegmentationMethod`."""

    name = "supervised"
    description = "supervised-only semantic segmentation (the baseline of CCT)"
    config_class = SupervisedConfig

    def build_data(self) -> SegmentationData:
        return build_segmentation_data(self.config.data)

    @property
    def eval_settings(self) -> SegEvalConfig:
        return self.config.eval

    def build_model(self) -> nn.Module:
        return self.build_network(self.config.model)

    def train_sources(self) -> dict[str, Source]:
        # Fewer labeled images than a batch: repeated to fill it, as CCT does (4 labeled images, batch 8).
        batch = self.config.train.batch_size
        return {"labeled": Source(fill_batch(self.data.labeled, batch), batch)}

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        return self.encoder_param_groups(model, self.config.model.encoder_lr_scale)

    def training_step(self, model: nn.Module, batch: dict, step: int, total_steps: int) -> StepOutput:
        labeled = batch["labeled"]
        logits = model(labeled["image"])
        mask = labeled["mask"]
        ignore = self.data.ignore_index
        total = F.cross_entropy(logits.float(), mask, ignore_index=ignore, reduction="sum")
        # Mean over the labeled pixels of the global batch (the same value with 1 or N processes).
        return StepOutput(global_mean(total, (mask != ignore).sum()))
