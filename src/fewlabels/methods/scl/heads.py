"""Projection heads of the contrastive regularisers.

- :class:`GlobalProjection` (GC): ``Linear(C, C, no bias) -> ReLU -> Linear(C, out, no bias)`` on
  pooled features.
- :class:`SpatialAttentionHead` (SC): q, k, v projectors, each
  ``Linear(C, C, no bias) -> ReLU -> Linear(C, d, no bias)``, applied to every position of a spatial map;
  ``d = C / 8`` (80 for the 640-channel ResNet-12).
"""

from __future__ import annotations

from torch import Tensor, nn


def _mlp(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_dim, in_dim, bias=False), nn.ReLU(inplace=True), nn.Linear(in_dim, out_dim, bias=False)
    )


class GlobalProjection(nn.Module):
    """``pooled [B, C] -> [B, out_dim]`` (the GC head; 640 -> 640 -> 80 for ResNet-12)."""

    def __init__(self, in_dim: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.net = _mlp(in_dim, out_dim if out_dim is not None else max(in_dim // 8, 1))

    def forward(self, pooled: Tensor) -> Tensor:
        return self.net(pooled)


class SpatialAttentionHead(nn.Module):
    """``spatial [B, C, h, w] -> (q, k, v)`` each ``[B, h*w, d]``, inputs of :func:`spatial_similarity`."""

    def __init__(self, in_dim: int, inner_dim: int | None = None) -> None:
        super().__init__()
        d = inner_dim if inner_dim is not None else max(in_dim // 8, 1)
        self.inner_dim = d
        self.query = _mlp(in_dim, d)
        self.key = _mlp(in_dim, d)
        self.value = _mlp(in_dim, d)

    def forward(self, spatial: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        tokens = spatial.flatten(2).transpose(1, 2)  # [B, P, C]
        return self.query(tokens), self.key(tokens), self.value(tokens)
