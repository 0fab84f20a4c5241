"""Segmentation heads: the PSP context module and CCT's pixel-shuffle upsampling decoder."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def exportable_adaptive_avg_pool2d(x: Tensor, size: int) -> Tensor:
    """``F.adaptive_avg_pool2d(x, size)`` as two matrix products whose averaging weights are computed from the input
    size with tensor ops: the same values (up to rounding) for every input size under ``torch.export``, whose ONNX
    translation of adaptive pooling holds only for the example's size."""

    def weights(n: int) -> Tensor:  # [size, n]: row i averages positions floor(i n / size) .. ceil((i + 1) n / size)
        i = torch.arange(size, device=x.device)[:, None]
        start, end = (i * n) // size, ((i + 1) * n + size - 1) // size
        positions = torch.arange(n, device=x.device)[None, :]
        inside = (positions >= start) & (positions < end)
        return inside.to(x.dtype) / (end - start).to(x.dtype)

    return weights(x.shape[-2]) @ x @ weights(x.shape[-1]).T


class AdaptiveAvgPool(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d`` to a square ``size``, exported (``torch.export``) as
    :func:`exportable_adaptive_avg_pool2d` so that the exported graph holds for every input size."""

    def forward(self, input: Tensor) -> Tensor:
        exporting = getattr(torch.compiler, "is_exporting", None)
        if exporting is not None and exporting() and isinstance(self.output_size, int):
            return exportable_adaptive_avg_pool2d(input, self.output_size)
        return super().forward(input)


class PSPModule(nn.Module):
    """Pyramid pooling (PSPNet) as used on top of CCT's encoder.

    For each bin size ``b``: adaptive average pool to ``b x b``, 1x1 conv ``in -> in // len(bins)``, BN, ReLU, bilinear
    upsampling back to ``h x w``. The pooled maps are concatenated with the input
    (``in + len(bins) * (in // len(bins))`` channels) and fused by a 3x3 conv to ``out_channels`` + BN + ReLU. With the
    reference ``in_channels=2048``, ``bins=(1, 2, 3, 6)``: four 2048->512 branches and a 4096->512 fusion. The branch
    width is derived from ``in_channels`` so that small encoders work too.

    Shapes: ``[B, in_channels, h, w]`` -> ``[B, out_channels, h, w]``.
    """

    def __init__(self, in_channels: int, out_channels: int = 512, bins: tuple[int, ...] = (1, 2, 3, 6)) -> None:
        super().__init__()
        if not bins:
            raise ValueError("PSPModule needs at least one bin size")
        branch = max(1, in_channels // len(bins))
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.bins = tuple(bins)
        self.stages = nn.ModuleList(
            nn.Sequential(
                AdaptiveAvgPool(b),
                nn.Conv2d(in_channels, branch, kernel_size=1, bias=False),
                nn.BatchNorm2d(branch),
                nn.ReLU(inplace=True),
            )
            for b in self.bins
        )
        self.bottleneck = nn.Sequential(
            nn.Conv2d(in_channels + branch * len(self.bins), out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, in_channels, h, w]`` -> ``[B, out_channels, h, w]``."""
        size = x.shape[-2:]
        pyramid = [x] + [
            F.interpolate(stage(x), size=size, mode="bilinear", align_corners=False) for stage in self.stages
        ]
        return self.bottleneck(torch.cat(pyramid, dim=1))


@torch.no_grad()
def icnr_(weight: Tensor, scale: int = 2) -> Tensor:
    """ICNR initialisation (Aitken et al. 2017) of a conv weight that feeds ``PixelShuffle(scale)``, in place.

    ``weight`` has shape ``[C * scale**2, C_in, k, k]``. PixelShuffle sends output channel ``c * scale**2 + i`` to
    sub-pixel ``i`` of channel ``c``, so a He-initialised sub-kernel ``[C, C_in, k, k]`` is repeated ``scale**2`` times
    along the output axis: at initialisation conv + shuffle equals conv + nearest upsampling and has no checkerboard
    pattern.
    """
    out_ch, in_ch, kh, kw = weight.shape
    groups = scale * scale
    if out_ch % groups:
        raise ValueError(f"ICNR: {out_ch} output channels is not a multiple of scale**2 = {groups}")
    sub = torch.empty(out_ch // groups, in_ch, kh, kw, dtype=weight.dtype, device=weight.device)
    nn.init.kaiming_normal_(sub, nonlinearity="relu")
    weight.copy_(sub.repeat_interleave(groups, dim=0))
    return weight


class PixelShuffleUpsample(nn.Module):
    """1x1 conv ``C -> 4C`` (ICNR init, zero bias), optional ReLU, then ``PixelShuffle(2)``.

    Shapes: ``[B, C, h, w]`` -> ``[B, C, 2h, 2w]``. The ReLU sits between the conv and the shuffle, as in
    CCT; the two commute.
    """

    def __init__(self, channels: int, relu: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels * 4, kernel_size=1)
        icnr_(self.conv.weight, scale=2)
        # A per-channel random bias would differ between the 4 sub-pixels and reintroduce the checkerboard.
        assert self.conv.bias is not None
        nn.init.zeros_(self.conv.bias)
        self.relu: nn.Module = nn.ReLU(inplace=True) if relu else nn.Identity()
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, h, w]`` -> ``[B, C, 2h, 2w]``."""
        return self.shuffle(self.relu(self.conv(x)))


class UpsampleDecoder(nn.Module):
    """CCT's decoder head: 1x1 conv ``in -> num_classes`` (no bias), then ``log2(upscale)`` upsampling stages.

    Every stage is ``1x1 conv C -> 4C (ICNR) -> ReLU -> PixelShuffle(2)`` except the last one, which has no
    ReLU: the reference CCT decoder (``models/decoders.py``, ``upsample``) ends with a ReLU, so every logit is
    >= 0 and a class can never be pushed below zero; that defect is not reproduced here. Main and auxiliary
    decoders share this architecture.

    Parameters: ``in*C + log2(upscale) * (4C*C + 4C)`` (16,296 for ``in=512, C=21, upscale=8``).

    Shapes: ``[B, in_channels, h, w]`` -> logits ``[B, num_classes, upscale*h, upscale*w]``.
    """

    def __init__(self, in_channels: int, num_classes: int, upscale: int = 8) -> None:
        super().__init__()
        if upscale < 1 or upscale & (upscale - 1):
            raise ValueError(f"upscale must be a power of two (1, 2, 4, 8, ...), got {upscale}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.upscale = upscale
        self.classifier = nn.Conv2d(in_channels, num_classes, kernel_size=1, bias=False)
        nn.init.kaiming_normal_(self.classifier.weight, nonlinearity="relu")
        n_stages = int(math.log2(upscale))
        self.stages = nn.Sequential(
            *(PixelShuffleUpsample(num_classes, relu=i < n_stages - 1) for i in range(n_stages))
        )

    def forward(self, z: Tensor) -> Tensor:
        """``z [B, in_channels, h, w]`` -> logits ``[B, num_classes, upscale*h, upscale*w]``."""
        return self.stages(self.classifier(z))
