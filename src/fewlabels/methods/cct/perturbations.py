"""CCT's feature perturbations: the functions that perturb the encoder output, and the ordered registry of types.

Every function takes the encoder output ``z [B, D, h, w]`` and returns ``n`` perturbed copies ``[n, B, D, h, w]`` (one
per auxiliary decoder of that type), or the mask that makes them, so the K perturbed inputs of all types can be decoded
by the stacked decoders in a few large kernels. All randomness is drawn from torch's global RNG (seeded and
checkpointed by the engine); nothing is read back to the host.

Masks derived from the main decoder's prediction (Con-Msk, Obj-Msk, G-Cutout) are computed at the feature resolution
``h x w`` by nearest-neighbour resizing of the predicted label map, as the reference does with its erase masks.

Each perturbation type is one :class:`Perturbation` subclass registered with :func:`register_perturbation`: its name,
the ``perturbations.<count_field>`` config field that holds its number of decoders, and how it applies. A
mask-foldable type (:class:`ChannelMaskPerturbation`, :class:`SpatialMaskPerturbation`) returns a multiplier of the
features that the fused path folds into the first layer of its decoders; an apply-to-copies type
(:class:`CopyPerturbation`) returns its perturbed copies. The registry's order is the order of the stacked aux
decoders, of the random draws and of ``PerturbationsConfig.counts``; both the fused path
(:meth:`~fewlabels.methods.cct.model.CCTModel.classifier_outputs`) and the reference path
(:meth:`~fewlabels.methods.cct.model.CCTModel.perturbed_features`) iterate it through :func:`decoder_groups`. The
``perturbations`` config section, :class:`PerturbationsConfig`, is defined here too, next to the types that read it, so
that adding a type touches this file (its class and its config fields) and its test.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from fewlabels.config import fail
from fewlabels.methods.cct.fused import (
    first_layer_of_copies,
    fold_channel_masks,
    fold_spatial_masks,
    fused_vat_direction,
    l2_normalize,
)

if TYPE_CHECKING:
    from fewlabels.methods.cct.decoders import StackedUpsampleDecoders

__all__ = [
    "ChannelDropout",
    "ChannelMaskPerturbation",
    "ContextMasking",
    "CopyPerturbation",
    "DecoderGroup",
    "FeatureDrop",
    "FeatureNoise",
    "GuidedCutout",
    "IVAT",
    "MaskPerturbation",
    "ObjectMasking",
    "Perturbation",
    "PerturbationInput",
    "PerturbationsConfig",
    "SpatialMaskPerturbation",
    "connected_components",
    "context_masking",
    "cutout_keep_mask",
    "decoder_groups",
    "feature_drop",
    "feature_drop_keep",
    "feature_drop_mask",
    "feature_noise",
    "fold_runs",
    "foreground_mask",
    "get_perturbation",
    "guided_cutout",
    "l2_normalize",
    "object_masking",
    "register_perturbation",
    "registered_perturbations",
    "spatial_dropout",
    "spatial_dropout_mask",
    "unregister_perturbation",
    "vat_direction",
]


def _repeat(z: Tensor, n: int) -> Tensor:
    # expand, not repeat: the copies are only materialised by the final concatenation.
    return z.unsqueeze(0).expand(n, *z.shape)


def vat_direction(
    z: Tensor,
    decoder: Callable[[Tensor], Tensor],
    n: int,
    xi: float = 1e-4,
    iterations: int = 1,
    init: Tensor | None = None,
) -> Tensor:
    """I-VAT adversarial directions: unit-norm ``r`` per decoder and sample, ``[n, B, D, h, w]``.

    ``d ~ U(-0.5, 0.5)`` normalised per sample; ``p = softmax(g(z))`` (no gradient); then ``iterations`` times
    ``d <- normalize(grad_d KL(p || softmax(g(z + xi * max(||z_b||, 1) * d))))``. The caller outputs ``g(z + eps * r)``,
    so that ``||eps * r|| = eps`` per sample.

    ``decoder`` maps ``[n, B, D, h, w]`` to logits whose class dimension is -3 (any spatial layout); it is the
    stack of the ``n`` VAT decoders. ``init`` replaces the random start ``d`` (``[n, B, D, h, w]``, for
    tests).

    The finite-difference step is relative to the per-sample feature norm. The reference used an absolute
    ``xi = 1e-6``: in float32 the KL between two predictions that close is rounding noise and its gradient
    vanishes (perturbation norm ~0.006 instead of ``eps``, and a random direction). A relative step of 1e-4 is
    far above float32 rounding and small enough for the decoder to be locally linear, whatever the feature
    scale of the encoder (a 4x4 small-CNN map or a 40x40x512 PSP output).
    """
    z = z.detach()
    zs = _repeat(z, n)
    with torch.no_grad():
        target = F.softmax(decoder(zs), dim=-3)
    step = xi * z.flatten(1).norm(dim=1).clamp(min=1.0).view(1, -1, 1, 1, 1)
    d = l2_normalize(init.to(zs) if init is not None else torch.rand_like(zs) - 0.5)
    for _ in range(iterations):
        d.requires_grad_(True)
        with torch.enable_grad():
            log_q = F.log_softmax(decoder(zs + step * d), dim=-3)
            kl = F.kl_div(log_q, target, reduction="sum")
            (grad,) = torch.autograd.grad(kl, d)
        d = l2_normalize(grad.detach())
    return d


def spatial_dropout_mask(z: Tensor, n: int, p: float = 0.5) -> Tensor:
    """``Dropout2d`` multipliers ``[n, B, D, 1, 1]``: 0 with probability ``p``, else ``1/(1-p)``."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {p}")
    keep = torch.rand(n, z.shape[0], z.shape[1], 1, 1, device=z.device, dtype=z.dtype) >= p
    return keep.to(z.dtype) / (1.0 - p)


