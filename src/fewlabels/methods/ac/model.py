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

Two views in one pass: :meth:`ACNet.forward` with ``orderings=(o1, o2)`` runs the unmasked part once, maps its
output into each ordering's canonical view, stacks the views along the batch dimension and runs the ordered
part once (orderings whose views have different shapes -- a transposed and a plain view of a non-square map --
run as separate passes).
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
    channel_types,
    set_masked,
)
from fewlabels.methods.ac.orderings import ORDERINGS, from_canonical, to_canonical

__all__ = ["MASK_FROM", "ACNet"]

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
    ) -> None:
        super().__init__()
        if mask_from not in MASK_FROM:
            raise ValueError(f"mask_from must be one of {', '.join(MASK_FROM)}, got {mask_from!r}")
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
                nn.Conv2d(in_channels, w0, 3, padding=1, bias=False),
                nn.BatchNorm2d(w0),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            )
        encoder = []
        prev = w0
        for w in widths:
            encoder.append(MaskedResidualBlock(prev, w, types(prev, enc_masked), types(w, enc_masked)))
            prev = w
        decoder = [
            MaskedResidualBlock(prev, prev, types(prev, dec_masked), types(prev, dec_masked))
            for _ in range(decoder_blocks)
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

    def _ordered_logits(
        self, features: torch.Tensor, orderings: Sequence[str], stacked: bool
    ) -> dict[str, torch.Tensor]:
        """``[B, C, h, w]`` (or ``[V B, ...]`` when ``stacked``) -> head logits ``[V B, k, h, w]``: the ordered part
        under each of the V orderings (view ``v`` reads chunk ``v`` of a stacked input).

        The 1x1 heads act per position, so they commute with the flips and transposes of the views: they run in
        the canonical layout on the stacked views, and only their k-channel outputs are mapped back (cheaper than
        mapping back the wide feature maps, forward and backward)."""
        chunks = features.chunk(len(orderings)) if stacked else [features] * len(orderings)
        views = [to_canonical(c, o) for c, o in zip(chunks, orderings)]
        if all(v.shape == views[0].shape for v in views):
            stacked_logits = self._head_logits(self.ordered(torch.cat(views)))
            per_view = {name: x.chunk(len(orderings)) for name, x in stacked_logits.items()}
        else:
            outs = [self._head_logits(self.ordered(v)) for v in views]
            per_view = {name: tuple(o[name] for o in outs) for name in outs[0]}
        return {
            name: torch.cat([from_canonical(x, o) for x, o in zip(parts, orderings)])
            for name, parts in per_view.items()
        }

    def forward(
        self, images: torch.Tensor, orderings: Sequence[str] | None = None, stacked_views: bool = False
    ) -> dict[str, torch.Tensor]:
        """Cluster probabilities of every view.

        Args:
            images: ``[B, C_in, H, W]``, or ``[V B, C_in, H, W]`` with ``stacked_views`` (one input per view,
                e.g. differently jittered images; the unmasked part then runs on all of them).
            orderings: V ordering names (see :data:`ORDERINGS`); None = the canonical view only (with masking
                off: the plain CNN). Ignored by ``mask_from='none'``.
            stacked_views: whether ``images`` already holds one chunk per ordering.

        Returns:
            ``{"main": [V B, k, H, W]}`` (+ ``"over": [V B, k_over, H, W]``) softmax probabilities, views
            major (rows ``v B .. (v+1) B - 1`` belong to ordering ``v``).
        """
        features = self.unmasked(images)
        if orderings and self.uses_orderings:
            logits = self._ordered_logits(features, orderings, stacked_views)
        else:
            logits = self._head_logits(self.ordered(features))
        size = images.shape[-2:]
        return {
            name: F.interpolate(x, size=size, mode="bilinear", align_corners=False).softmax(dim=1)
            for name, x in logits.items()
        }

    @torch.no_grad()
    def cluster_probabilities(
        self, images: torch.Tensor, inference: Literal["ensemble", "plain"] = "ensemble", head: str = "main"
    ) -> torch.Tensor:
        """``[B, k, H, W]`` cluster probabilities for evaluation and prediction.

        ``plain``: masking off, one pass (a plain CNN over the trained weights). ``ensemble``: the mean of the
        probabilities under the 8 orderings (every pixel's whole neighbourhood is seen by some ordering).
        Our choice, documented in ``method.py``; the IIC baseline always uses one plain pass.
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
