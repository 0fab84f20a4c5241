"""Causal (masked) layers for the canonical ordering ``tl_row`` without a blind spot.

Why not the plain PixelCNN mask: stacking 3x3 convolutions whose kernel keeps the row above and the left
neighbour leaves an upper-right wedge that no layer ever reaches (the "blind spot" of van den Oord et al.
2016). The gated PixelCNN cures it with a vertical stack (sees every row above) feeding a horizontal stack
(sees the current row up to the pixel). We keep one stream of ordinary 3x3 convolutions and give each channel
a *type* instead:

- a **V** channel at ``(y, x)`` depends only on rows ``< y`` (any column within reach);
- an **H** channel at ``(y, x)`` depends on rows ``< y`` and on row ``y`` up to column ``x`` (the pixel
included).

The network input is H-typed (a pixel sees itself). A kernel tap at offset ``(dy, dx)`` from an input channel
of type ``a`` to an output channel of type ``b`` is kept iff the output stays within its type:

    V -> V, V -> H : dy <= 0                (V at row y + dy <= y only sees rows < y)
    H -> H         : dy < 0 or (dy = 0 and dx <= 0)
    H -> V         : dy < 0

After ``L`` such 3x3 layers an H channel sees the whole causal half of the ``(2L+1) x (2L+1)`` window (rows
``y-L .. y-1`` over columns ``x-L .. x+L`` through the V channels, row ``y`` over ``x-L .. x`` through the H
channels): no blind spot. With masking off, the same weights form a plain CNN (the types only drive the
masks). The tests check both properties by autograd for all 8 orderings.

Masked weights are zeroed at construction, multiplied by the mask buffer in every masked forward (so they
receive no gradient) and re-zeroed by :func:`zero_masked_weights` after each optimizer step, so they stay
exactly zero under weight decay, momentum and Adam.

BatchNorm in training mode shares batch statistics across positions; that is a global coupling, not a path
from a later pixel's value, and causality is defined (and tested) with the statistics fixed (eval mode).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CausalSelfAttention",
    "MaskedConv2d",
    "MaskedResidualBlock",
    "causal_kernel_mask",
    "channel_types",
    "set_masked",
    "zero_masked_weights",
]


def channel_types(channels: int, vertical_fraction: float = 0.5) -> torch.Tensor:
    """``[channels]`` bool, True for V channels: the first ``round(channels * vertical_fraction)`` channels.

    Both types must exist (V carries the rows above, H the current row), so ``channels >= 2``.
    """
    if channels < 2:
        raise ValueError(f"a masked layer needs >= 2 channels (V and H types), got {channels}")
    n_vertical = min(max(int(round(channels * vertical_fraction)), 1), channels - 1)
    types = torch.zeros(channels, dtype=torch.bool)
    types[:n_vertical] = True
    return types


def causal_kernel_mask(in_vertical: torch.Tensor, out_vertical: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """``[C_out, C_in, k, k]`` float mask (1 = kept tap) for the ``tl_row`` ordering (rules in the module
    doc).

    Args:
        in_vertical: ``[C_in]`` bool channel types of the input (True = V).
        out_vertical: ``[C_out]`` bool channel types of the output.
        kernel_size: odd ``k``.
    """
    if kernel_size % 2 != 1:
        raise ValueError(f"masked convolutions need an odd kernel size, got {kernel_size}")
    r = kernel_size // 2
    offsets = torch.arange(-r, r + 1)
    dy = offsets.view(1, 1, -1, 1)
    dx = offsets.view(1, 1, 1, -1)
    from_vertical = (dy <= 0).expand(1, 1, kernel_size, kernel_size)
    h_to_h = (dy < 0) | ((dy == 0) & (dx <= 0))
    h_to_v = (dy < 0).expand(1, 1, kernel_size, kernel_size)
    in_v = in_vertical.view(1, -1, 1, 1)
    out_v = out_vertical.view(-1, 1, 1, 1)
    mask = torch.where(in_v, from_vertical, torch.where(out_v, h_to_v, h_to_h))
    return mask.float()


class MaskedConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose weight is multiplied by a causal mask buffer while ``masked`` is True.

    ``y = conv2d(x, W * M) + b`` with ``M = causal_kernel_mask(in_types, out_types, k)``; with ``masked =
    False``, ``y = conv2d(x, W) + b`` (a plain convolution). Shapes: ``[B, C_in, H, W] -> [B, C_out, H, W]``
    (stride 1, "same" padding).
    """

    mask: torch.Tensor

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        in_types: torch.Tensor,
        out_types: torch.Tensor,
        bias: bool = True,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)
        self.register_buffer("mask", causal_kernel_mask(in_types, out_types, kernel_size), persistent=False)
        self.masked = True
        with torch.no_grad():
            self.weight.mul_(self.mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight * self.mask if self.masked else self.weight
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def _conv(in_c: int, out_c: int, k: int, in_types: torch.Tensor | None, out_types: torch.Tensor | None) -> nn.Conv2d:
    """A masked conv when channel types are given, else a plain one (same parametrisation)."""
    if in_types is None or out_types is None:
        return nn.Conv2d(in_c, out_c, k, padding=k // 2, bias=False)
    return MaskedConv2d(in_c, out_c, k, in_types, out_types, bias=False)


class MaskedResidualBlock(nn.Module):
    """``relu(bn(conv3x3(relu(bn(conv3x3(x))))) + skip(x))``, masked or plain.

    ``skip`` is the identity, or a (masked) 1x1 conv + BN when the width or the channel types change.
    Shapes: ``[B, C_in, H, W] -> [B, C_out, H, W]``. ``in_types``/``out_types`` None = plain block.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        in_types: torch.Tensor | None = None,
        out_types: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = _conv(in_channels, out_channels, 3, in_types, out_types)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv(out_channels, out_channels, 3, out_types, out_types)
        self.bn2 = nn.BatchNorm2d(out_channels)
        same_types = in_types is None or out_types is None or torch.equal(in_types, out_types)
        if in_channels == out_channels and same_types:
            self.skip: nn.Module = nn.Identity()
        else:
            self.skip = nn.Sequential(
                _conv(in_channels, out_channels, 1, in_types, out_types), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.skip(x))


class CausalSelfAttention(nn.Module):
    """Pre-norm multi-head self-attention over positions, causal in the ``tl_row`` raster order when masked.

    ``y = x + W_o softmax(Q K^T / sqrt(d) + M) V`` over the ``H W`` tokens of each image (row-major), with
    ``M[p, q] = -inf`` for ``q`` after ``p`` (each position attends to itself and the positions before it);
    LayerNorm is per token (no mixing across positions). Shapes ``[B, C, H, W] -> [B, C, H, W]``. The output
    mixes all channels, so it is H-typed: place it after the last masked convolution.
    """

    def __init__(self, channels: int, heads: int = 4) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention: channels ({channels}) must be divisible by heads ({heads})")
        self.heads = heads
        self.norm = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        self.masked = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # [B, HW, C], row-major = canonical order
        q, k, v = self.qkv(self.norm(tokens)).view(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.masked)  # [B, heads, HW, C/heads]
        out = self.proj(out.transpose(1, 2).reshape(b, h * w, c))
        return x + out.transpose(1, 2).reshape(b, c, h, w)


def set_masked(module: nn.Module, masked: bool) -> None:
    """Turn masking on/off in every :class:`MaskedConv2d` / :class:`CausalSelfAttention` inside ``module``."""
    for m in module.modules():
        if isinstance(m, MaskedConv2d | CausalSelfAttention):
            m.masked = masked


@torch.no_grad()
def zero_masked_weights(module: nn.Module) -> None:
    """Re-zero the masked taps of every :class:`MaskedConv2d` in ``module`` (after an optimizer step)."""
    for m in module.modules():
        if isinstance(m, MaskedConv2d):
            m.weight.mul_(m.mask)
