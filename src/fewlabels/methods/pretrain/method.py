"""``seg-pretrain``: a self-supervised warm start of a segmentation encoder, trained by the engine like any method.

Why: the thesis fine-tunes an ImageNet-pretrained encoder gently (0.1 x lr), and CCT's consistency pays off on top
of that encoder. A user with few labels and no pretrained weights for their images (or data unlike ImageNet) has
only the images. This method learns an encoder from them alone, with a dense contrastive task (pixel-level InfoNCE
between two views of an image, after VADeR / DenseCL, without a momentum encoder): each contrasted position must
find its counterpart in the other view among all positions of the batch. The run's ``model.safetensors`` holds the
encoder (``encoder.*``) and the projection head (``head.*``, dropped on loading), so a segmentation config
warm-starts from it with ``model.pretrained=RUN/model.safetensors``. The images are those of the ``data`` section's
training split, labeled and unlabeled alike; no mask is read.

Validation: the loss and the retrieval accuracy (an anchor's nearest embedding in the other view is its own
position) on fixed views of the validation images; checkpoints are selected on the accuracy.
"""

from __future__ import annotations

from functools import cached_property

import torch
from torch import Tensor, nn

from fewlabels.data.base import DataError, fill_batch
from fewlabels.data.segmentation import SegmentationData
from fewlabels.methods.base import Method, Source, StepOutput
from fewlabels.methods.pretrain.config import SegPretrainConfig
from fewlabels.methods.pretrain.losses import pixel_infonce, retrieval_accuracy
from fewlabels.methods.pretrain.views import ImageList, TwoViews
from fewlabels.methods.segmentation.method import build_segmentation_data
from fewlabels.models import IMAGENET_MEAN, IMAGENET_STD, build_encoder
from fewlabels.parallel import gather_with_grad
from fewlabels.registry import register_method

__all__ = ["DenseContrastNet", "SegPretrain", "matched_embeddings"]


class DenseContrastNet(nn.Module):
    """``images [B, 3, H, W]`` in ``[0, 1]`` -> embeddings ``[B, projection_dim, H/os, W/os]`` (not normalised):
    the encoder (normalising its input as :class:`~fewlabels.models.SegmentationNet` does) and a 1x1 two-layer head."""

    def __init__(self, encoder: nn.Module, channels: int, hidden: int, dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, dim, 1),
        )
        self.mean: Tensor
        self.std: Tensor
        # not persistent: the weights file holds the encoder and the head only, which a backbone loader reads
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.encoder((images - self.mean) / self.std))


def matched_embeddings(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """The embeddings of the matched positions of a :class:`TwoViews` batch: ``(anchors, positives)``, each
    ``[B * positions, dim]``, row ``i`` of both the same image region. Both views go through one forward (one set of
    batch-norm statistics)."""
    view1, view2 = batch["view1"], batch["view2"]
    emb = model(torch.cat([view1, view2])).float()
    e1, e2 = emb.flatten(2).chunk(2)  # [B, dim, cells]
    dim = e1.shape[1]

    def pick(e: Tensor, pos: Tensor) -> Tensor:
        return e.gather(2, pos.unsqueeze(1).expand(-1, dim, -1)).transpose(1, 2).reshape(-1, dim)

    return pick(e1, batch["pos1"]), pick(e2, batch["pos2"])


@register_method
class SegPretrain(Method[SegPretrainConfig]):
    """Dense contrastive pretraining of a segmentation encoder on the training images of ``data`` (labels unused)."""

    name = "seg-pretrain"
    description = "self-supervised warm start of a segmentation encoder (dense contrastive, images only)"
    config_class = SegPretrainConfig
    metric = "retrieval_acc"
    metric_mode = "max"

    @cached_property
    def data(self) -> SegmentationData:
        return build_segmentation_data(self.config.data)

    def views(self, images: ImageList) -> TwoViews:
        p = self.config.pretrain
        return TwoViews(
            images, p.crop_size, self.config.model.output_stride, p.positions, p.max_shift, p.jitter, p.grayscale
        )

    def build_model(self) -> nn.Module:
        m = self.config.model
        encoder = build_encoder(m.encoder, m.output_stride, m.deep_stem, m.pretrained)
        return DenseContrastNet(encoder, encoder.out_channels, m.hidden, m.projection_dim)

    def train_sources(self) -> dict[str, Source]:
        images = ImageList(self.data.labeled, self.data.unlabeled)
        if len(images) == 0:
            raise DataError("the data section has no training images to pretrain on")
        batch = self.config.train.batch_size
        return {"images": Source(fill_batch(self.views(images), batch), batch)}

    def training_step(self, model: nn.Module, batch: dict, step: int, total_steps: int) -> StepOutput:
        anchors, positives = matched_embeddings(model, batch["images"])
        # every process contrasts the positions of the global batch (the same loss with 1 or N processes)
        anchors, positives = gather_with_grad(anchors), gather_with_grad(positives)
        loss = pixel_infonce(anchors, positives, self.config.pretrain.temperature)
        return StepOutput(loss, {"retrieval_acc": retrieval_accuracy(anchors.detach(), positives.detach())})

    @torch.no_grad()
    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        views = self.views(ImageList(self.data.val))
        if len(views) == 0:
            return {}
        batch = self.config.train.batch_size
        losses, accs, weights = [], [], []
        for start in range(0, len(views), batch):
            items = [views.sample(i, None) for i in range(start, min(len(views), start + batch))]
            stacked = {k: torch.stack([it[k] for it in items]).to(device) for k in ("view1", "view2", "pos1", "pos2")}
            a, p = matched_embeddings(model, stacked)
            losses.append(float(pixel_infonce(a, p, self.config.pretrain.temperature)))
            accs.append(float(retrieval_accuracy(a, p)))
            weights.append(len(items))
        total = float(sum(weights))
        return {
            "loss": sum(v * w for v, w in zip(losses, weights, strict=True)) / total,
            "retrieval_acc": sum(v * w for v, w in zip(accs, weights, strict=True)) / total,
        }
