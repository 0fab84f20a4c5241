"""The AC segmentation network: an unmasked part, an ordered (masked) part, cluster heads.

Variants (paper ablation F1-F4; the split below is our reading of it):

=============  ==============================  ==========================================================
``mask_from``  run once per image (unmasked)   run per ordering (masked, in the ordering's canonical view)
=============  ==============================  ==========================================================
``input``      --                              masked stem conv, encoder blocks, decoder blocks (full res)
``features``   stem (conv+BN+ReLU+max-pool)    encoder blocks, decoder blocks (default, F2)
``decoder``    stem, encoder blocks            decoder blocks (F3)
``none``       everything                      -- (F4: the IIC baseline, views from augmentations)
=============  ==============================  ==========================================================

The optional causal self-attention block closes the ordered part. Heads: 1x1 conv to ``k`` clusters (and
``k_over`` for the over-clustering head), bilinear upsampling to the input size, softmax over clusters.

Orderings: one set of weights; every masked layer applies, to each view, the mask of that view's ordering
(``masked_conv``). Two views in one pass: :meth:`ACNet.forward` with ``orderings=(o1, o2)`` runs the unmasked part
once, stacks its output twice along the batch and runs the ordered part once, each masked layer masking chunk ``v``
with ordering ``o_v``'s mask. Inference (:meth:`ACNet.cluster_probabilities`): the masks removed, one pass of the
plain network (default, the thesis' "remove masking & proceed as in standard image segmentation"), or the mean over
the 8 masked views.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fewlabels.methods.ac.masked_conv import (
    CausalSelfAttention,
    MaskedConv2d,
    MaskedResidualBlock,
    ViewOrdering,
    channel_types,
    set_masked,
    set_view_orderings,
)
from fewlabels.methods.ac.orderings import ORDERINGS, ordering_index

__all__ = ["MASK_FROM", "RANDOM_ORDERING", "ACNet", "SobelInput"]

#: Ordering name of a view in a random (non-raster) ordering: a random permutation of the ordered part's positions.
RANDOM_ORDERING = "random"


class SobelInput(nn.Module):
    """IIC's Sobel input (``sobel_process``): the grey image's horizontal and vertical Sobel responses replace (or,
    with ``keep``, follow) the RGB channels; channels after the first three (Potsdam's IR) are kept.

    ``grey = 0.299 R + 0.587 G + 0.114 B`` (PIL's greyscale, as IIC), ``dx = grey * [[1, 0, -1], [2, 0, -2], [1, 0,
    -1]]``, ``dy = grey * [[1, 2, 1], [0, 0, 0], [-1, -2, -1]]`` (cross-correlation, zero padding). Shapes ``[B, C, H,
    W] -> [B, C + 2, H, W]`` with ``keep`` (``[RGB, dx, dy, rest]``), else ``[B, C - 1, H, W]`` (``[dx, dy, rest]``).
    Fixed (no parameters)."""

    kernels: torch.Tensor
    luma: torch.Tensor

    def __init__(self, keep: bool = False) -> None:
        super().__init__()
        self.keep = keep
        dx = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
        self.register_buffer("kernels", torch.stack([dx, dx.T]).unsqueeze(1), persistent=False)  # [2, 1, 3, 3]
        self.register_buffer("luma", torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1), persistent=False)

    @staticmethod
    def out_channels(in_channels: int, keep: bool) -> int:
        if in_channels < 3:
            raise ValueError(f"Sobel input needs RGB channels first, got {in_channels} channels")
        return in_channels + 2 if keep else in_channels - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grey = (x[:, :3] * self.luma.to(x.dtype)).sum(1, keepdim=True)
        edges = F.conv2d(grey, self.kernels.to(x.dtype), padding=1)
        parts = [x[:, :3], edges, x[:, 3:]] if self.keep else [edges, x[:, 3:]]
        return torch.cat(parts, dim=1)


MaskFrom = Literal["input", "features", "decoder", "none"]
MASK_FROM: tuple[str, ...] = ("input", "features", "decoder", "none")


class ACNet(nn.Module):
    """Per-pixel cluster distributions ``[B, k, H, W]`` for images ``[B, C_in, H, W]``.

    Args:
        in_channels: image channels (3 RGB, 4 for Potsdam RGB+IR).
        widths: widths of the encoder residual blocks; the stem has ``widths[0]`` channels.
        decoder_blocks: residual blocks at ``widths[-1]`` after the encoder.
        mask_from: which part is ordered (table in the module docstring).
        k: clusters of the main head; ``k_over``: clusters of the over-clustering head (0 = none).
        attention: append a causal self-attention block (``attention_heads`` heads) to the ordered part.
        vertical_fraction: share of V channels in masked layers (see ``masked_conv``).
    """

    def __init__(
        self,
        in_channels: int = 3,
        widths: Sequence[int] = (32, 64),
        decoder_blocks: int = 1,
        mask_from: MaskFrom = "features",
        k: int = 3,
        k_over: int = 0,
        attention: bool = False,
        attention_heads: int = 4,
        vertical_fraction: float = 0.5,
        sobel: bool = False,
        sobel_keep: bool = False,
    ) -> None:
        super().__init__()
        if mask_from not in MASK_FROM:
            raise ValueError(f"mask_from must be one of {', '.join(MASK_FROM)}, got {mask_from!r}")
        if sobel and mask_from == "input":
            raise ValueError("Sobel input mixes each pixel's neighbours (later ones too): not with mask_from='input'")
        sobel_layer = SobelInput(sobel_keep) if sobel else None
        if sobel:
            in_channels = SobelInput.out_channels(in_channels, sobel_keep)
        if not widths:
            raise ValueError("widths must name at least one encoder block width")
        self.mask_from = mask_from
        self.k, self.k_over = k, k_over

        def types(c: int, masked: bool) -> torch.Tensor | None:
            return channel_types(c, vertical_fraction) if masked else None

        enc_masked = mask_from in ("input", "features")
        dec_masked = mask_from != "none"
        w0 = widths[0]
        if mask_from == "input":
            # F1: causal from the first layer, so no pooling (a 2x2 max-pool would mix later pixels in).
            raw = torch.zeros(in_channels, dtype=torch.bool)  # image pixels see themselves: H-typed
            stem: nn.Module = nn.Sequential(
                MaskedConv2d(in_channels, w0, 3, raw, channel_types(w0, vertical_fraction), bias=False),
                nn.BatchNorm2d(w0),
                nn.ReLU(inplace=True),
            )
        else:
            stem = nn.Sequential(
                *([sobel_layer] if sobel_layer is not None else []),
                nn.Conv2d(in_channels, w0, 3, padding=1, bias=False),
                nn.BatchNorm2d(w0),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            )
        # The output of an unmasked part holds, at each position, that position's own content (and its
        # neighbours'): H-typed. Typing half of it V (rows above only) would let the first masked block read later
        # columns of the current row through V -> * taps with dy = 0.
        first_masked = {"input": None, "features": 0, "decoder": len(widths), "none": None}[mask_from]

        def in_types(c: int, masked: bool, index: int) -> torch.Tensor | None:
            if masked and index == first_masked:
                return torch.zeros(c, dtype=torch.bool)
            return types(c, masked)

        encoder = []
        prev = w0
        for i, w in enumerate(widths):
            encoder.append(MaskedResidualBlock(prev, w, in_types(prev, enc_masked, i), types(w, enc_masked)))
            prev = w
        decoder = [
            MaskedResidualBlock(prev, prev, in_types(prev, dec_masked, len(widths) + j), types(prev, dec_masked))
            for j in range(decoder_blocks)
        ]
        tail = [CausalSelfAttention(prev, attention_heads)] if attention else []
        layers: list[nn.Module] = [stem, *encoder, *decoder, *tail]
        n_unmasked = {"input": 0, "features": 1, "decoder": 1 + len(encoder), "none": len(layers)}[mask_from]
        self.unmasked = nn.Sequential(*layers[:n_unmasked])
        self.ordered = nn.Sequential(*layers[n_unmasked:])
        self.head = nn.Conv2d(prev, k, 1)
        self.head_over = nn.Conv2d(prev, k_over, 1) if k_over > 0 else None
        self._masked = mask_from != "none"
        set_masked(self, self._masked)

    # -- masking -------------------------------------------------------------------------------------------
    @property
    def masked(self) -> bool:
        """Whether masked layers apply their masks (False: the same weights as a plain CNN)."""
        return self._masked

    @masked.setter
    def masked(self, value: bool) -> None:
        self._masked = bool(value)
        set_masked(self, self._masked)

    @property
    def uses_orderings(self) -> bool:
        return self.mask_from != "none"

    # -- forward -------------------------------------------------------------------------------------------
    def _head_logits(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """The 1x1 cluster heads at feature resolution: ``{"main": [N, k, h, w]}`` (+ ``"over"``)."""
        out = {"main": self.head(features)}
        if self.head_over is not None:
            out["over"] = self.head_over(features)
        return out

    def ordered_logits(
        self,
        features: torch.Tensor,
        orderings: Sequence[str] | None = None,
        generator: torch.Generator | None = None,
        dropout: float = 0.0,
    ) -> dict[str, torch.Tensor]:
        """Head logits at feature resolution: the ordered part and the 1x1 heads on ``features``.

        Args:
            features: ``[V B, C, h, w]``, the output of the unmasked part for V views stacked along the batch
                (views major).
            orderings: the V views' orderings: names in :data:`ORDERINGS`, or :data:`RANDOM_ORDERING` (a random
                permutation of the ``h x w`` positions drawn from ``generator``); None: the canonical ``tl_row`` view
                when masked.
            dropout: element dropout rate on the ordered part's input and on the heads' input (dropout views).

        Returns ``{"main": [V B, k, h, w]}`` (+ ``"over"``).
        """
        views: list[ViewOrdering] = []
        for o in orderings or ("tl_row",):
            if o == RANDOM_ORDERING:
                h, w = features.shape[-2:]
                views.append(torch.randperm(h * w, generator=generator).to(features.device))
            else:
                views.append(ordering_index(o))
        set_view_orderings(self.ordered, tuple(views))
        if dropout > 0:
            features = F.dropout(features, dropout, training=True)
        out = self.ordered(features)
        if dropout > 0:
            out = F.dropout(out, dropout, training=True)
        return self._head_logits(out)

    def forward(
        self,
        images: torch.Tensor,
        orderings: Sequence[str] | None = None,
        stacked_views: bool = False,
        generator: torch.Generator | None = None,
        dropout: float = 0.0,
    ) -> dict[str, torch.Tensor]:
        """Cluster probabilities of every view.

        Args:
            images: ``[B, C_in, H, W]``, or ``[V B, C_in, H, W]`` with ``stacked_views`` (one input per view,
                e.g. differently jittered images; the unmasked part then runs on all of them).
            orderings: V ordering names (see :data:`ORDERINGS`, or :data:`RANDOM_ORDERING`); None = the canonical
                view only (with masking off: the plain CNN). Ignored by ``mask_from='none'``.
            stacked_views: whether ``images`` already holds one chunk per ordering.
            generator: draws the random orderings.
            dropout: dropout rate of dropout views (see :meth:`ordered_logits`; 0 = none).

        Returns:
            ``{"main": [V B, k, H, W]}`` (+ ``"over": [V B, k_over, H, W]``) softmax probabilities, views
            major (rows ``v B .. (v+1) B - 1`` belong to ordering ``v``).
        """
        features = self.unmasked(images)
        if orderings and self.uses_orderings:
            if not stacked_views and len(orderings) > 1:
                features = torch.cat([features] * len(orderings))
            logits = self.ordered_logits(features, orderings, generator, dropout)
        else:
            logits = self.ordered_logits(features, dropout=dropout)
        size = images.shape[-2:]
        return {
            name: F.interpolate(x, size=size, mode="bilinear", align_corners=False).softmax(dim=1)
            for name, x in logits.items()
        }

    @torch.no_grad()
    def cluster_probabilities(
        self, images: torch.Tensor, inference: Literal["ensemble", "plain"] = "plain", head: str = "main"
    ) -> torch.Tensor:
        """``[B, k, H, W]`` cluster probabilities for evaluation and prediction.

        ``plain`` (default; the thesis' inference): the masks removed, one pass of the network as a standard
        segmentation model over the shared weights. ``ensemble``: the mean of the probabilities of the 8 masked views
        (an option, reported separately). The IIC baseline (no masks) always runs one plain pass.
        """
        if inference == "plain" or not self.uses_orderings:
            was = self.masked
            self.masked = False
            try:
                return self(images)[head]
            finally:
                self.masked = was
        probs = self(images, orderings=ORDERINGS)[head]
        return probs.view(len(ORDERINGS), images.shape[0], *probs.shape[1:]).mean(dim=0)
