"""Segmentation network (CCT's architecture): normalisation + encoder (+ PSP) + pixel-shuffle decoder."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewlabels.models.backbones import Encoder, build_encoder
from fewlabels.models.heads import PSPModule, UpsampleDecoder

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``module`` (buffers such as BN statistics are not counted)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def reflect_pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Pad ``x [..., H, W]`` at the bottom/right to ``[..., ceil(H/m)*m, ceil(W/m)*m]``.

    Reflection padding (as in CCT's validation) is used when the image is large enough for it; a padding wider
    than the image (tiny inputs at a large stride) falls back to edge replication.
    """
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def _pad_to_multiple_script(x: Tensor, multiple: int) -> Tensor:
    """:func:`reflect_pad_to_multiple` in TorchScript's subset (compiled by :func:`_scripted_pad_to_multiple`)."""
    h, w = x.size(-2), x.size(-1)
    pad_h, pad_w = (multiple - h % multiple) % multiple, (multiple - w % multiple) % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    return F.pad(x, [0, pad_w, 0, pad_h], mode=mode)


@functools.cache
def _scripted_pad_to_multiple() -> Any:
    """The TorchScript function of :func:`_pad_to_multiple_script`, compiled on first use (a trace that calls it
    keeps its branches; compiling at import would cost every command the time and a deprecation warning)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(_pad_to_multiple_script)


def _padded_positions(size: int, multiple: int, reflect: Tensor, device: torch.device) -> Tensor:
    """The source row (column) of every row of a dimension of ``size`` padded to a multiple of ``multiple``: itself,
    then reflected (``reflect``) or the last one repeated; no branch on ``size`` (it may be symbolic)."""
    i = torch.arange((size + multiple - 1) // multiple * multiple, device=device)
    reflected = torch.where(i < size, i, 2 * (size - 1) - i).clamp(min=0)
    return torch.where(reflect, reflected, i.clamp(max=size - 1))


def exportable_pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """:func:`reflect_pad_to_multiple` (the same values) in a form that ``torch.jit.trace`` and ``torch.export``
    record for every input size: the trace calls its TorchScript twin (which keeps the branches), ``torch.export``
    gathers rows and columns by computed indices (no branch on the symbolic size, which it would specialise)."""
    if torch.jit.is_tracing():
        return _scripted_pad_to_multiple()(x, multiple)
    h, w = x.shape[-2], x.shape[-1]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    one = torch.ones((), device=x.device)
    reflect = (one * pad_h < h) & (one * pad_w < w)  # a tensor, never a Python bool of (maybe symbolic) sizes
    rows = _padded_positions(h, multiple, reflect, x.device)
    cols = _padded_positions(w, multiple, reflect, x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


class SegmentationNet(nn.Module):
    """``logits = decoder(psp(encoder((x - mean) / std)))`` at the input resolution.

    Args:
        encoder: an :class:`~fewlabels.models.backbones.Encoder` (``out_channels``, ``output_stride``).
        num_classes: number of output classes ``C``.
        psp_channels: width of the PSP module's output; ``None`` for no PSP (the decoder reads the encoder).
        mean, std: per-channel normalisation of inputs given in ``[0, 1]`` (ImageNet statistics by default).

    Attributes:
        feature_channels: channels of ``z = encode(x)`` (the decoder input, 512 in CCT).
        output_stride: ``H / h`` between the input and ``z``; the decoder upsamples by the same factor.
    """

    def __init__(
        self,
        encoder: Encoder,
        num_classes: int,
        psp_channels: int | None = 512,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if len(mean) != len(std):
            raise ValueError(f"mean and std must have the same length, got {len(mean)} and {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {tuple(std)}")
        self.encoder = encoder
        self.output_stride = encoder.output_stride
        self.num_classes = num_classes
        self.in_channels = len(mean)
        self.psp: nn.Module | None = None
        self.feature_channels = encoder.out_channels
        if psp_channels is not None:
            self.psp = PSPModule(encoder.out_channels, psp_channels)
            self.feature_channels = psp_channels
        self.decoder = UpsampleDecoder(self.feature_channels, num_classes, upscale=encoder.output_stride)
        self.mean: Tensor
        self.std: Tensor
        self.register_buffer("mean", _as_column(mean))
        self.register_buffer("std", _as_column(std))

    def normalize(self, x: Tensor) -> Tensor:
        """``x [B, C_in, H, W]`` in ``[0, 1]`` -> ``(x - mean) / std``, same shape."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected images [B, {self.in_channels}, H, W] with values in [0, 1], got shape {tuple(x.shape)}"
            )
        return (x - self.mean) / self.std

    def encode(self, x: Tensor) -> Tensor:
        """Images ``x [B, C_in, H, W]`` in ``[0, 1]`` -> features ``z [B, feature_channels, h, w]``.

        ``h, w = ceil(H/os), ceil(W/os)``. No padding is applied: use H, W multiples of ``output_stride``
        (training crops), or :meth:`forward` for arbitrary sizes.
        """
        z = self.encoder(self.normalize(x))
        return z if self.psp is None else self.psp(z)

    def decode(self, z: Tensor) -> Tensor:
        """Features ``z [B, feature_channels, h, w]`` -> logits ``[B, num_classes, os*h, os*w]``."""
        return self.decoder(z)

    def forward(self, x: Tensor) -> Tensor:
        """Images ``x [B, C_in, H, W]`` in ``[0, 1]``, any H, W -> logits ``[B, num_classes, H, W]``.

        The input is reflect-padded to a multiple of the output stride and the logits are cropped back.
        """
        h, w = x.shape[-2:]
        logits = self.decode(self.encode(reflect_pad_to_multiple(x, self.output_stride)))
        return logits[..., :h, :w]

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the (usually pretrained) encoder; CCT trains them at a tenth of the learning rate."""
        return self.encoder.parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the newly initialised PSP module and decoder."""
        if self.psp is not None:
            yield from self.psp.parameters()
        yield from self.decoder.parameters()


