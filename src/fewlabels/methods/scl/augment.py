"""Batched two-view augmentation on tensors (kornia), drawing its randomness from torch's global RNG.

Running the augmentations on the batch (on the accelerator) rather than per sample in the data loader keeps
the data path cheap; the engine seeds and checkpoints torch's RNG, so a resumed run draws the same augmentations.

Views (RFS / SCL recipes), for images ``[B, C, S, S]`` in ``[0, 1]``:

- ``standard``: random crop of side ``S`` after zero padding ``S / 10.5`` (8 px at 84, 4 px at 32... rounded),
  colour jitter 0.4 (brightness, contrast, saturation), horizontal flip.
- ``simclr``: random resized crop (scale 0.2-1), horizontal flip, colour jitter (0.4, 0.4, 0.4, 0.1) with
  p 0.8, grayscale with p 0.2.
- ``none``: the image unchanged.
"""

from __future__ import annotations

from typing import Literal

import kornia.augmentation as K
from torch import Tensor, nn

ViewKind = Literal["standard", "simclr", "none"]
VIEW_KINDS: tuple[str, ...] = ("standard", "simclr", "none")


def crop_padding(image_size: int) -> int:
    """Padding of the standard random crop: 8 px at 84 (RFS) and 4 px at 32 (CIFAR), proportional otherwise."""
    return {84: 8, 32: 4}.get(image_size, max(1, round(image_size / 10.5)))


def build_view(kind: str, image_size: int) -> nn.Module:
    """The augmentation pipeline of one view: a module ``[B, C, S, S] -> [B, C, S, S]``."""
    if kind == "none":
        return nn.Identity()
    if kind == "standard":
        return nn.Sequential(
            K.RandomCrop((image_size, image_size), padding=crop_padding(image_size)),
            K.ColorJitter(0.4, 0.4, 0.4, 0.0, p=1.0),
            K.RandomHorizontalFlip(),
        )
    if kind == "simclr":
        return nn.Sequential(
            K.RandomResizedCrop((image_size, image_size), scale=(0.2, 1.0)),
            K.RandomHorizontalFlip(),
            K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8),
            K.RandomGrayscale(p=0.2),
        )
    raise ValueError(f"unknown augmentation view {kind!r}; choose one of: {', '.join(VIEW_KINDS)}")


class MultiViewAugment(nn.Module):
    """``images [B, C, S, S] -> [V * B, C, S, S]``: one augmented copy per view, view-major (what supcon
    expects)."""

    def __init__(self, views: tuple[str, ...] | list[str], image_size: int) -> None:
        super().__init__()
        self.views = nn.ModuleList(build_view(v, image_size) for v in views)

    def forward(self, images: Tensor) -> Tensor:
        import torch

        return torch.cat([view(images).clamp(0.0, 1.0) for view in self.views], dim=0)
