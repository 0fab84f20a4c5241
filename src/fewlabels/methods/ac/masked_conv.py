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

**One set of weights, 8 masks.** The rules above define the mask of the canonical ordering ``tl_row``; the mask of
ordering ``o`` is its image under :func:`~fewlabels.methods.ac.orderings.kernel_for` (flips/transpose of the kernel),
and a masked layer applies, to each view of a stacked batch, the mask of that view's ordering
(:func:`set_view_orderings`). A tap is thus trained by every ordering that keeps it, and the mask-free network (the
thesis' inference: "remove masking & proceed as in standard image segmentation") uses every trained tap. Taps that no
ordering keeps (the centre tap from an H to a V channel) are zeroed at construction, receive no gradient and are
re-zeroed by :func:`zero_masked_weights` after each optimizer step, so they stay exactly zero under weight decay,
momentum and Adam.

**BatchNorm exception.** BatchNorm in training mode normalises with statistics of the whole batch, every position
of every image (and both views of a stacked batch) included: the output at ``p`` then depends, through the mean and
variance, on the values at later pixels. That is a global coupling of order ``1 / (B H W)``, not a path that lets a
pixel read a later pixel's value, and the thesis' masked networks share it; causality is defined (and tested) with
the statistics fixed, in eval mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fewlabels.methods.ac.orderings import ORDERINGS, attention_mask, kernel_for

#: The ordering of one view: an index into :data:`ORDERINGS` (a raster scan), or ``[h w]`` int64 ranks of the
#: positions of the ordered part's feature map (a random, non-raster ordering: position ``q`` is before ``p`` iff
#: ``ranks[q] < ranks[p]``).
ViewOrdering = int | torch.Tensor

__all__ = [
    "CausalSelfAttention",
    "ViewOrdering",
    "MaskedConv2d",
    "MaskedResidualBlock",
    "causal_kernel_mask",
    "channel_types",
    "set_masked",
    "set_view_orderings",
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
    """``nn.Conv2d`` with one weight and one causal mask per ordering, applied while ``masked`` is True.

    View ``v`` of the batch (the input split into ``len(view_orderings)`` equal chunks along the batch, views major)
    gives ``y_v = conv2d(x_v, W * M_{o_v}) + b`` with ``M_o = kernel_for(causal_kernel_mask(in_types, out_types, k),
    o)``; with ``masked = False``, ``y = conv2d(x, W) + b`` (a plain convolution). Shapes: ``[B, C_in, H, W] ->
    [B, C_out, H, W]`` (stride 1, "same" padding).

    Buffers: ``masks`` ``[8, C_out, C_in, k, k]`` (index = position in :data:`ORDERINGS`) and ``mask``, their union
    (the taps some ordering trains; the others are held at zero).
    """

    mask: torch.Tensor
    masks: torch.Tensor

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
        canonical = causal_kernel_mask(in_types, out_types, kernel_size)
        masks = torch.stack([kernel_for(canonical, o) for o in ORDERINGS])
        self.register_buffer("masks", masks, persistent=False)
        self.register_buffer("mask", masks.amax(dim=0), persistent=False)
        self.masked = True
        #: orderings of the views stacked along the batch (set by :func:`set_view_orderings`)
        self.view_orderings: tuple[ViewOrdering, ...] = (0,)
        with torch.no_grad():
            self.weight.mul_(self.mask)

    def _conv(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def _random_order_conv(self, x: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
        """Convolution whose tap from ``q`` to ``p`` is kept iff ``ranks[q] <= ranks[p]`` (a per-position mask, so
        an im2col product): causal in any ordering of the positions. Channel types do not apply (they encode the
        raster structure); taps no raster ordering keeps stay at zero."""
        b, _, h, w = x.shape
        k = self.kernel_size[0]
        r = k // 2
        rank_map = ranks.view(1, 1, h, w).to(x.dtype)
        padded = F.pad(rank_map, (r, r, r, r), value=float(h * w))  # outside the map: never before (zeros anyway)
        neighbour_ranks = F.unfold(padded, k)  # [1, k k, h w]: rank of q = p + d for every tap d
        keep = (neighbour_ranks <= rank_map.view(1, 1, h * w)).to(x.dtype)
        cols = F.unfold(x, k, padding=r).view(b, -1, k * k, h * w) * keep.unsqueeze(1)
        weight = (self.weight * self.mask).view(self.out_channels, -1)
        out = torch.matmul(weight, cols.view(b, -1, h * w))
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1)
        return out.view(b, self.out_channels, h, w)

    def _view(self, x: torch.Tensor, ordering: ViewOrdering) -> torch.Tensor:
        if isinstance(ordering, torch.Tensor):
            return self._random_order_conv(x, ordering)
        return self._conv(x, self.weight * self.masks[ordering])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.masked:
            return self._conv(x, self.weight)
        views = self.view_orderings
        if len(views) == 1 or all(isinstance(v, int) and v == views[0] for v in views):
            return self._view(x, views[0])
        if x.shape[0] % len(views):
            raise ValueError(f"a batch of {x.shape[0]} cannot hold {len(views)} equal views")
        return torch.cat([self._view(c, v) for c, v in zip(x.chunk(len(views)), views)])


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
    """Pre-norm multi-head self-attention over positions, causal in each view's ordering when masked.

    ``y = x + W_o softmax(Q K^T / sqrt(d) + M_o) V`` over the ``H W`` tokens of each image (row-major), with
    ``M_o[p, q] = -inf`` for ``q`` after ``p`` in ordering ``o`` (each position attends to itself and the positions
    before it; :func:`~fewlabels.methods.ac.orderings.attention_mask`), one ``o`` per view as in :class:`MaskedConv2d`;
    unmasked, every position attends to every position. LayerNorm is per token (no mixing across positions). Shapes
    ``[B, C, H, W] -> [B, C, H, W]``. The output mixes all channels, so it is H-typed: place it after the last masked
    convolution.
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
        self.view_orderings: tuple[ViewOrdering, ...] = (0,)

    def _attend(self, x: torch.Tensor, ordering: ViewOrdering | None) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # [B, HW, C], row-major
        q, k, v = self.qkv(self.norm(tokens)).view(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        if ordering is None:
            out = F.scaled_dot_product_attention(q, k, v)
        elif isinstance(ordering, torch.Tensor):  # random ordering: ranks of the tokens
            allowed = ordering.view(1, -1) <= ordering.view(-1, 1)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        elif ordering == 0:  # tl_row: the row-major token order is the scan order
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            allowed = attention_mask(ORDERINGS[ordering], h, w, x.device)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        out = self.proj(out.transpose(1, 2).reshape(b, h * w, c))  # out: [B, heads, HW, C/heads] before
        return x + out.transpose(1, 2).reshape(b, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.masked:
            return self._attend(x, None)
        views = self.view_orderings
        if len(views) == 1 or all(isinstance(v, int) and v == views[0] for v in views):
            return self._attend(x, views[0])
        if x.shape[0] % len(views):
            raise ValueError(f"a batch of {x.shape[0]} cannot hold {len(views)} equal views")
        return torch.cat([self._attend(c, v) for c, v in zip(x.chunk(len(views)), views)])


def set_masked(module: nn.Module, masked: bool) -> None:
    """Turn masking on/off in every :class:`MaskedConv2d` / :class:`CausalSelfAttention` inside ``module``."""
    for m in module.modules():
        if isinstance(m, MaskedConv2d | CausalSelfAttention):
            m.masked = masked


def set_view_orderings(module: nn.Module, orderings: tuple[ViewOrdering, ...]) -> None:
    """The orderings (indices into :data:`ORDERINGS`, or rank maps of random orderings) of the views that the masked
    layers of ``module`` receive stacked along the batch, views major."""
    if not orderings:
        raise ValueError("at least one ordering")
    for m in module.modules():
        if isinstance(m, MaskedConv2d | CausalSelfAttention):
            m.view_orderings = tuple(orderings)


@torch.no_grad()
def zero_masked_weights(module: nn.Module) -> None:
    """Re-zero the masked taps of every :class:`MaskedConv2d` in ``module`` (after an optimizer step)."""
    for m in module.modules():
        if isinstance(m, MaskedConv2d):
            m.weight.mul_(m.mask)
