"""Convolutional encoders for dense prediction: a small CPU-friendly CNN and dilated ResNets.

Every encoder maps ``x [B, in_channels, H, W]`` to ``features [B, out_channels, ceil(H/os), ceil(W/os)]``
where ``os`` is its ``output_stride`` (8, 16 or 32). Lower output strides are obtained as in DeepLab/PSPNet:
the last stages keep stride 1 and dilate their 3x3 convolutions instead, so the receptive field is unchanged
while the resolution is kept.

The ResNets use torchvision's parameter names (``conv1``, ``bn1``, ``layer1``..``layer4``, ``downsample.0/1``) so that
torchvision and timm ImageNet state dicts load directly (see :mod:`fewlabels.models.pretrained`). The "deep base" stem
of PSPNet/CCT (three 3x3 convolutions 3->64 s2, 64->64, 64->128) is stored in timm's deep-stem layout: ``conv1`` is a
``Sequential`` (indices 0, 1, 3, 4, 6 hold conv, BN, conv, BN, conv) and ``bn1`` is the BN after its last convolution.

Encoders are created by name through :func:`build_encoder`; :func:`register_encoder` adds new names.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path

from torch import Tensor, nn

VALID_OUTPUT_STRIDES: tuple[int, ...] = (8, 16, 32)

# (stride, dilation) of the two last stages for each output stride: dilation replaces the dropped stride.
_LAST_STAGES: dict[int, tuple[tuple[int, int], tuple[int, int]]] = {
    8: ((1, 2), (1, 4)),
    16: ((2, 1), (1, 2)),
    32: ((2, 1), (2, 1)),
}


def _check_output_stride(output_stride: int) -> None:
    if output_stride not in _LAST_STAGES:
        valid = ", ".join(str(s) for s in VALID_OUTPUT_STRIDES)
        raise ValueError(f"output_stride must be one of {valid}, got {output_stride!r}")


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=dilation, dilation=dilation, bias=False)


def _init_conv_bn(module: nn.Module) -> None:
    """He (fan-out) init for convolutions, identity BN: the torchvision ResNet initialisation."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class Encoder(nn.Module):
    """Base class of encoders: they record ``out_channels``, ``output_stride`` and their registry ``arch``."""

    out_channels: int
    output_stride: int
    arch: str

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        """``x [B, C_in, H, W]`` -> ``[B, out_channels, ceil(H/os), ceil(W/os)]``."""
        raise NotImplementedError


# ----------------------------------------------------------------------------------------------------
# Small CNN
# ----------------------------------------------------------------------------------------------------


def _conv_bn_relu(in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(_conv3x3(in_ch, out_ch, stride, dilation), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class SmallCNN(Encoder):
    """A five-stage conv-BN-ReLU network (~245k parameters, 96 output channels) for tests and CPU demos.

    Stages: ``stem`` (3x3 conv, stride 2) then ``layer1``..``layer4`` (two 3x3 convs each, the first with
    stride 2 or, for the last two stages at output strides 8/16, with dilation instead).

    Args:
        output_stride: 8, 16 or 32.
        in_channels: channels of the input image.
        widths: channels of the stem and of the four stages; ``widths[-1]`` is ``out_channels``.
    """

    def __init__(
        self,
        output_stride: int = 8,
        in_channels: int = 3,
        widths: tuple[int, int, int, int, int] = (16, 24, 48, 64, 96),
    ) -> None:
        super().__init__()
        _check_output_stride(output_stride)
        self.arch = "small_cnn"
        self.output_stride = output_stride
        self.out_channels = widths[-1]
        (s3, d3), (s4, d4) = _LAST_STAGES[output_stride]
        self.stem = _conv_bn_relu(in_channels, widths[0], stride=2)
        # (stride, dilation of the first conv, dilation of the second): like the ResNets, the first conv of a
        # dilated stage keeps the previous stage's dilation.
        plan = [(2, 1, 1), (2, 1, 1), (s3, 1, d3), (s4, d3, d4)]
        layers = []
        for i, (stride, dil_first, dil) in enumerate(plan):
            layers.append(
                nn.Sequential(
                    _conv_bn_relu(widths[i], widths[i + 1], stride=stride, dilation=dil_first),
                    _conv_bn_relu(widths[i + 1], widths[i + 1], dilation=dil),
                )
            )
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        _init_conv_bn(self)

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, C_in, H, W]`` -> ``[B, out_channels, ceil(H/os), ceil(W/os)]``."""
        x = self.stem(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)


# ----------------------------------------------------------------------------------------------------
# ResNet
# ----------------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34). ``expansion = 1``."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride, dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes, dilation=dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        """``[B, inplanes, H, W]`` -> ``[B, planes, H/stride, W/stride]``."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided/dilated), 1x1 expand, with a residual (ResNet-50/101, stride on the 3x3)."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        """``[B, inplanes, H, W]`` -> ``[B, 4*planes, H/stride, W/stride]``."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(Encoder):
    """A ResNet without its classifier, optionally dilated and with the PSPNet/CCT deep stem.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: number of blocks in ``layer1``..``layer4`` (e.g. ``(3, 4, 6, 3)`` for ResNet-50).
        output_stride: 8 (layer3 dilation 2, layer4 dilation 4), 16 (layer4 dilation 2) or 32 (no dilation).
        deep_stem: three 3x3 convs (3->64 s2, 64->64, 64->128) instead of the 7x7 conv; ``layer1`` then takes
            128 channels, as in PSPNet and CCT.
        in_channels: channels of the input image.
        arch: registry name, used in error messages and weight hints.

    As in torchvision's ``replace_stride_with_dilation``, the first block of a dilated stage keeps the
    previous stage's dilation and the following blocks use the new one.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        output_stride: int = 32,
        deep_stem: bool = False,
        in_channels: int = 3,
        arch: str = "resnet",
    ) -> None:
        super().__init__()
        _check_output_stride(output_stride)
        self.arch = arch
        self.output_stride = output_stride
        self.deep_stem = deep_stem
        if deep_stem:
            self.conv1: nn.Module = nn.Sequential(
                _conv3x3(in_channels, 64, stride=2),
                nn.BatchNorm2d(64),
                nn.ReLU(inplace=True),
                _conv3x3(64, 64),
                nn.BatchNorm2d(64),
                nn.ReLU(inplace=True),
                _conv3x3(64, 128),
            )
            self.inplanes = 128
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            self.inplanes = 64
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.dilation = 1
        (s3, d3), (s4, d4) = _LAST_STAGES[output_stride]
        self.layer1 = self._make_layer(block, 64, layers[0], stride=1, dilation=1)
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2, dilation=1)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=s3, dilation=d3)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=s4, dilation=d4)
        self.out_channels = 512 * block.expansion
        _init_conv_bn(self)

    def _make_layer(
        self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, stride: int, dilation: int
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        previous_dilation, self.dilation = self.dilation, dilation
        modules = [block(self.inplanes, planes, stride, previous_dilation, downsample)]
        self.inplanes = planes * block.expansion
        modules += [block(self.inplanes, planes, dilation=dilation) for _ in range(1, blocks)]
        return nn.Sequential(*modules)

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, C_in, H, W]`` -> ``[B, out_channels, ceil(H/os), ceil(W/os)]``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)


