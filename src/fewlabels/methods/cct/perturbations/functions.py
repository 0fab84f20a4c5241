"""CCT's feature perturbations as functions of tensors: each perturbs the encoder output or makes the mask that does.

Every function takes the encoder output ``z [B, D, h, w]`` and returns ``n`` perturbed copies ``[n, B, D, h, w]`` (one
per auxiliary decoder of that type), or the mask that makes them, so the K perturbed inputs of all types can be decoded
by the stacked decoders in a few large kernels. All randomness is drawn from torch's global RNG (seeded and
checkpointed by the engine); nothing is read back to the host.

Masks derived from the main decoder's prediction (Con-Msk, Obj-Msk, G-Cutout) are computed at the feature resolution
``h x w`` by nearest-neighbour resizing of the predicted label map, as the reference does with its erase masks.

The perturbation types (:mod:`fewlabels.methods.cct.perturbations.builtin`) apply these functions to one pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from fewlabels.methods.cct.fused import l2_normalize

__all__ = [
    "connected_components",
    "context_masking",
    "cutout_keep_mask",
    "feature_drop",
    "feature_drop_keep",
    "feature_drop_mask",
    "feature_noise",
    "foreground_mask",
    "guided_cutout",
    "object_masking",
    "spatial_dropout",
    "spatial_dropout_mask",
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
    if prediction.ndim == 4:
        # Nearest resizing keeps whole source pixels, so it commutes with the per-pixel argmax: resize the scores
        # first and take the argmax over h x w pixels instead of H x W (the same labels, ties included).
        if prediction.shape[-2:] != tuple(size):
            prediction = F.interpolate(prediction, size=size, mode="nearest")
        labels = prediction.argmax(dim=1)
    else:
        labels = prediction
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
