"""K auxiliary decoders held as stacked weights and run as a few batched matrix products.

Every decoder has the architecture of :class:`fewlabels.models.UpsampleDecoder` (1x1 conv ``D -> C`` without
bias, then ``log2(upscale)`` stages of ``1x1 conv C -> 4C -> ReLU -> PixelShuffle(2)``, no ReLU after the last
stage). Running K such modules costs K * (1 + 3 * 3) small kernels (conv, ReLU, shuffle copy) per pass; the
reference's K = 30 decoders add 1.6% of the FLOPs of a step but ~35% of its time. Here:

* the K ``1x1`` convolutions of a stage are one broadcast matrix product ``W[K, 1, out, in] @ x[K, B, in,
M]``;
* the pixel shuffles are never executed. Every layer is pointwise, so a stage can keep its output channels in
  PixelShuffle's order ``c * 4 + s`` and reinterpret ``[K, B, 4C, M]`` as ``[K, B, C, 4M]`` (a free view): the
  sub-pixel index is folded into the position axis. The decoded logits come out in the *sub-pixel layout*
  ``[K, B, C, 4**S, h*w]``; :meth:`StackedUpsampleDecoders.to_subpixel_layout` brings a ``[B, C, H, W]``
  target (or labels) into the same layout, so losses never touch the spatial order of the K outputs, and
  :meth:`StackedUpsampleDecoders.from_subpixel_layout` restores ``[..., C, H, W]`` when images are needed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewlabels.models import UpsampleDecoder

__all__ = ["StackedUpsampleDecoders"]


def _stage_convs(decoder: UpsampleDecoder) -> list[nn.Conv2d]:
    """The 1x1 convolutions of the pixel-shuffle stages of ``decoder``, in order."""
    convs = [stage.conv for stage in decoder.stages]
    if not all(isinstance(c, nn.Conv2d) and c.bias is not None for c in convs):
        raise TypeError("expected UpsampleDecoder stages made of PixelShuffleUpsample (1x1 conv with bias)")
    return convs  # type: ignore[return-value]


class StackedUpsampleDecoders(nn.Module):
    """``K`` independent :class:`~fewlabels.models.UpsampleDecoder` heads evaluated together.

    Parameters (decoder ``k``): ``classifier[k] [C, D]``, ``stage_weight[s, k] [4C, C]``, ``stage_bias[s, k]
    [4C]``; identical to ``UpsampleDecoder``'s ``classifier.weight[:, :, 0, 0]``, ``stages[s].conv.weight[:,
    :, 0, 0]`` and ``stages[s].conv.bias`` (see :meth:`load_decoder` / :meth:`export_decoder`), with the same
    initialisation.

    Shapes: :meth:`forward` ``[K, B, D, h, w]`` -> ``[K, B, C, upscale*h, upscale*w]``;
    :meth:`forward_subpixel` ``[K, B, D, h, w]`` -> ``[K, B, C, upscale**2, h*w]``.
    """

    def __init__(self, num_decoders: int, in_channels: int, num_classes: int, upscale: int = 8) -> None:
        super().__init__()
        if num_decoders < 1:
            raise ValueError(f"num_decoders must be >= 1, got {num_decoders}")
        if upscale < 1 or upscale & (upscale - 1):
            raise ValueError(f"upscale must be a power of two, got {upscale}")
        self.num_decoders = num_decoders
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.upscale = upscale
        self.num_stages = int(math.log2(upscale))
        c = num_classes
        self.classifier = nn.Parameter(torch.empty(num_decoders, c, in_channels))
        self.stage_weight = nn.Parameter(torch.empty(self.num_stages, num_decoders, 4 * c, c))
        self.stage_bias = nn.Parameter(torch.empty(self.num_stages, num_decoders, 4 * c))
        # Initialise exactly as K separate UpsampleDecoders (He init, ICNR, zero bias) by copying fresh ones.
        for k in range(num_decoders):
            self.load_decoder(k, UpsampleDecoder(in_channels, num_classes, upscale))

    # --- conversion to and from single decoders ----------------------------------------------------------
    @torch.no_grad()
    def load_decoder(self, k: int, decoder: UpsampleDecoder) -> None:
        """Copy the weights of an ``UpsampleDecoder`` into slot ``k``."""
        if (decoder.in_channels, decoder.num_classes, decoder.upscale) != (
            self.in_channels,
            self.num_classes,
            self.upscale,
        ):
            raise ValueError("decoder shape does not match the stacked decoders")
        self.classifier[k].copy_(decoder.classifier.weight[:, :, 0, 0])
        for s, conv in enumerate(_stage_convs(decoder)):
            self.stage_weight[s, k].copy_(conv.weight[:, :, 0, 0])
            self.stage_bias[s, k].copy_(conv.bias)  # type: ignore[arg-type]  # checked by _stage_convs

    @torch.no_grad()
    def export_decoder(self, k: int) -> UpsampleDecoder:
        """A standalone ``UpsampleDecoder`` with the weights of slot ``k`` (e.g. to deploy one aux head)."""
        decoder = UpsampleDecoder(self.in_channels, self.num_classes, self.upscale).to(self.classifier)
        decoder.classifier.weight.copy_(self.classifier[k][:, :, None, None])
        for s, conv in enumerate(_stage_convs(decoder)):
            conv.weight.copy_(self.stage_weight[s, k][:, :, None, None])
            conv.bias.copy_(self.stage_bias[s, k])  # type: ignore[union-attr]  # checked by _stage_convs
        return decoder

    # --- forward -----------------------------------------------------------------------------------------
    def forward_subpixel(self, x: Tensor, decoders: slice | None = None) -> Tensor:
        """Decode ``x [K', B, D, h, w]`` with decoders ``decoders`` (default all, ``K' = K``).

        Returns logits in the sub-pixel layout ``[K', B, C, upscale**2, h*w]``: position ``(s_S, ..., s_1, y,
        x)`` where ``s_i = 2 * i_i + j_i`` is the sub-pixel chosen by stage ``i``; the image row is ``((y * 2
        + i_1) * 2 + i_2) ... `` and likewise for columns.
        """
        sl = decoders if decoders is not None else slice(None)
        kk, b, d, h, w = x.shape
        out = torch.matmul(self.classifier[sl].unsqueeze(1), x.reshape(kk, b, d, h * w))  # [K', B, C, hw]
        return self.stages_subpixel(out, sl)

    def stages_subpixel(self, out: Tensor, decoders: slice | None = None) -> Tensor:
        """The pixel-shuffle stages alone: classifier outputs ``[K', B, C, h*w]`` -> logits
        ``[K', B, C, upscale**2, h*w]`` (sub-pixel layout)."""
        sl = decoders if decoders is not None else slice(None)
        kk, b, c, hw = out.shape
        for s in range(self.num_stages):
            weight = self.stage_weight[s, sl].unsqueeze(1)  # [K', 1, 4C, C]
            bias = self.stage_bias[s, sl].view(kk, 1, 4 * c, 1)
            out = torch.matmul(weight, out).add_(bias)
            if s < self.num_stages - 1:
                out = F.relu(out, inplace=True)
            # channels c*4 + sub-pixel -> (c, sub-pixel): the new sub-pixel is the outermost position index
            out = out.view(kk, b, c, 4 * out.shape[-1])
        return out.view(kk, b, c, self.upscale**2, hw)

    def stages_first_subpixel(self, out: Tensor) -> Tensor:
        """The stages of all K decoders followed at sub-pixel 0 only: classifier outputs ``[K, B, C, h*w]`` -> the
        logits ``[K, B, C, h*w]`` of pixel ``(upscale * y, upscale * x)`` of every block, which every stage places at
        its sub-pixel 0 (its output channels ``c * 4``): equal to ``stages_subpixel(out)[:, :, :, 0]`` at 1/4 of
        each stage's cost."""
        k = out.shape[0]
        for s in range(self.num_stages):
            weight = self.stage_weight[s, :, 0::4].unsqueeze(1)  # [K, 1, C, C]
            out = torch.matmul(weight, out).add_(self.stage_bias[s, :, 0::4].view(k, 1, -1, 1))
            if s < self.num_stages - 1:
                out = F.relu(out, inplace=True)
        return out

    def forward(self, x: Tensor, decoders: slice | None = None) -> Tensor:
        """Decode ``x [K', B, D, h, w]`` -> logits ``[K', B, C, upscale*h, upscale*w]`` (image layout)."""
        h, w = x.shape[-2:]
        return self.from_subpixel_layout(self.forward_subpixel(x, decoders), h, w)

    # --- layouts -----------------------------------------------------------------------------------------
    def to_subpixel_layout(self, t: Tensor) -> Tensor:
        """``[..., H, W]`` (image layout, ``H = upscale*h``) -> ``[..., upscale**2, h*w]`` (sub-pixel)."""
        n = self.num_stages
        r = self.upscale
        lead = t.shape[:-2]
        hh, ww = t.shape[-2:]
        h, w = hh // r, ww // r
        if h * r != hh or w * r != ww:
            raise ValueError(f"spatial size {hh}x{ww} is not a multiple of the upscale {r}")
        t = t.reshape(-1, h, *([2] * n), w, *([2] * n))  # [N, y, i_1..i_n, x, j_1..j_n]
        # sub-pixel order (s_n, ..., s_1) with s_i = (i_i, j_i), then (y, x)
        order = [0]
        for i in range(n, 0, -1):
            order += [1 + i, 2 + n + i]
        order += [1, 2 + n]
        return t.permute(order).reshape(*lead, r * r, h * w)

    def from_subpixel_layout(self, t: Tensor, h: int, w: int) -> Tensor:
        """``[..., upscale**2, h*w]`` -> ``[..., upscale*h, upscale*w]`` (inverse of the above)."""
        n = self.num_stages
        lead = t.shape[:-2]
        t = t.reshape(-1, *([2, 2] * n), h, w)  # [N, (i_n, j_n), ..., (i_1, j_1), y, x]
        # dims: 1 + 2*(n - i) is i_i, 2 + 2*(n - i) is j_i
        order = [0, 1 + 2 * n] + [1 + 2 * (n - i) for i in range(1, n + 1)]
        order += [2 + 2 * n] + [2 + 2 * (n - i) for i in range(1, n + 1)]
        return t.permute(order).reshape(*lead, h * self.upscale, w * self.upscale)