def spatial_dropout(z: Tensor, n: int, p: float = 0.5) -> Tensor:
    """Channel-wise dropout (``Dropout2d``): channels zeroed with probability ``p``, kept ones scaled by ``1/(1-p)``.

    Every decoder, sample and channel draws independently. Shapes: ``[B, D, h, w]`` -> ``[n, B, D, h, w]``.
    """
    return z * spatial_dropout_mask(z, n, p)


def feature_noise(z: Tensor, n: int, uniform_range: float = 0.3) -> Tensor:
    """F-Noise: ``z + z * N`` with ``N ~ U(-r, r)`` of shape ``[D, h, w]``, one draw per decoder shared over the batch.

    Shapes: ``[B, D, h, w]`` -> ``[n, B, D, h, w]``.
    """
    noise = (torch.rand(n, 1, *z.shape[1:], device=z.device, dtype=z.dtype) * 2.0 - 1.0) * uniform_range
    return z * (1.0 + noise)


def feature_drop_mask(z: Tensor, gamma: Tensor) -> Tensor:
    """F-Drop keep-mask: ``a = mean_c z``; keep positions where ``a < gamma * max_{h,w} a`` (per sample).

    Shapes: ``z [B, D, h, w]``, ``gamma [n]`` -> float mask ``[n, B, 1, h, w]`` (1 = kept).
    """
    attention = z.mean(dim=1, keepdim=True)  # [B, 1, h, w]
    peak = attention.flatten(1).amax(dim=1).view(1, -1, 1, 1, 1)
    return (attention.unsqueeze(0) < gamma.view(-1, 1, 1, 1, 1) * peak).to(z.dtype)


def feature_drop_keep(z: Tensor, n: int, gamma_range: tuple[float, float] = (0.7, 0.9)) -> Tensor:
    """F-Drop keep-masks ``[n, B, 1, h, w]``, with ``gamma ~ U(gamma_range)`` drawn once per decoder (as the reference).

    See :func:`feature_drop_mask`.
    """
    lo, hi = gamma_range
    gamma = lo + (hi - lo) * torch.rand(n, device=z.device, dtype=z.dtype)
    return feature_drop_mask(z, gamma)


def feature_drop(z: Tensor, n: int, gamma_range: tuple[float, float] = (0.7, 0.9)) -> Tensor:
    """F-Drop: zero the most active positions (channel mean >= gamma * its max).

    Shapes: ``[B, D, h, w]`` -> ``[n, B, D, h, w]``.
    """
    return z.unsqueeze(0) * feature_drop_keep(z, n, gamma_range)


