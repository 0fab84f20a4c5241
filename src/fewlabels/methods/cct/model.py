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
from fewlabels.methods.cct.fused import CPU_CHUNK_ELEMENTS, fused_stages_consistency
from fewlabels.methods.cct.losses import batched_consistency_loss, masked_mean_ce, pairwise_variance_loss
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
    #: which decoders the pseudo-labels (weak labels) train: the K aux decoders ("aux") or the main one ("main")
    weak_target: str = "aux"


#: How a forward groups its images by domain: ``None`` (all domain 0), an ``int`` (all that domain), a tensor
#: ``[B]`` of per-image domain ids (main decoders of one label space only), or a sequence of per-domain image
#: counts ``[n_0, n_1, ...]``: the batch holds domain 0's ``n_0`` images, then domain 1's, and so on.
Domains = Tensor | int | Sequence[int] | None


class CCTModel(nn.Module):
    """Encoder ``h`` + main decoder ``g`` (one per domain) + K auxiliary decoders ``g_a^k`` on perturbed
    features (one stack of K per domain).

    Args:
        net: a :class:`~fewlabels.models.SegmentationNet` (normalisation, encoder, optional PSP, decoder); its
            decoder is the main decoder of domain 0 and ``net`` alone is a deployable segmentation model.
        perturbations: counts and parameters of the perturbations (K = ``perturbations.total``); the aux decoders
            are grouped by perturbation type, in the registry's order (see :attr:`perturbation_groups`). Its
            ``mask_source`` chooses the prediction whose objects G-Cutout and the masking perturbations follow (see
            :meth:`aux_guide`).
        background_classes: classes that are not objects (G-Cutout, Con-Msk, Obj-Msk).
        losses: which consistency distance, confidence threshold and pair-wise term the forward computes.
        num_domains: domains (multi-domain CCT, as in the paper: a shared encoder, and per domain a main decoder
            and K aux decoders over its own label space).
        chunk_elements: on the CPU, the full-resolution aux-logit elements that the fused loss decodes at once
            (sized for the cache); on a GPU all decoders run in one chunk.
        fused_workers: on the CPU, the threads that decode groups of the aux decoders concurrently in the fused
            loss (default: ``torch.get_num_threads()`` at each step; 1 decodes them all in the calling thread).
        domain_classes: classes of each domain (default: ``net.num_classes`` for every domain; the first must be
            ``net.num_classes``): domains may have different label spaces.
        domain_backgrounds: background classes of each domain (default: ``background_classes`` for every domain).
        main_decoder_of: the domain whose main decoder predicts each domain (default: its own). A label-free
            domain (UDA target) has none of its own: it is predicted by a labeled domain with the same classes
            (its entry in :attr:`domain_decoders` is an empty ``nn.Identity``), and it keeps its own aux decoders.
    """

    def __init__(
        self,
        net: SegmentationNet,
        perturbations: PerturbationsConfig,
        background_classes: Sequence[int] = (0,),
        losses: CCTLossSettings | None = None,
        num_domains: int = 1,
        chunk_elements: int = CPU_CHUNK_ELEMENTS,
        domain_classes: Sequence[int] | None = None,
        domain_backgrounds: Sequence[Sequence[int]] | None = None,
        main_decoder_of: Sequence[int] | None = None,
        fused_workers: int | None = None,
    ) -> None:
        super().__init__()
        if num_domains < 1:
            raise ValueError(f"num_domains must be >= 1, got {num_domains}")
        if perturbations.mask_source not in ("main", "aux"):
            raise ValueError(f"perturbations.mask_source must be 'main' or 'aux', got {perturbations.mask_source!r}")
        self.net = net
        self.perturbations = perturbations
        self.background_classes = tuple(int(c) for c in background_classes)
        self.losses = losses or CCTLossSettings()
        self.num_domains = num_domains
        self.chunk_elements = chunk_elements
        self.fused_workers = fused_workers
        self.num_classes = net.num_classes
        d, c, up = net.feature_channels, net.num_classes, net.output_stride
        classes = [int(n) for n in domain_classes] if domain_classes is not None else [c] * num_domains
        owner = [int(o) for o in main_decoder_of] if main_decoder_of is not None else list(range(num_domains))
        backgrounds = (
            [tuple(int(x) for x in b) for b in domain_backgrounds]
            if domain_backgrounds is not None
            else [self.background_classes] * num_domains
        )
        if not len(classes) == len(owner) == len(backgrounds) == num_domains:
            raise ValueError(
                f"give the classes, main decoder and background classes of each of the {num_domains} domains"
            )
        if classes[0] != c or owner[0] != 0:
            raise ValueError(f"domain 0 is predicted by net's decoder ({c} classes), got {classes[0]} classes")
        for i, o in enumerate(owner):
            if o != i and (not 0 <= o < num_domains or owner[o] != o or classes[o] != classes[i]):
                raise ValueError(
                    f"domain {i} is predicted by domain {o}'s main decoder: that needs a domain with its own main "
                    f"decoder and the same classes ({classes[i]})"
                )
        self.domain_classes = classes
        self.domain_backgrounds = backgrounds
        self.main_decoder_of = owner
        self.domain_decoders = nn.ModuleList(
            UpsampleDecoder(d, classes[i], up) if owner[i] == i else nn.Identity() for i in range(1, num_domains)
        )
        self.aux = StackedUpsampleDecoders(perturbations.total, d, c, up)
        # Per-domain aux decoders over each domain's label space (domain 0's are `aux`).
        self.domain_aux = nn.ModuleList(
            StackedUpsampleDecoders(perturbations.total, d, classes[i], up) for i in range(1, num_domains)
        )
        # The aux decoders of each registered perturbation type, in the registry's order (both paths iterate these).
        self.perturbation_groups: list[DecoderGroup] = decoder_groups(perturbations)
        # Decoder index ranges per perturbation type, by name (empty for a count of 0).
        self.groups: dict[str, slice] = {g.perturbation.name: g.decoders for g in self.perturbation_groups}

    @property
    def encoder(self) -> nn.Module:
        """The backbone (trained at a lower learning rate when pretrained)."""
        return self.net.encoder

    # --- pieces ---------------------------------------------------------------------------------------------
    def _check_domain(self, domain: int) -> None:
        if not 0 <= domain < self.num_domains:
            raise ValueError(f"domain {domain} out of range: the model has {self.num_domains} domains")

    def aux_of(self, domain: int = 0) -> StackedUpsampleDecoders:
        """The K aux decoders of ``domain``."""
        self._check_domain(domain)
        aux = self.aux if domain == 0 else self.domain_aux[domain - 1]
        assert isinstance(aux, StackedUpsampleDecoders)
        return aux

    def decoder_of(self, domain: int = 0) -> nn.Module:
        """The main decoder that predicts ``domain`` (its own, or for a label-free domain the one it shares)."""
        self._check_domain(domain)
        owner = self.main_decoder_of[domain]
        return self.net.decoder if owner == 0 else self.domain_decoders[owner - 1]

    def main_decode(self, z: Tensor, domains: Tensor | int | None = None) -> Tensor:
        """Main-decoder logits ``[B, C, H, W]`` of features ``z [B, D, h, w]``; ``domains`` picks the decoder:
        ``None`` or an int for the whole batch, or a tensor ``[B]`` of per-sample domain ids (domains of one
        label space only).

        With a tensor every main decoder runs on the whole batch and each sample keeps its domain's output: no
        data-dependent indexing, hence no host synchronisation (the main decoders are cheap)."""
        if isinstance(domains, int):
            self._check_domain(domains)
            owner = self.main_decoder_of[domains]
            return self.net.decode(z) if owner == 0 else self.domain_decoders[owner - 1](z)
        logits = self.net.decode(z)
        if self.num_domains == 1 or domains is None:
            return logits
        if len(set(self.domain_classes)) > 1:
            raise ValueError(
                f"the domains have different classes ({self.domain_classes}): decode each domain's images with an "
                "int domain, or pass per-domain image counts to forward"
            )
        decoded = [logits] + [
            logits if self.main_decoder_of[i] == 0 else self.domain_decoders[self.main_decoder_of[i] - 1](z)
            for i in range(1, self.num_domains)
        ]
        outs = torch.stack(decoded)  # [domains, B, C, H, W]
        return outs[domains.long(), torch.arange(z.shape[0], device=z.device)]

    @property
    def guided_by_aux(self) -> bool:
        """Whether the perturbations that follow the objects follow the aux decoders' prediction (:meth:`aux_guide`):
        ``mask_source="aux"`` and at least one such type has decoders."""
        return self.perturbations.mask_source == "aux" and any(
            g.count and g.perturbation.follows_objects for g in self.perturbation_groups
        )

    @torch.no_grad()
    def aux_guide(self, z: Tensor, domain: int = 0) -> Tensor:
        """The mean of the predictions of the K aux decoders of ``domain`` on the unperturbed features ``z [B, D, h,
        w]``, ``1/K sum_k softmax(g_a^k(z))``, at the pixels that the object masks read: probabilities ``[B, C, h, w]``
        in float32, without gradient.

        With ``perturbations.mask_source="aux"`` G-Cutout and the masking perturbations follow its objects instead of
        the main prediction's. A mask is the prediction's argmax nearest-resized from ``H x W`` to the feature size
        ``h x w``, which reads pixel ``(r y, r x)`` of every ``r x r`` block (``r`` = the upscale): the pixel that
        every pixel-shuffle stage places at its sub-pixel 0 (:meth:`StackedUpsampleDecoders.stages_first_subpixel`).
        So only that pixel is decoded, at the feature resolution: the result equals the full-resolution mean
        prediction at those pixels (``foreground_mask`` gives the same masks), for about the cost of the decoders'
        first layer.
        """
        aux = self.aux_of(domain)
        b, _, h, w = z.shape
        first = torch.einsum("kcd,bdp->kbcp", aux.classifier, z.flatten(2))  # [K, B, C, hw]
        probs = F.softmax(aux.stages_first_subpixel(first).float(), dim=2).mean(dim=0)  # [B, C, hw]
        return probs.view(b, -1, h, w)

    def perturbation_input(self, z: Tensor, target: Tensor, domain: int = 0) -> PerturbationInput:
        """What the perturbations of one pass read: ``z [B, D, h, w]``, the main prediction ``target [B, C, H, W]``
        (the consistency target; G-Cutout and the masking perturbations follow its objects unless
        ``mask_source="aux"``, then those of :meth:`aux_guide`), the settings and the aux decoders of ``domain`` (and
        its background classes). Both paths read it, so they mask the same objects."""
        chunk = None if z.is_cuda else self.chunk_elements
        guide = self.aux_guide(z, domain) if self.guided_by_aux else None
        return PerturbationInput(
            z, target, self.perturbations, self.domain_backgrounds[domain], self.aux_of(domain), chunk, guide
        )

    def perturbed_features(self, z: Tensor, target: Tensor, domain: int = 0) -> Tensor:
        """The reference path: the K perturbed copies ``[K, B, D, h, w]`` of ``z [B, D, h, w]``, copy k for aux
        decoder k, each type's copies made by its :meth:`~fewlabels.methods.cct.perturbations.Perturbation.copies` in
        the registry's order. ``target [B, C, H, W]`` is the main prediction."""
        inputs = self.perturbation_input(z, target, domain)
        copies = [g.perturbation.copies(inputs, g.count, g.decoders) for g in self.perturbation_groups if g.count]
        return torch.cat(copies, dim=0)

    def classifier_outputs(self, z: Tensor, target: Tensor, domain: int = 0) -> Tensor:
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
        inputs = self.perturbation_input(z, target, domain)
        w = self.aux_of(domain).classifier  # [K, C, D]
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
    @staticmethod
    def _domain_counts(domains: Domains, batch: int, what: str) -> list[int] | None:
        """Per-domain image counts when ``domains`` is a sequence of them (checked against the batch), else None."""
        if domains is None or isinstance(domains, (int, Tensor)):
            return None
        counts = [int(n) for n in domains]
        if sum(counts) != batch or any(n < 0 for n in counts):
            raise ValueError(f"{what}: per-domain image counts {counts} do not add up to the batch of {batch}")
        return counts

    @staticmethod
    def _one_domain(domains: Domains) -> Tensor | int | None:
        """``domains`` when it is not a sequence of per-domain counts."""
        if domains is None or isinstance(domains, (int, Tensor)):
            return domains
        raise TypeError("expected a domain id or per-image domain ids here, got per-domain counts")

    def forward(
        self,
        images_l: Tensor,
        images_u: Tensor | None = None,
        mode: str = "train",
        pseudo_labels: Tensor | None = None,
        domains_l: Domains = None,
        domains_u: Domains = None,
    ) -> dict[str, Tensor] | Tensor:
        """Run one of three computations.

        * ``mode="predict"``: ``images_l [B, 3, H, W]`` (any size, reflect-padded to the stride) -> main
          logits ``[B, C, H, W]``.
        * ``mode="train"``: returns a dict with ``logits_l [B_l, C, H, W]`` (main decoder, labeled images)
          and, when ``images_u [B_u, 3, H, W]`` is given, ``loss_u`` = ``1/K sum_k d(softmax(g(z)).detach(),
          g_a^k(p_k(z)))`` (scalar), ``loss_w`` = mean CE of the aux outputs against ``pseudo_labels [B_u, H,
          W]`` (if given) and ``loss_pair`` (the pair-wise variance, if enabled). Only the encoder and the aux
          decoders get gradient from these terms: the main prediction is computed without a graph. With
          ``losses.weak_target == "main"``, ``loss_w`` is instead the CE of the main decoder's unlabeled logits
          against the pseudo-labels (that prediction then has a graph; the consistency target stays detached).
        * ``mode="aux"``: as ``train`` but also returns ``target [B_u, C, H, W]`` (main probabilities) and
          ``aux_logits [K, B_u, C, H, W]`` in image layout (inspection and figures; slower).

        ``domains_l`` / ``domains_u`` choose the domain of each image (multi-domain CCT, see :data:`Domains`).
        With per-domain counts (``[n_0, n_1, ...]``, what the method passes) the labeled logits come per domain,
        ``logits_l_d<d> [n_d, C_d, H, W]`` for each domain with images (the domains may have different classes),
        and each domain's unlabeled images go through its own main decoder (the target) and its own K aux
        decoders; ``loss_u`` (and ``loss_pair``) is the image-weighted mean of the domains' terms, which equals the
        one-domain value when the domains share their classes. In ``aux`` mode the inspection outputs are
        ``target_d<d>`` / ``aux_logits_d<d>``.
        """
        if mode == "predict":
            height, width = images_l.shape[-2:]
            z = self.net.encode(reflect_pad_to_multiple(images_l, self.net.output_stride))
            if self._domain_counts(domains_l, z.shape[0], "domains_l") is not None:
                raise ValueError("predict takes one domain (an int) or per-image domain ids, not per-domain counts")
            return self.main_decode(z, self._one_domain(domains_l))[..., :height, :width]
        if mode not in ("train", "aux"):
            raise ValueError(f"unknown mode {mode!r}; valid modes: train, aux, predict")
        self._check_training_size(images_l)
        out: dict[str, Tensor] = {}
        z_l = self.net.encode(images_l)
        counts_l = self._domain_counts(domains_l, z_l.shape[0], "domains_l")
        if counts_l is None:
            out["logits_l"] = self.main_decode(z_l, self._one_domain(domains_l))
        else:
            for d, part in enumerate(z_l.split(counts_l)):
                if counts_l[d]:
                    out[f"logits_l_d{d}"] = self.main_decode(part, d)
        if images_u is None:
            return out
        self._check_training_size(images_u)
        # Labeled and unlabeled images go through the encoder separately, as in the reference: BatchNorm
        # statistics are those of each batch.
        z = self.net.encode(images_u)
        counts_u = self._domain_counts(domains_u, z.shape[0], "domains_u")
        if counts_u is None:
            if isinstance(domains_u, Tensor):
                raise TypeError(
                    "domains_u: each domain's unlabeled images use their own aux decoders; pass per-domain image "
                    "counts (images grouped by domain) or one int domain, not per-image ids"
                )
            domain = domains_u if isinstance(domains_u, int) else 0
            out.update(self._unlabeled_terms(z, domain, mode, pseudo_labels))
            return out
        if pseudo_labels is not None:
            raise ValueError("weak labels (pseudo_labels) are for single-domain runs")
        total = sum(counts_u)
        present = [(d, part) for d, part in enumerate(z.split(counts_u)) if counts_u[d]]
        for d, part in present:
            terms = self._unlabeled_terms(part, d, mode, None)
            for key, value in terms.items():
                if key in ("loss_u", "loss_pair"):
                    weighted = value * (counts_u[d] / total)
                    out[key] = weighted if key not in out else out[key] + weighted
                else:
                    out[f"{key}_d{d}"] = value
        return out

    def _unlabeled_terms(self, z: Tensor, domain: int, mode: str, pseudo_labels: Tensor | None) -> dict[str, Tensor]:
        """``loss_u`` (and ``loss_w``, ``loss_pair``, the ``aux`` mode outputs) of unlabeled features ``z`` of one
        domain, through that domain's main decoder (the detached target) and its K aux decoders; ``loss_w`` trains
        the aux decoders or the main one (``losses.weak_target``)."""
        out: dict[str, Tensor] = {}
        aux = self.aux_of(domain)
        s = self.losses
        # the pseudo-labels the aux decoders train on: none when they are extra masks of the main decoder
        aux_labels = pseudo_labels if s.weak_target == "aux" else None
        if pseudo_labels is not None and aux_labels is None:
            logits = self.main_decode(z, domain).float()
            out["loss_w"] = masked_mean_ce(logits, pseudo_labels.long(), s.ignore_index)
            target = F.softmax(logits.detach(), dim=1)
        else:
            with torch.no_grad():
                target = F.softmax(self.main_decode(z, domain).float(), dim=1)
        h = self.classifier_outputs(z, target, domain)  # [K, B, C, hw]
        target_sub = aux.to_subpixel_layout(target)  # [B, C, S, hw]
        if mode == "train" and aux_labels is None and not s.pairwise and s.unsupervised in ("mse", "kl"):
            # Only the loss is needed: the stages and the loss run fused, in cache-sized chunks (fused.py).
            chunk = None if h.is_cuda else self.chunk_elements
            out["loss_u"] = fused_stages_consistency(
                h,
                aux.stage_weight,
                aux.stage_bias,
                target_sub,
                s.unsupervised,
                s.conf_threshold,
                chunk,
                self.fused_workers,
            )
            return out
        aux_sub = aux.stages_subpixel(h)  # [K, B, C, S, hw]
        out["loss_u"] = batched_consistency_loss(aux_sub.float(), target_sub, s.unsupervised, s.conf_threshold)
        if aux_labels is not None:
            k, b, c = aux_sub.shape[:3]
            labels_sub = aux.to_subpixel_layout(aux_labels.long()).unsqueeze(0).expand(k, -1, -1, -1)
            out["loss_w"] = masked_mean_ce(
                aux_sub.float().reshape(k * b, c, *aux_sub.shape[3:]),
                labels_sub.reshape(k * b, *labels_sub.shape[2:]),
                s.ignore_index,
            )
        if s.pairwise:
            out["loss_pair"] = pairwise_variance_loss(aux_sub.float(), s.pairwise_decoders)
        if mode == "aux":
            out["target"] = target
            out["aux_logits"] = aux.from_subpixel_layout(aux_sub, z.shape[-2], z.shape[-1])
        return out
