"""Few-shot feature extractors: ResNet-12 (with DropBlock), a conv-4 and a ResNet-18.

Every backbone maps ``x [B, C_in, H, W]`` to ``(spatial [B, out_channels, h, w], pooled [B, out_channels])``
where ``pooled`` is the global average of ``spatial``. The spatial map feeds the spatial contrastive head and
the 2x2 max-pooled evaluation features; the pooled vector feeds the classifier.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BACKBONES: tuple[str, ...] = ("resnet12", "conv4", "resnet18")


def dropblock_gamma(keep_prob: float, block_size: int, feature_size: int) -> float:
    """Seed probability of DropBlock: ``gamma = (1 - keep) / bs^2 * f^2 / (f - bs + 1)^2``.

    Seeds are drawn only where a whole ``bs x bs`` block fits (``(f - bs + 1)^2`` positions), so that about
    ``1 - keep`` of the ``f^2`` activations are dropped.
    """
    valid = feature_size - block_size + 1
    if valid < 1:
        raise ValueError(f"DropBlock block size {block_size} is larger than the feature map ({feature_size})")
    return (1.0 - keep_prob) / block_size**2 * feature_size**2 / valid**2


class DropBlock(nn.Module):
    """Structured dropout (Ghiasi et al. 2018) that drops ``block_size x block_size`` squares of each channel.

    The keep probability ramps linearly from 1 to ``1 - drop_rate`` over ``ramp_steps`` training batches; the
    counter is a buffer so that it is checkpointed and a resumed run continues the same ramp. Identity in eval
    mode.
    """

    batches_seen: Tensor

    def __init__(self, drop_rate: float = 0.1, block_size: int = 5, ramp_steps: int = 40_000) -> None:
        super().__init__()
        self.drop_rate = drop_rate
        self.block_size = block_size
        self.ramp_steps = ramp_steps
        self.register_buffer("batches_seen", torch.zeros((), dtype=torch.long))

    def keep_prob(self) -> float:
        progress = float(self.batches_seen) / max(self.ramp_steps, 1)
        return max(1.0 - self.drop_rate * progress, 1.0 - self.drop_rate)

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, C, H, W]`` -> same shape; in training, blocks are zeroed and the rest rescaled."""
        if not self.training or self.drop_rate <= 0:
            return x
        self.batches_seen += 1
        b, c, h, w = x.shape
        bs = min(self.block_size, h, w)
        gamma = dropblock_gamma(self.keep_prob(), bs, h) if h == w else (1.0 - self.keep_prob()) / bs**2
        # Seeds are sampled on x's own device from torch's global RNG: the reference called `.cuda()` here and
        # could not run on CPU.
        seeds = torch.bernoulli(torch.full((b, c, h - bs + 1, w - bs + 1), gamma, device=x.device, dtype=x.dtype))
        # A seed at (i, j) drops the block [i, i + bs) x [j, j + bs): a max-pool over a zero-padded seed map.
        dropped = F.max_pool2d(F.pad(seeds, (bs - 1, bs - 1, bs - 1, bs - 1)), kernel_size=bs, stride=1)
        mask = 1.0 - dropped
        # Rescale by (total / kept); clamp avoids a division by zero when every activation was dropped.
        return x * mask * (mask.numel() / mask.sum().clamp(min=1.0))


class ResNet12Block(nn.Module):
    """3 x [3x3 conv (no bias) + BN + LeakyReLU(0.1)] + (1x1 conv + BN) shortcut, 2x2 max-pool, then dropout."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        drop_rate: float = 0.0,
        drop_block: bool = False,
        block_size: int = 5,
        ramp_steps: int = 40_000,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv3 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.LeakyReLU(0.1)
        self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch))
        self.pool = nn.MaxPool2d(2)
        self.drop: nn.Module
        if drop_block and drop_rate > 0:
            self.drop = DropBlock(drop_rate, block_size, ramp_steps)
        else:
            self.drop = nn.Dropout(drop_rate)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = self.pool(self.relu(out + self.shortcut(x)))
        return self.drop(out)


class FewShotBackbone(nn.Module, ABC):
    """Base class: ``out_channels`` and ``forward(x) -> (spatial, pooled)``; subclasses define features."""

    out_channels: int

    @abstractmethod
    def features(self, x: Tensor) -> Tensor:
        """``x [B, C_in, H, W]`` -> spatial map ``[B, out_channels, h, w]``."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x [B, C_in, H, W]`` -> ``(spatial [B, C, h, w], pooled [B, C])``."""
        spatial = self.features(x)
        return spatial, spatial.mean(dim=(2, 3))


class ResNet12(FewShotBackbone):
    """ResNet-12 of MetaOptNet/RFS: widths (64, 160, 320, 640), ~12.4M parameters.

    84x84 inputs give a 640x5x5 map, 32x32 inputs 640x2x2. Dropout ``drop_rate`` in blocks 1-2 and DropBlock
    in blocks 3-4 (``block_size`` 5, or 2 for 32x32 inputs).
    """

    def __init__(
        self,
        in_channels: int = 3,
        widths: tuple[int, int, int, int] = (64, 160, 320, 640),
        drop_rate: float = 0.1,
        block_size: int = 5,
        ramp_steps: int = 40_000,
    ) -> None:
        super().__init__()
        chans = (in_channels, *widths)
        self.layers = nn.Sequential(
            *(ResNet12Block(chans[i], chans[i + 1], drop_rate, i >= 2, block_size, ramp_steps) for i in range(4))
        )
        self.out_channels = widths[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")

    def features(self, x: Tensor) -> Tensor:
        return self.layers(x)


class Conv4(FewShotBackbone):
    """4 x [3x3 conv + BN + ReLU + 2x2 max-pool] with ``width`` channels (84x84 -> 64x5x5)."""

    def __init__(self, in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        blocks = []
        for i in range(4):
            blocks += [
                nn.Conv2d(in_channels if i == 0 else width, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
        self.layers = nn.Sequential(*blocks)
        self.out_channels = width

    def features(self, x: Tensor) -> Tensor:
        return self.layers(x)


class ResNet18(FewShotBackbone):
    """The project's ImageNet-style ResNet-18 encoder (output stride 32, torchvision parameter names, so a
    local torchvision/timm state dict loads with :func:`fewlabels.models.pretrained.load_backbone_weights`)."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        from fewlabels.models.backbones import build_encoder

        self.encoder = build_encoder("resnet18", output_stride=32, in_channels=in_channels)
        self.out_channels = self.encoder.out_channels

    def features(self, x: Tensor) -> Tensor:
        return self.encoder(x)


def build_backbone(
    name: str,
    in_channels: int = 3,
    image_size: int = 84,
    drop_rate: float = 0.1,
    block_size: int | None = None,
    ramp_steps: int = 40_000,
) -> FewShotBackbone:
    """Create a backbone by name (``resnet12``, ``conv4``, ``resnet18``).

    ``block_size`` None picks the reference DropBlock size: 5, or 2 for inputs of 32x32 or smaller.
    """
    if name == "resnet12":
        size = block_size if block_size is not None else (2 if image_size <= 32 else 5)
        return ResNet12(in_channels, drop_rate=drop_rate, block_size=size, ramp_steps=ramp_steps)
    if name == "conv4":
        return Conv4(in_channels)
    if name == "resnet18":
        return ResNet18(in_channels)
    raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