def foreground_mask(prediction: Tensor, size: tuple[int, int], background_classes: Sequence[int] = (0,)) -> Tensor:
    """Foreground (not a background class) of the predicted label map, nearest-resized to the feature size.

    Args:
        prediction: logits/probabilities ``[B, C, H, W]`` (argmax is taken) or labels ``[B, H, W]``.
        size: ``(h, w)`` of the features.
        background_classes: classes that count as background (the reference hard-codes class 0, which breaks
            datasets where 0 is an object class or where several classes are "stuff": issues #7, #13, #70).

    Returns:
        Float mask ``[B, h, w]``, 1 on foreground.
    """
    labels = prediction.argmax(dim=1) if prediction.ndim == 4 else prediction
    if labels.shape[-2:] != tuple(size):
        labels = F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()
    bg = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    for c in background_classes:
        bg |= labels == c
    return (~bg).float()


def context_masking(z: Tensor, fg: Tensor, n: int) -> Tensor:
    """Con-Msk: ``z * fg`` (context removed). ``z [B, D, h, w]``, ``fg [B, h, w]`` -> ``[n, B, D, h, w]``."""
    return _repeat(z * fg[:, None], n)


def object_masking(z: Tensor, fg: Tensor, n: int) -> Tensor:
    """Obj-Msk: ``z * (1 - fg)`` (objects removed).

    Shapes: ``z [B, D, h, w]``, ``fg [B, h, w]`` -> ``[n, B, D, h, w]``.
    """
    return _repeat(z * (1.0 - fg[:, None]), n)


def connected_components(mask: Tensor, iterations: int | None = None) -> Tensor:
    """8-connected components of a binary mask, on the device, without host synchronisation.

    Each foreground pixel starts with its own id (1 + flat index); every iteration takes the max id over the
    3x3 neighbourhood within the foreground, then follows the ids twice (pointer jumping: ``L[i] <- L[L[i]]``), so ids
    spread at a doubling pace. At convergence every component carries the id of its last pixel. Pure label propagation
    needs as many iterations as the geodesic diameter; the jumping makes ``max(h, w)`` (default) ample for the object
    shapes of segmentation maps; a component not merged within the budget is only split in two.

    Shapes: ``mask [B, h, w]`` (bool/0-1) -> ``labels [B, h, w]`` int64, 0 on background.
    """
    b, h, w = mask.shape
    fg = mask.bool()
    ids = torch.arange(1, h * w + 1, device=mask.device, dtype=torch.float32).view(1, 1, h, w)
    labels = torch.where(fg[:, None], ids, torch.zeros((), device=mask.device))
    fgf = fg[:, None].float()
    for _ in range(iterations if iterations is not None else max(h, w)):
        labels = F.max_pool2d(labels, 3, stride=1, padding=1) * fgf
        flat = labels.view(b, -1)
        for _ in range(2):
            # ids are 1-based flat indices; background (0) points to index 0 whose value is ignored by the
            # mask.
            flat = torch.maximum(flat, flat.gather(1, (flat.long() - 1).clamp(min=0)) * fgf.view(b, -1))
        labels = flat.view(b, 1, h, w)
    return labels[:, 0].long()