class ExportableSegmenter(nn.Module):
    """:meth:`SegmentationNet.forward` with another decoder if given (CCT's main decoder of a domain), in a form
    that ``torch.jit.trace`` and ``torch.export`` record for every batch size, height and width (the padding to the
    output stride is :func:`exportable_pad_to_multiple`).

    ``images [N, C, H, W]`` in ``[0, 1]`` (normalised inside) -> logits ``[N, K, H, W]``. Holds ``net`` (and
    ``decoder``), not copies: its state dict names are ``net.*`` (and ``decoder.*``).
    """

    def __init__(self, net: SegmentationNet, decoder: nn.Module | None = None) -> None:
        super().__init__()
        self.net = net
        self.decoder = decoder if decoder is not None and decoder is not net.decoder else None

    def forward(self, images: Tensor) -> Tensor:
        h, w = images.shape[-2], images.shape[-1]
        z = self.net.encode(exportable_pad_to_multiple(images, self.net.output_stride))
        logits = self.net.decode(z) if self.decoder is None else self.decoder(z)
        return logits[..., :h, :w]


def _as_column(values: Sequence[float]) -> Tensor:
    return torch.tensor([float(v) for v in values], dtype=torch.float32).view(1, -1, 1, 1)


def build_segmentation_model(
    encoder: str,
    num_classes: int,
    output_stride: int = 8,
    psp: bool = True,
    psp_channels: int = 512,
    deep_stem: bool = False,
    pretrained: str | Path | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> SegmentationNet:
    """Build a :class:`SegmentationNet` from an encoder name.

    CCT's reference model is ``build_segmentation_model("resnet50", 21, output_stride=8, psp=True, psp_channels=512,
    deep_stem=True, pretrained="3x3resnet50-imagenet.pth")``.

    Args:
        encoder: a name from :func:`fewlabels.models.available_encoders`.
        num_classes: number of output classes.
        output_stride: 8, 16 or 32.
        psp: add the PSP module after the encoder.
        psp_channels: PSP output (= decoder input) channels when ``psp`` is True.
        deep_stem: PSPNet/CCT three-conv stem (ResNets only).
        pretrained: local file of ImageNet backbone weights, or None.
        mean, std: input normalisation; their length fixes the number of input channels.

    Returns:
        A model mapping images ``[B, len(mean), H, W]`` in ``[0, 1]`` to logits ``[B, num_classes, H, W]``.
    """
    enc = build_encoder(encoder, output_stride, deep_stem, pretrained, in_channels=len(mean))
    return SegmentationNet(enc, num_classes, psp_channels if psp else None, mean, std)
