"""The CCT network: shared encoder, main decoder(s), and K perturbed auxiliary decoders stacked in one module.

The whole training computation lives in :meth:`CCTModel.forward` (``mode="train"``) so that the engine's
DDP-wrapped model sees one forward per step and every gradient is synchronised.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewlabels.methods.cct.config import PerturbationsConfig
from fewlabels.methods.cct.decoders import StackedUpsampleDecoders
from fewlabels.methods.cct.fused import fused_stages_consistency
from fewlabels.methods.cct.losses import batched_consistency_loss, pairwise_variance_loss
from fewlabels.methods.cct.perturbations import (
    CopyPerturbation,
    DecoderGroup,
    MaskPerturbation,
    PerturbationInput,
    decoder_groups,
    fold_runs,
)
from fewlabels.models import SegmentationNet, UpsampleDecoder, reflect_pad_to_multiple

__all__ = ["CCTLossSettings", "CCTModel"]


@dataclass(frozen=True)
class CCTLossSettings:
    """The parts of the loss computed inside the forward (weights are applied by the method)."""

    unsupervised: str = "mse"
    conf_threshold: float | None = None
    pairwise: bool = False
    pairwise_decoders: int = 8
    ignore_index: int = 255


class CCTModel(nn.Module):
    """Encoder ``h`` + main decoder ``g`` (one per domain) + K auxiliary decoders ``g_a^k`` on perturbed
    features.

    Args:
        net: a :class:`~fewlabels.models.SegmentationNet` (normalisation, encoder, optional PSP, decoder); its
            decoder is the main decoder of domain 0 and ``net`` alone is a deployable segmentation model.
        perturbations: counts and parameters of the perturbations (K = ``perturbations.total``); the aux decoders
            are grouped by perturbation type, in the registry's order (see :attr:`perturbation_groups`).
        background_classes: classes that are not objects (G-Cutout, Con-Msk, Obj-Msk).
        losses: which consistency distance, confidence threshold and pair-wise term the forward computes.
        num_domains: main decoders (multi-domain CCT: shared encoder and aux decoders, one main decoder each).
        chunk_elements: on the CPU, the full-resolution aux-logit elements that the fused loss decodes at once
            (sized for the cache); on a GPU all decoders run in one chunk.
    """

    def __init__(
        self,
        net: SegmentationNet,
        perturbations: PerturbationsConfig,
        background_classes: Sequence[int] = (0,),
        losses: CCTLossSettings | None = None,
        num_domains: int = 1,
        chunk_elements: int = 1 << 20,
    ) -> None:
        super().__init__()
        if num_domains < 1:
            raise ValueError(f"num_domains must be >= 1, got {num_domains}")
        self.net = net
        self.perturbations = perturbations
        self.background_classes = tuple(int(c) for c in background_classes)
        self.losses = losses or CCTLossSettings()
        self.num_domains = num_domains
        self.chunk_elements = chunk_elements
        self.num_classes = net.num_classes
        d, c, up = net.feature_channels, net.num_classes, net.output_stride
        self.domain_decoders = nn.ModuleList(UpsampleDecoder(d, c, up) for _ in range(num_domains - 1))
        self.aux = StackedUpsampleDecoders(perturbations.total, d, c, up)
        # The aux decoders of each registered perturbation type, in the registry's order (both paths iterate these).
        self.perturbation_groups: list[DecoderGroup] = decoder_groups(perturbations)
        # Decoder index ranges per perturbation type, by name (empty for a count of 0).
        self.groups: dict[str, slice] = {g.perturbation.name: g.decoders for g in self.perturbation_groups}

    @property
    def encoder(self) -> nn.Module:
        """The backbone (trained at a lower learning rate when pretrained)."""
        return self.net.encoder

    # --- pieces ---------------------------------------------------------------------------------------------
    def main_decode(self, z: Tensor, domains: Tensor | int | None = None) -> Tensor:
        """Main-decoder logits ``[B, C, H, W]`` of features ``z [B, D, h, w]``; ``domains`` picks the decoder:
        ``None`` or an int for the whole batch, or a tensor ``[B]`` of per-sample domain ids.

        With a tensor every main decoder runs on the whole batch and each sample keeps its domain's output: no
        data-dependent indexing, hence no host synchronisation (the main decoders are cheap)."""
        if isinstance(domains, int):
            if not 0 <= domains < self.num_domains:
                raise ValueError(f"domain {domains} out of range: the model has {self.num_domains} domains")
            return self.net.decode(z) if domains == 0 else self.domain_decoders[domains - 1](z)
        logits = self.net.decode(z)
        if self.num_domains == 1 or domains is None:
            return logits
        outs = torch.stack([logits, *(dec(z) for dec in self.domain_decoders)])  # [domains, B, C, H, W]
        return outs[domains.long(), torch.arange(z.shape[0], device=z.device)]

    def perturbation_input(self, z: Tensor, target: Tensor) -> PerturbationInput:
        """What the perturbations of one pass read: ``z [B, D, h, w]``, the main prediction ``target [B, C, H, W]``
        (G-Cutout and the masking perturbations follow its objects), the settings and the aux decoders."""
        chunk = None if z.is_cuda else self.chunk_elements
        return PerturbationInput(z, target, self.perturbations, self.background_classes, self.aux, chunk)

    def perturbed_features(self, z: Tensor, target: Tensor) -> Tensor:
        """The reference path: the K perturbed copies ``[K, B, D, h, w]`` of ``z [B, D, h, w]``, copy k for aux
        decoder k, each type's copies made by its :meth:`~fewlabels.methods.cct.perturbations.Perturbation.copies` in
        the registry's order. ``target [B, C, H, W]`` is the main prediction."""
        inputs = self.perturbation_input(z, target)
        copies = [g.perturbation.copies(inputs, g.count, g.decoders) for g in self.perturbation_groups if g.count]
        return torch.cat(copies, dim=0)

    def classifier_outputs(self, z: Tensor, target: Tensor) -> Tensor:
        """The fused path: ``h_k = W_k p_k(z)``, the first (``D -> C``) layer of every aux decoder on its perturbed
        input, ``[K, B, C, h*w]``; equal to ``W_k @ perturbed_features(z, target)[k]`` for the same random draws.

        The K perturbed copies ``[K, B, D, h, w]`` (8M floats at batch 2, 16x16x512) and their gradient are mostly
        never formed. The first layer is a 1x1 convolution, hence linear and pointwise, so a mask-foldable
        perturbation commutes with it: a mask constant over the channels is applied after the layer (G-Cutout,
        Con-Msk, Obj-Msk and F-Drop: one ``[K C, D] @ [D, B hw]`` product for a run of such types, then a mask on C
        channels) and one constant over the positions moves onto the weights (channel dropout: ``W (z * m_c) = (W *
        m_c) z``). Only the apply-to-copies types (I-VAT, F-Noise) form their copies of ``z``. The types are visited
        in the registry's order (:func:`~fewlabels.methods.cct.perturbations.fold_runs`), as in
        :meth:`perturbed_features`, so the random numbers are drawn in the same order.
        """
        inputs = self.perturbation_input(z, target)
        w = self.aux.classifier  # [K, C, D]
        zf = z.flatten(2)  # [B, D, hw]
        parts: list[Tensor] = []
        for run in fold_runs(self.perturbation_groups):
            first = run[0].perturbation
            decoders = slice(run[0].decoders.start, run[-1].decoders.stop)
            if isinstance(first, MaskPerturbation):
                masks: list[Tensor] = []
                for group in run:
                    perturbation = group.perturbation
                    assert isinstance(perturbation, MaskPerturbation)  # a run holds one kind of mask
                    masks.append(perturbation.folded_mask(inputs, group.count))
                parts.append(first.first_layer(w[decoders], zf, torch.cat(masks)))
            else:
                assert isinstance(first, CopyPerturbation)  # registration admits these two kinds only
                parts.append(first.first_layer(inputs, run[0].count, decoders, w[decoders], zf))
        return torch.cat(parts, dim=0)

    def _check_training_size(self, images: Tensor) -> None:
        os_ = self.net.output_stride
        if images.shape[-2] % os_ or images.shape[-1] % os_:
            raise ValueError(
                f"training images must have H and W multiples of the output stride {os_}, got "
                f"{tuple(images.shape[-2:])}: use a crop size that is a multiple of {os_}"
            )

    # --- forward --------------------------------------------------------------------------------------------
    def forward(
        self,
        images_l: Tensor,
        images_u: Tensor | None = None,
        mode: str = "train",
        pseudo_labels: Tensor | None = None,
        domains_l: Tensor | int | None = None,
        domains_u: Tensor | int | None = None,
    ) -> dict[str, Tensor] | Tensor:
        """Run one of three computations.

        * ``mode="predict"``: ``images_l [B, 3, H, W]`` (any size, reflect-padded to the stride) -> main
          logits ``[B, C, H, W]``.
        * ``mode="train"``: returns a dict with ``logits_l [B_l, C, H, W]`` (main decoder, labeled images)
          and, when ``images_u [B_u, 3, H, W]`` is given, ``loss_u`` = ``1/K sum_k d(softmax(g(z)).detach(),
          g_a^k(p_k(z)))`` (scalar), ``loss_w`` = mean CE of the aux outputs against ``pseudo_labels [B_u, H,
          W]`` (if given) and ``loss_pair`` (the pair-wise variance, if enabled). Only the encoder and the aux
          decoders get gradient from these terms: the main prediction is computed without a graph.
        * ``mode="aux"``: as ``train`` but also returns ``target [B_u, C, H, W]`` (main probabilities) and
          ``aux_logits [K, B_u, C, H, W]`` in image layout (inspection and figures; slower).

        ``domains_l`` / ``domains_u`` choose the main decoder of each image (multi-domain CCT, see
        :meth:`main_decode`); the aux decoders are shared by every domain.
        """
        if mode == "predict":
            height, width = images_l.shape[-2:]
            z = self.net.encode(reflect_pad_to_multiple(images_l, self.net.output_stride))
            return self.main_decode(z, domains_l)[..., :height, :width]
        if mode not in ("train", "aux"):
            raise ValueError(f"unknown mode {mode!r}; valid modes: train, aux, predict")
        self._check_training_size(images_l)
        out: dict[str, Tensor] = {"logits_l": self.main_decode(self.net.encode(images_l), domains_l)}
        if images_u is None:
            return out
        self._check_training_size(images_u)
        # Labeled and unlabeled images go through the encoder separately, as in the reference: BatchNorm
        # statistics are those of each batch.
        z = self.net.encode(images_u)
        with torch.no_grad():
            target = F.softmax(self.main_decode(z, domains_u).float(), dim=1)
        h = self.classifier_outputs(z, target)  # [K, B, C, hw]
        target_sub = self.aux.to_subpixel_layout(target)  # [B, C, S, hw]
        s = self.losses
        if mode == "train" and pseudo_labels is None and not s.pairwise and s.unsupervised in ("mse", "kl"):
            # Only the loss is needed: the stages and the loss run fused, in cache-sized chunks (fused.py).
            chunk = None if h.is_cuda else self.chunk_elements
            out["loss_u"] = fused_stages_consistency(
                h,
                self.aux.stage_weight,
                self.aux.stage_bias,
                target_sub,
                s.unsupervised,
                s.conf_threshold,
                chunk,
            )
            return out
        aux_sub = self.aux.stages_subpixel(h)  # [K, B, C, S, hw]
        out["loss_u"] = batched_consistency_loss(aux_sub.float(), target_sub, s.unsupervised, s.conf_threshold)
        if pseudo_labels is not None:
            k, b, c = aux_sub.shape[:3]
            labels_sub = self.aux.to_subpixel_layout(pseudo_labels.long()).unsqueeze(0).expand(k, -1, -1, -1)
            ce = F.cross_entropy(
                aux_sub.float().reshape(k * b, c, *aux_sub.shape[3:]),
                labels_sub.reshape(k * b, *labels_sub.shape[2:]),
                ignore_index=s.ignore_index,
                reduction="sum",
            )
            # sum / count rather than "mean": an all-ignored batch gives 0, not NaN (and the count stays on
            # device).
            out["loss_w"] = ce / (labels_sub != s.ignore_index).sum().clamp(min=1)
        if s.pairwise:
            out["loss_pair"] = pairwise_variance_loss(aux_sub.float(), s.pairwise_decoders)
        if mode == "aux":
            out["target"] = target
            out["aux_logits"] = self.aux.from_subpixel_layout(aux_sub, z.shape[-2], z.shape[-1])
        return out