def cutout_keep_mask(
    fg: Tensor,
    n: int,
    erase: float = 0.4,
    min_area: int = 2,
    max_objects: int = 32,
    iterations: int | None = None,
) -> Tensor:
    """G-Cutout keep-mask: for each object, a random box of ``erase`` times its bounding box, inside that box.

    Objects are the connected components of ``fg`` with at least ``min_area`` pixels (the ``max_objects``
    largest per image). Box side ``max(1, round(erase * side))`` so that small objects are still cut (the
    reference kept only OpenCV contours with > 50 points and erased nothing for small or rectangular objects).
    Every decoder draws its own boxes.

    Shapes: ``fg [B, h, w]`` -> float ``[n, B, 1, h, w]``, 0 inside the erased boxes.
    """
    b, h, w = fg.shape
    dev = fg.device
    labels = connected_components(fg, iterations).view(b, -1)
    slots = h * w + 1
    area = torch.zeros(b, slots, device=dev).scatter_add_(1, labels, torch.ones_like(labels, dtype=torch.float32))
    rows = torch.arange(h, device=dev).repeat_interleave(w).expand(b, -1)
    cols = torch.arange(w, device=dev).repeat(h).expand(b, -1)
    big = torch.full((b, slots), h + w, device=dev, dtype=torch.long)
    y0 = big.scatter_reduce(1, labels, rows, "amin", include_self=True)
    x0 = big.scatter_reduce(1, labels, cols, "amin", include_self=True)
    y1 = torch.full_like(big, -1).scatter_reduce(1, labels, rows, "amax", include_self=True)
    x1 = torch.full_like(big, -1).scatter_reduce(1, labels, cols, "amax", include_self=True)
    area[:, 0] = 0.0  # slot 0 is the background
    k = min(max_objects, slots)
    top_area, top = area.topk(k, dim=1)  # [B, k]
    valid = (top_area >= max(min_area, 1)).float()
    y0, y1, x0, x1 = (t.gather(1, top) for t in (y0, y1, x0, x1))
    bh, bw = (y1 - y0 + 1).clamp(min=1), (x1 - x0 + 1).clamp(min=1)
    box_h = (bh.float() * erase).round().clamp(min=1).long()
    box_w = (bw.float() * erase).round().clamp(min=1).long()
    u = torch.rand(n, b, k, 2, device=dev)
    sy = y0 + (u[..., 0] * (bh - box_h + 1)).long().clamp(max=bh - box_h)
    sx = x0 + (u[..., 1] * (bw - box_w + 1)).long().clamp(max=bw - box_w)
    ar_h = torch.arange(h, device=dev).view(1, 1, 1, h)
    ar_w = torch.arange(w, device=dev).view(1, 1, 1, w)
    in_rows = ((ar_h >= sy[..., None]) & (ar_h < (sy + box_h)[..., None])).float() * valid[None, :, :, None]
    in_cols = ((ar_w >= sx[..., None]) & (ar_w < (sx + box_w)[..., None])).float()
    erased = in_rows.transpose(-1, -2) @ in_cols  # [n, B, h, w]: number of boxes covering each position
    return (erased == 0).float()[:, :, None]


def guided_cutout(
    z: Tensor,
    fg: Tensor,
    n: int,
    erase: float = 0.4,
    min_area: int = 2,
    max_objects: int = 32,
    iterations: int | None = None,
) -> Tensor:
    """G-Cutout: ``z`` with a random box erased inside each predicted object; see :func:`cutout_keep_mask`.

    Shapes: ``z [B, D, h, w]``, ``fg [B, h, w]`` -> ``[n, B, D, h, w]``.
    """
    return z.unsqueeze(0) * cutout_keep_mask(fg, n, erase, min_area, max_objects, iterations)


# --- the configuration of the perturbations --------------------------------------------------------------------------


@dataclass
class PerturbationsConfig:
    """The ``perturbations`` section: how many aux decoders of each type (their sum is K) and each type's parameters.

    Every registered type reads its count from one field here (its ``count_field``) and its parameters from fields
    named after it; a new type adds its fields to this class. The defaults are the reference recipe's: K = 30.
    """

    vat: int = field(default=2, metadata={"help": "I-VAT decoders", "min": 0})
    vat_eps: float = field(default=2.0, metadata={"help": "norm of the adversarial perturbation", "gt": 0})
    vat_xi: float = field(
        default=1e-4,
        metadata={
            "help": "power-iteration step, relative to the feature norm (reference 1e-6 absolute vanishes)",
            "gt": 0,
        },
    )
    vat_iterations: int = field(default=1, metadata={"help": "power iterations", "min": 1})
    dropout: int = field(default=6, metadata={"help": "channel-dropout (Dropout2d) decoders", "min": 0})
    dropout_rate: float = field(default=0.5, metadata={"min": 0, "max": 0.99})
    cutout: int = field(default=6, metadata={"help": "G-Cutout decoders", "min": 0})
    cutout_erase: float = field(
        default=0.4, metadata={"help": "box side / object bounding-box side", "gt": 0, "max": 1}
    )
    cutout_min_area: int = field(default=2, metadata={"help": "smallest object cut, in feature cells", "min": 1})
    cutout_max_objects: int = field(default=32, metadata={"help": "largest objects cut per image", "min": 1})
    context_mask: int = field(default=2, metadata={"help": "Con-Msk decoders (objects only)", "min": 0})
    object_mask: int = field(default=2, metadata={"help": "Obj-Msk decoders (context only)", "min": 0})
    feature_drop: int = field(default=6, metadata={"help": "F-Drop decoders", "min": 0})
    feature_drop_gamma: tuple[float, float] = field(
        default=(0.7, 0.9), metadata={"help": "range of gamma: drop where attention >= gamma * max"}
    )
    feature_noise: int = field(default=6, metadata={"help": "F-Noise decoders", "min": 0})
    feature_noise_range: float = field(default=0.3, metadata={"help": "N ~ U(-r, r)", "min": 0})
    background_classes: list[int] | None = field(
        default=None,
        metadata={
            "help": "classes that are not objects for G-Cutout/Con-Msk/Obj-Msk (default: the dataset's "
            "non-thing classes, e.g. [0] on VOC)"
        },
    )

    @property
    def counts(self) -> dict[str, int]:
        """Decoders per perturbation type, in the registry's order, which is the order of the stacked decoders."""
        return {perturbation.name: perturbation.count(self) for perturbation in registered_perturbations()}

    @property
    def total(self) -> int:
        """K, the number of auxiliary decoders."""
        return sum(self.counts.values())

    def validate(self) -> None:
        """Reject a section without any aux decoder, an empty F-Drop range and negative background classes."""
        if self.total < 1:
            fail("perturbations", "at least one auxiliary decoder is needed (all counts are 0)")
        lo, hi = self.feature_drop_gamma
        if not 0 < lo <= hi <= 1:
            fail("perturbations.feature_drop_gamma", f"must be a range 0 < low <= high <= 1, got {[lo, hi]}")
        if self.background_classes is not None and any(c < 0 for c in self.background_classes):
            fail("perturbations.background_classes", f"class indices are >= 0, got {self.background_classes}")


