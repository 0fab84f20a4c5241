"""The network trained by SCL, its baselines and ProtoNet: backbone + linear classifier + contrastive heads.

Every computation of a training step goes through :meth:`SCLNet.forward` (selected by ``mode``) so that DDP
synchronises the gradients of every sub-network it uses.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from fewlabels.methods.scl.backbones import FewShotBackbone
from fewlabels.methods.scl.heads import GlobalProjection, SpatialAttentionHead

#: ImageNet statistics (glyphs and folder datasets).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The reference's statistics of mini-ImageNet (also used for tiered-ImageNet and the cross-domain test sets).
MINI_IMAGENET_MEAN = (120.39586422 / 255.0, 115.59361427 / 255.0, 104.54012653 / 255.0)
MINI_IMAGENET_STD = (70.68188272 / 255.0, 68.27635443 / 255.0, 72.54505529 / 255.0)
#: The reference's CIFAR-100 statistics (CIFAR-FS, FC100).
CIFAR_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR_STD = (0.2675, 0.2565, 0.2761)

#: ``model.normalisation`` -> (mean, std)
NORMALISATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "mini-imagenet": (MINI_IMAGENET_MEAN, MINI_IMAGENET_STD),
    "cifar": (CIFAR_MEAN, CIFAR_STD),
}
#: ``model.normalisation: auto``: the statistics the reference uses for each training dataset (others: imagenet)
DATASET_NORMALISATION = {
    "mini-imagenet": "mini-imagenet",
    "tiered-imagenet": "mini-imagenet",
    "cifar-fs": "cifar",
    "fc100": "cifar",
}


def resolve_normalisation(choice: str, dataset: str) -> str:
    """The statistics' name of ``model.normalisation`` (``auto`` picks the training ``dataset``'s)."""
    if choice != "auto":
        return choice
    return DATASET_NORMALISATION.get(dataset, "imagenet")


class SCLNet(nn.Module):
    """Backbone with a linear classifier over ``num_classes`` base classes and optional GC / SC heads.

    Inputs are images ``[B, C, S, S]`` in ``[0, 1]``; the network normalises them itself so that training,
    evaluation and prediction cannot disagree on the statistics.
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self,
        backbone: FewShotBackbone,
        num_classes: int,
        global_head: bool = False,
        spatial_head: bool = False,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        dim = backbone.out_channels
        self.classifier = nn.Linear(dim, num_classes) if num_classes > 0 else None
        self.global_head = GlobalProjection(dim) if global_head else None
        self.spatial_head = SpatialAttentionHead(dim) if spatial_head else None
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        # The frozen teacher of distillation lives outside the module tree (see attach_teacher): it must not
        # be saved with the student, trained, or wrapped by DDP.
        self._teacher: list[SCLNet] = []

    # --------------------------------------------------------------------------------------------------------
    def attach_teacher(self, teacher: SCLNet) -> None:
        """Hold ``teacher`` frozen for ``mode="distill"`` (moved with the student by ``.to()``)."""
        for p in teacher.parameters():
            p.requires_grad_(False)
        teacher.eval()
        self._teacher = [teacher]

    @property
    def teacher(self) -> SCLNet | None:
        return self._teacher[0] if self._teacher else None

    def _apply(self, fn: Any, recurse: bool = True) -> SCLNet:
        super()._apply(fn, recurse)
        for t in self._teacher:
            t._apply(fn, recurse)
        return self

    # --------------------------------------------------------------------------------------------------------
    def features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``images [B, C, S, S]`` -> ``(spatial [B, D, h, w], pooled [B, D])``."""
        x = (images - self.mean[:, : images.shape[1]]) / self.std[:, : images.shape[1]]
        return self.backbone(x)

    def forward(self, images: Tensor, mode: str = "logits") -> Any:
        """Modes:

        - ``"logits"``: ``[B, num_classes]``;
        - ``"features"``: ``(spatial [B, D, h, w], pooled [B, D])``;
        - ``"train"``: dict with ``logits`` (if a classifier), ``pooled``, ``spatial`` and, for the enabled
        heads,
          ``projection [B, D/8]`` (GC) and ``q``, ``k``, ``v`` ``[B, h*w, D/8]`` (SC);
        - ``"distill"``: the ``"train"`` dict plus ``teacher_logits`` and ``teacher_pooled`` (teacher in eval
          mode, no gradient).
        """
        if mode == "features":
            return self.features(images)
        spatial, pooled = self.features(images)
        if mode == "logits":
            if self.classifier is None:
                raise RuntimeError("this network has no classifier (ProtoNet): use mode='features'")
            return self.classifier(pooled)
        if mode not in ("train", "distill"):
            raise ValueError(f"unknown mode {mode!r}; choose logits, features, train or distill")
        out: dict[str, Tensor] = {"spatial": spatial, "pooled": pooled}
        if self.classifier is not None:
            out["logits"] = self.classifier(pooled)
        if self.global_head is not None:
            out["projection"] = self.global_head(pooled)
        if self.spatial_head is not None:
            out["q"], out["k"], out["v"] = self.spatial_head(spatial)
        if mode == "distill":
            teacher = self.teacher
            if teacher is None:
                raise RuntimeError("mode='distill' needs a teacher: call attach_teacher first")
            teacher.eval()
            with torch.no_grad():
                t_spatial, t_pooled = teacher.features(images)
                out["teacher_pooled"] = t_pooled
                out["teacher_spatial"] = t_spatial
                if teacher.classifier is not None:
                    out["teacher_logits"] = teacher.classifier(t_pooled)
        return out
