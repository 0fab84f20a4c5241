"""The loss of the dense contrastive warm start: pure functions of tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["pixel_infonce", "retrieval_accuracy"]


def pixel_infonce(anchors: Tensor, positives: Tensor, temperature: float) -> Tensor:
    """Symmetric InfoNCE between matched rows: row ``i`` of ``anchors [N, D]`` and row ``i`` of ``positives [N, D]``
    are the same image position seen in two views; every other row of the other view is a negative.

    Both inputs are L2-normalised here. Returns ``(CE(a p^T / t, i) + CE(p a^T / t, i)) / 2``, the mean over the N
    rows (``log N`` for features that carry no information, 0 in the limit of perfectly separated positions).
    """
    if anchors.shape != positives.shape or anchors.dim() != 2:
        raise ValueError(
            f"anchors and positives must both be [N, D], got {tuple(anchors.shape)} and {tuple(positives.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    a = F.normalize(anchors.float(), dim=1)
    p = F.normalize(positives.float(), dim=1)
    logits = a @ p.t() / temperature
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


@torch.no_grad()
def retrieval_accuracy(anchors: Tensor, positives: Tensor) -> Tensor:
    """Fraction of anchors whose most similar row among ``positives`` (cosine) is their own position."""
    sim = F.normalize(anchors.float(), dim=1) @ F.normalize(positives.float(), dim=1).t()
    target = torch.arange(sim.shape[0], device=sim.device)
    return (sim.argmax(dim=1) == target).float().mean()