# --- the ordered registry of perturbation types ---------------------------------------------------------------------

Fold = Literal["copies", "channel", "spatial"]


class PerturbationInput:
    """What the perturbations of one pass may read: the features, the main prediction, the settings and the decoders.

    Args:
        z: encoder output ``[B, D, h, w]`` of the unlabeled images.
        target: main-decoder prediction ``[B, C, H, W]`` (probabilities), for the types that follow the objects.
        config: the ``perturbations`` section (the counts and every type's parameters).
        background_classes: classes that are not objects (G-Cutout, Con-Msk, Obj-Msk).
        aux: the stacked aux decoders (I-VAT runs its power iteration through its own decoders).
        chunk_elements: full-resolution elements that a fused computation holds at once (``None``: all at once).
    """

    def __init__(
        self,
        z: Tensor,
        target: Tensor,
        config: PerturbationsConfig,
        background_classes: Sequence[int],
        aux: StackedUpsampleDecoders,
        chunk_elements: int | None,
    ) -> None:
        self.z = z
        self.target = target
        self.config = config
        self.background_classes = tuple(background_classes)
        self.aux = aux
        self.chunk_elements = chunk_elements
        self._foreground: Tensor | None = None

    @property
    def foreground(self) -> Tensor:
        """The foreground of the main prediction at the feature size, ``[B, h, w]``, computed once per pass.

        It draws no random numbers, so computing it on first use leaves the order of the random draws unchanged.
        """
        if self._foreground is None:
            h, w = self.z.shape[-2:]
            self._foreground = foreground_mask(self.target, (h, w), self.background_classes)
        return self._foreground