# ----------------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------------

EncoderBuilder = Callable[..., Encoder]
_ENCODERS: dict[str, EncoderBuilder] = {}


def register_encoder(name: str) -> Callable[[EncoderBuilder], EncoderBuilder]:
    """Decorator: register ``builder(output_stride=, deep_stem=, in_channels=) -> Encoder`` as ``name``."""

    def decorator(builder: EncoderBuilder) -> EncoderBuilder:
        if name in _ENCODERS and _ENCODERS[name] is not builder:
            raise ValueError(f"encoder {name!r} registered twice")
        _ENCODERS[name] = builder
        return builder

    return decorator


def available_encoders() -> list[str]:
    """Sorted names accepted by :func:`build_encoder`."""
    return sorted(_ENCODERS)


@register_encoder("small_cnn")
def _small_cnn(output_stride: int = 8, deep_stem: bool = False, in_channels: int = 3) -> Encoder:
    if deep_stem:
        raise ValueError("deep_stem=True is only available for the ResNet encoders, not 'small_cnn'")
    return SmallCNN(output_stride=output_stride, in_channels=in_channels)


def _resnet_builder(
    name: str, block: type[BasicBlock] | type[Bottleneck], layers: tuple[int, int, int, int]
) -> EncoderBuilder:
    def builder(output_stride: int = 8, deep_stem: bool = False, in_channels: int = 3) -> Encoder:
        return ResNet(block, layers, output_stride, deep_stem, in_channels, arch=name)

    builder.__doc__ = f"{name}: {block.__name__} x {layers}"
    return register_encoder(name)(builder)


_resnet_builder("resnet18", BasicBlock, (2, 2, 2, 2))
_resnet_builder("resnet34", BasicBlock, (3, 4, 6, 3))
_resnet_builder("resnet50", Bottleneck, (3, 4, 6, 3))
_resnet_builder("resnet101", Bottleneck, (3, 4, 23, 3))


def unknown_name_message(kind: str, name: str, choices: list[str]) -> str:
    """``"unknown <kind> 'x' (did you mean 'y'?); registered: a, b"``, suggesting only a close name."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {kind} {name!r}{hint}; registered: {', '.join(choices)}"


def build_encoder(
    name: str,
    output_stride: int = 8,
    deep_stem: bool = False,
    pretrained: str | Path | None = None,
    in_channels: int = 3,
) -> Encoder:
    """Create a registered encoder, optionally loading pretrained backbone weights from a local file.

    Args:
        name: one of :func:`available_encoders` (``small_cnn``, ``resnet18``, ``resnet34``, ``resnet50``,
            ``resnet101``).
        output_stride: ratio input size / feature size: 8, 16 or 32.
        deep_stem: PSPNet/CCT "deep base" stem (ResNets only).
        pretrained: path of a torchvision/timm-style state dict (``.pth``/``.pt``/``.safetensors``), see
            :func:`fewlabels.models.pretrained.load_backbone_weights`.
        in_channels: channels of the input image.

    Returns:
        An :class:`Encoder` mapping ``[B, in_channels, H, W]`` to ``[B, out_channels, ceil(H/os), ceil(W/os)]``.

    Raises:
        ValueError: unknown name (with a suggestion), invalid output stride, or deep stem on ``small_cnn``.
    """
    if name not in _ENCODERS:
        raise ValueError(unknown_name_message("encoder", name, available_encoders()))
    _check_output_stride(output_stride)
    encoder = _ENCODERS[name](output_stride=output_stride, deep_stem=deep_stem, in_channels=in_channels)
    if pretrained is not None:
        from fewlabels.models.pretrained import load_backbone_weights

        load_backbone_weights(encoder, pretrained)
    return encoder


def feature_shape(encoder: Encoder, height: int, width: int) -> tuple[int, int, int]:
    """``(out_channels, ceil(height/os), ceil(width/os))``: an input's feature shape, without running it."""
    os_ = encoder.output_stride
    return encoder.out_channels, -(-height // os_), -(-width // os_)