class Perturbation(ABC):
    """One type of CCT perturbation, applied to the encoder output by each of its aux decoders.

    A type sets two class attributes and derives from one of the three kinds below, which sets the third:

    * ``name``: the registry key, used in ``PerturbationsConfig.counts`` and ``CCTModel.groups``;
    * ``count_field``: the ``PerturbationsConfig`` field that holds its number of aux decoders;
    * ``fold``: how the fused path applies it. :class:`ChannelMaskPerturbation` (``"channel"``) and
      :class:`SpatialMaskPerturbation` (``"spatial"``) are mask-foldable: the perturbed copies are ``z * mask`` and the
      mask is folded into the first layer of the decoders. :class:`CopyPerturbation` (``"copies"``) applies to copies:
      every decoder gets its own perturbed copy of ``z``.

    Every type implements :meth:`copies`, which the reference path uses; the mask-foldable ones implement it through
    their mask. Types are registered with :func:`register_perturbation`, which instantiates them once.
    """

    name: ClassVar[str] = ""
    count_field: ClassVar[str] = ""
    fold: ClassVar[Fold]

    def count(self, config: PerturbationsConfig) -> int:
        """The number of aux decoders of this type, the value of ``config.<count_field>``."""
        try:
            value = getattr(config, self.count_field)
        except AttributeError:
            raise TypeError(
                f"perturbation {self.name!r} reads its decoder count from perturbations.{self.count_field}, a field "
                f"that {type(config).__name__} does not have"
            ) from None
        return int(value)

    @abstractmethod
    def copies(self, inputs: PerturbationInput, n: int, decoders: slice) -> Tensor:
        """The ``n`` perturbed copies ``[n, B, D, h, w]`` of ``inputs.z``, one for each aux decoder in ``decoders``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, count_field={self.count_field!r}, fold={self.fold!r})"


class CopyPerturbation(Perturbation):
    """An apply-to-copies type: each of its decoders gets its own perturbed copy of the features.

    This suits a perturbation that is not a multiplier constant over the channels or over the positions (F-Noise), or
    that needs its own computation per decoder (I-VAT's power iteration).
    """

    fold = "copies"

    def first_layer(self, inputs: PerturbationInput, n: int, decoders: slice, weight: Tensor, zf: Tensor) -> Tensor:
        """The classifier outputs ``[n, B, C, h*w]`` of ``weight [n, C, D]`` on the copies (the fused path).

        ``zf [B, D, h*w]`` is ``inputs.z`` flattened, for a type that forms its copies in that layout.
        """
        return first_layer_of_copies(weight, self.copies(inputs, n, decoders).flatten(-2))


class MaskPerturbation(Perturbation):
    """A mask-foldable type: the perturbed copies are ``z * mask``, and the fused path folds the mask into the first
    layer of the decoders instead of forming the copies."""

    @abstractmethod
    def mask(self, inputs: PerturbationInput, n: int) -> Tensor:
        """The multiplier of each of the ``n`` copies, broadcastable to ``[n, B, D, h, w]`` (shape set by the kind)."""

    @abstractmethod
    def folded_mask(self, inputs: PerturbationInput, n: int) -> Tensor:
        """:meth:`mask` in the layout that :meth:`first_layer` takes, so that a run of types can be concatenated."""

    @abstractmethod
    def first_layer(self, weight: Tensor, zf: Tensor, masks: Tensor) -> Tensor:
        """The classifier outputs ``[n, B, C, h*w]`` of ``weight [n, C, D]`` on ``zf [B, D, h*w]`` times ``masks``."""

    def copies(self, inputs: PerturbationInput, n: int, decoders: slice) -> Tensor:
        """The copies ``z * mask`` that the fused path never forms (reference path and tests)."""
        return inputs.z.unsqueeze(0) * self.mask(inputs, n)


class ChannelMaskPerturbation(MaskPerturbation):
    """A mask-foldable type whose mask is constant over the positions: :meth:`mask` returns ``[n, B, D or 1, 1, 1]``.

    The fused path moves the mask onto the weights of the first layer, ``W (z * m) = (W * m) z``.
    """

    fold = "channel"

    def folded_mask(self, inputs: PerturbationInput, n: int) -> Tensor:
        """The mask as channel multipliers ``[n, B, D]``."""
        b, d = inputs.z.shape[:2]
        return self.mask(inputs, n).expand(n, b, d, 1, 1)[..., 0, 0]

    def first_layer(self, weight: Tensor, zf: Tensor, masks: Tensor) -> Tensor:
        """The first layer with channel multipliers ``masks [n, B, D]`` on its weights."""
        return fold_channel_masks(weight, zf, masks)


class SpatialMaskPerturbation(MaskPerturbation):
    """A mask-foldable type whose mask is constant over the channels: :meth:`mask` returns ``[n, B, 1, h, w]``.

    The mask may also be constant over the positions (``[n, B, 1, 1, 1]``, a scale per copy and sample). The fused path
    applies the mask to the output of the first layer, ``W (z * m) = (W z) * m``.
    """

    fold = "spatial"

    def folded_mask(self, inputs: PerturbationInput, n: int) -> Tensor:
        """The mask as position multipliers ``[n, B, h, w]``."""
        b = inputs.z.shape[0]
        h, w = inputs.z.shape[-2:]
        return self.mask(inputs, n).expand(n, b, 1, h, w)[:, :, 0]

    def first_layer(self, weight: Tensor, zf: Tensor, masks: Tensor) -> Tensor:
        """The first layer followed by the position multipliers ``masks [n, B, h, w]``."""
        return fold_spatial_masks(weight, zf, masks.flatten(-2))


_REGISTRY: dict[str, Perturbation] = {}
_KINDS = (CopyPerturbation, ChannelMaskPerturbation, SpatialMaskPerturbation)

P = TypeVar("P", bound="type[Perturbation]")


def register_perturbation(cls: P) -> P:
    """Class decorator: add a perturbation type to the registry, after every type registered before it.

    The registry's order is the order of the aux decoders, of the random draws and of ``PerturbationsConfig.counts``.
    The class must derive from :class:`CopyPerturbation`, :class:`ChannelMaskPerturbation` or
    :class:`SpatialMaskPerturbation`, and its name and count field must not be taken yet.
    """
    kind = next((k for k in _KINDS if issubclass(cls, k)), None)
    if kind is None or cls.fold != kind.fold:
        raise TypeError(
            f"{cls.__name__} must derive from CopyPerturbation, ChannelMaskPerturbation or SpatialMaskPerturbation"
        )
    if not cls.name or not cls.count_field:
        raise ValueError(f"{cls.__name__} needs a name and a count_field")
    for other in _REGISTRY.values():
        if cls.name == other.name or cls.count_field == other.count_field:
            raise ValueError(
                f"{cls.__name__} ({cls.name!r}, field {cls.count_field!r}) clashes with the registered {other!r}"
            )
    _REGISTRY[cls.name] = cls()
    return cls


def unregister_perturbation(name: str) -> Perturbation:
    """Remove the type ``name`` from the registry and return it (for tests and plug-ins that register their own)."""
    return _REGISTRY.pop(get_perturbation(name).name)


def get_perturbation(name: str) -> Perturbation:
    """The registered type called ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown perturbation {name!r}; registered: {', '.join(_REGISTRY)}") from None


def registered_perturbations() -> tuple[Perturbation, ...]:
    """Every registered type, in the registry's order."""
    return tuple(_REGISTRY.values())


@dataclass(frozen=True)
class DecoderGroup:
    """The aux decoders of one perturbation type: ``perturbation`` is applied by the decoders ``decoders`` of the K."""

    perturbation: Perturbation
    decoders: slice

    @property
    def count(self) -> int:
        """The number of decoders in the group."""
        return int(self.decoders.stop - self.decoders.start)


def decoder_groups(config: PerturbationsConfig) -> list[DecoderGroup]:
    """Every registered type with its consecutive slice of the stacked aux decoders, in the registry's order.

    A type whose count is 0 gets an empty slice.
    """
    groups: list[DecoderGroup] = []
    start = 0
    for perturbation in registered_perturbations():
        stop = start + perturbation.count(config)
        groups.append(DecoderGroup(perturbation, slice(start, stop)))
        start = stop
    return groups


def fold_runs(groups: Sequence[DecoderGroup]) -> list[tuple[DecoderGroup, ...]]:
    """The groups that have decoders, in order, cut into the runs that the fused path computes together.

    Consecutive mask-foldable groups of the same kind form one run, computed as one product over the decoders of the
    run; every apply-to-copies group is a run of its own. The runs are consecutive in the decoder order, so the
    classifier outputs of all runs, concatenated, are in the registry's order.
    """
    runs: list[list[DecoderGroup]] = []
    for group in groups:
        if group.count == 0:
            continue
        fold = group.perturbation.fold
        if runs and fold != "copies" and runs[-1][-1].perturbation.fold == fold:
            runs[-1].append(group)
        else:
            runs.append([group])
    return [tuple(run) for run in runs]


# --- the built-in types, in the order of the reference's decoders ----------------------------------------------------


@register_perturbation
class IVAT(CopyPerturbation):
    """I-VAT: ``z + eps * r`` with ``r`` the adversarial direction of each VAT decoder, from its own power iteration.

    Parameters: ``vat_eps``, ``vat_xi``, ``vat_iterations``. The power iteration's gradient comes from the fused stages
    (:func:`~fewlabels.methods.cct.fused.fused_vat_direction`, tested equal to the autograd :func:`vat_direction`).
    """

    name = "vat"
    count_field = "vat"

    def direction(self, inputs: PerturbationInput, decoders: slice) -> Tensor:
        """The unit-norm adversarial directions ``r [n, B, D, h, w]`` of the VAT decoders ``decoders``."""
        cfg, aux = inputs.config, inputs.aux
        return fused_vat_direction(
            inputs.z,
            aux.classifier[decoders],
            aux.stage_weight[:, decoders],
            aux.stage_bias[:, decoders],
            cfg.vat_xi,
            cfg.vat_iterations,
            chunk_elements=inputs.chunk_elements,
        )

    def copies(self, inputs: PerturbationInput, n: int, decoders: slice) -> Tensor:
        """The copies ``z + eps * r``, one per VAT decoder."""
        return inputs.z.unsqueeze(0) + inputs.config.vat_eps * self.direction(inputs, decoders)

    def first_layer(self, inputs: PerturbationInput, n: int, decoders: slice, weight: Tensor, zf: Tensor) -> Tensor:
        """The first layer on the copies, formed from the flattened features ``zf``.

        The values are those of :meth:`copies`. Building the copies on ``zf``, which the mask-foldable types use too,
        fixes the order in which autograd sums the gradients reaching ``z``; runs at a given seed stay bit-for-bit
        those of earlier versions.
        """
        x = zf.unsqueeze(0) + inputs.config.vat_eps * self.direction(inputs, decoders).flatten(-2)  # [n, B, D, hw]
        return first_layer_of_copies(weight, x)


@register_perturbation
class ChannelDropout(ChannelMaskPerturbation):
    """Dropout: whole channels zeroed with probability ``dropout_rate`` (see :func:`spatial_dropout`)."""

    name = "dropout"
    count_field = "dropout"

    def mask(self, inputs: PerturbationInput, n: int) -> Tensor:
        """The ``Dropout2d`` multipliers ``[n, B, D, 1, 1]``."""
        return spatial_dropout_mask(inputs.z, n, inputs.config.dropout_rate)


@register_perturbation
class GuidedCutout(SpatialMaskPerturbation):
    """G-Cutout: a random box erased inside each predicted object (see :func:`cutout_keep_mask`)."""

    name = "cutout"
    count_field = "cutout"

    def mask(self, inputs: PerturbationInput, n: int) -> Tensor:
        """The keep-masks ``[n, B, 1, h, w]``, new boxes for every decoder."""
        cfg = inputs.config
        return cutout_keep_mask(inputs.foreground, n, cfg.cutout_erase, cfg.cutout_min_area, cfg.cutout_max_objects)


@register_perturbation
class ContextMasking(SpatialMaskPerturbation):
    """Con-Msk: the context removed, only the predicted objects kept (see :func:`context_masking`)."""

    name = "context_mask"
    count_field = "context_mask"

    def mask(self, inputs: PerturbationInput, n: int) -> Tensor:
        """The foreground ``[n, B, 1, h, w]``, the same for every decoder."""
        return inputs.foreground[None, :, None].expand(n, -1, -1, -1, -1)


@register_perturbation
class ObjectMasking(SpatialMaskPerturbation):
    """Obj-Msk: the predicted objects removed, only the context kept (see :func:`object_masking`)."""

    name = "object_mask"
    count_field = "object_mask"

    def mask(self, inputs: PerturbationInput, n: int) -> Tensor:
        """The background ``[n, B, 1, h, w]``, the same for every decoder."""
        return (1.0 - inputs.foreground)[None, :, None].expand(n, -1, -1, -1, -1)


@register_perturbation
class FeatureDrop(SpatialMaskPerturbation):
    """F-Drop: the most active positions zeroed, with ``gamma ~ U(feature_drop_gamma)`` (see :func:`feature_drop`)."""

    name = "feature_drop"
    count_field = "feature_drop"

    def mask(self, inputs: PerturbationInput, n: int) -> Tensor:
        """The keep-masks ``[n, B, 1, h, w]``, one gamma per decoder."""
        lo, hi = inputs.config.feature_drop_gamma
        return feature_drop_keep(inputs.z, n, (lo, hi))


@register_perturbation
class FeatureNoise(CopyPerturbation):
    """F-Noise: ``z * (1 + N)`` with ``N ~ U(-feature_noise_range, feature_noise_range)`` (see :func:`feature_noise`).

    The noise depends on both the channel and the position, so it cannot be folded into the first layer.
    """

    name = "feature_noise"
    count_field = "feature_noise"

    def copies(self, inputs: PerturbationInput, n: int, decoders: slice) -> Tensor:
        """The noisy copies, one noise draw per decoder."""
        return feature_noise(inputs.z, n, inputs.config.feature_noise_range)
