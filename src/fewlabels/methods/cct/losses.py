"""CCT losses and schedules as pure functions of tensors.

Notation: ``logits [B, C, H, W]`` are a decoder's raw outputs, ``target_probs [B, C, H, W]`` the (detached)
softmax of the main decoder, ``labels [B, H, W]`` integer classes with ``ignore_index`` for unlabeled pixels.
The batched forms take the K auxiliary outputs stacked as ``[K, B, C, H, W]`` against one target ``[B, C, H,
W]`` and return the mean over the K decoders, computed as one reduction instead of K separate loss calls.

Every function keeps its result on the device of its inputs: none reads a value back to the host, so a
training step with these losses has no host synchronisation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "abce_loss",
    "abce_threshold",
    "batched_consistency_loss",
    "consistency_weight",
    "masked_mean_ce",
    "pairwise_variance_loss",
    "softmax_js_loss",
    "softmax_kl_loss",
    "softmax_mse_loss",
]


def _confident_pixels(target_probs: Tensor, conf_threshold: float) -> Tensor:
    """``[..., B, 1, H, W]`` float mask of the pixels whose target max-probability exceeds the threshold."""
    return (target_probs.amax(dim=-3, keepdim=True) > conf_threshold).to(target_probs.dtype)


def softmax_mse_loss(logits: Tensor, target_probs: Tensor, conf_threshold: float | None = None) -> Tensor:
    """Squared distance between ``softmax(logits)`` and the target distribution (CCT's default ``d``).

    ``L = 1/(B*C*H*W) * sum (softmax(logits) - target)^2``. With ``conf_threshold``: only the pixels whose
    ``max_c target > conf_threshold`` are kept (all C channels of each), and the mean is over the kept
    elements; 0 when no pixel is kept.

    Shapes: ``logits``, ``target_probs`` ``[B, C, H, W]`` (or ``[K, B, C, H, W]`` against ``[B, C, H, W]``,
    see :func:`batched_consistency_loss`) -> scalar.
    """
    sq = (F.softmax(logits, dim=-3) - target_probs).square()
    if conf_threshold is None:
        return sq.mean()
    mask = _confident_pixels(target_probs, conf_threshold).expand_as(target_probs)
    kept = mask.sum() * (sq.numel() // mask.numel())
    # Masked sum instead of boolean indexing: same value, but no data-dependent shape (no host sync).
    return (sq * mask).sum() / kept.clamp(min=1.0)


def softmax_kl_loss(logits: Tensor, target_probs: Tensor, conf_threshold: float | None = None) -> Tensor:
    """``KL(target || softmax(logits))`` with ``kl_div(log_softmax(logits), target, reduction="mean")``
    semantics.

    ``L = 1/(B*C*H*W) * sum t * (log t - log_softmax(logits))`` (terms with ``t = 0`` count as 0). With
    ``conf_threshold``: the sum over the elements of confident pixels (``max_c t > conf_threshold``) divided
    by the number of pixels ``B*H*W`` (the reference's normalisation).

    Shapes: ``[B, C, H, W]`` (or ``[K, B, C, H, W]`` against ``[B, C, H, W]``) -> scalar.
    """
    log_q = F.log_softmax(logits, dim=-3)
    target = target_probs.expand_as(log_q)
    pointwise = F.kl_div(log_q, target, reduction="none")
    if conf_threshold is None:
        return pointwise.mean()
    mask = _confident_pixels(target_probs, conf_threshold)
    pixels = pointwise.numel() // pointwise.shape[-3]
    return (pointwise * mask).sum() / pixels


def softmax_js_loss(logits: Tensor, target_probs: Tensor) -> Tensor:
    """Jensen-Shannon divergence between ``softmax(logits)`` and the target, with the reference's conventions.

    ``M = (softmax(logits) + t) / 2``; ``L = 0.5 * (KL_mean(M || softmax(logits)) + KL_mean(M || t + 1e-5))``,
    each ``KL_mean(M || q) = mean over all elements of M * (log M - log q)`` (``kl_div(log q, M, reduction="mean")``).

    Shapes: ``[B, C, H, W]`` (or ``[K, B, C, H, W]`` against ``[B, C, H, W]``) -> scalar.
    """
    log_q = F.log_softmax(logits, dim=-3)
    m = 0.5 * (log_q.exp() + target_probs)
    # reduction="none" + mean: the element mean of the reference ("mean" is deprecated and will change
    # meaning).
    kl_q = F.kl_div(log_q, m, reduction="none").mean()
    kl_t = F.kl_div(torch.log(target_probs + 1e-5).expand_as(m), m, reduction="none").mean()
    return 0.5 * (kl_q + kl_t)


def batched_consistency_loss(
    aux_logits: Tensor, target_probs: Tensor, kind: str = "mse", conf_threshold: float | None = None
) -> Tensor:
    """Mean over K auxiliary decoders of ``d(target, aux_k)``, computed in one reduction.

    ``L_u = 1/K * sum_k d(target_probs, aux_logits[k])`` with ``d`` the MSE, KL or JS loss above. Because
    every per-decoder loss is a mean over the same number of elements (the confidence mask depends on the
    target only), the mean of the K losses equals one mean over the stacked tensor: no Python loop, no K small
    kernels.

    Args:
        aux_logits: ``[K, B, C, H, W]`` logits of the K auxiliary decoders.
        target_probs: ``[B, C, H, W]`` detached main-decoder probabilities (broadcast over K).
        kind: ``"mse"``, ``"kl"`` or ``"js"``.
        conf_threshold: optional confidence threshold (MSE and KL only).

    Returns:
        Scalar loss.
    """
    if aux_logits.ndim != 5 or aux_logits.shape[1:] != target_probs.shape:
        raise ValueError(
            "expected aux logits [K, B, C, H, W] matching target [B, C, H, W], got "
            f"{tuple(aux_logits.shape)} "
            f"and {tuple(target_probs.shape)}"
        )
    if kind == "mse":
        return softmax_mse_loss(aux_logits, target_probs, conf_threshold)
    if kind == "kl":
        return softmax_kl_loss(aux_logits, target_probs, conf_threshold)
    if kind == "js":
        if conf_threshold is not None:
            raise ValueError("the JS consistency loss has no confidence threshold; use mse or kl")
        return softmax_js_loss(aux_logits, target_probs)
    raise ValueError(f"unknown consistency loss {kind!r}; valid choices: mse, kl, js")


def masked_mean_ce(logits: Tensor, labels: Tensor, ignore_index: int) -> Tensor:
    """Cross-entropy averaged over the pixels whose label is not ``ignore_index`` (the weak-label loss L_w).

    ``logits [N, C, ...]``, ``labels [N, ...]`` -> scalar. Unlike ``reduction="mean"``, a batch with every pixel
    ignored gives 0, not NaN (and the count stays on the device).
    """
    ce = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum")
    return ce / (labels != ignore_index).sum().clamp(min=1)


def pairwise_variance_loss(aux_logits: Tensor, num_decoders: int = 8) -> Tensor:
    """Disagreement among auxiliary decoders (the reference's "pair-wise" constraint).

    ``num_decoders`` of the K outputs are drawn at random (torch's global RNG); with ``p_k = softmax(aux_k)``
    and ``p_bar`` their mean, ``L = mean over pixels of sum_c mean_k (p_k - p_bar)^2``.

    Shapes: ``aux_logits [K, B, C, ...]`` (class dim 2) -> scalar.
    """
    k = aux_logits.shape[0]
    if k < 2:
        return aux_logits.sum() * 0.0
    chosen = torch.randperm(k, device=aux_logits.device)[: min(num_decoders, k)]
    probs = F.softmax(aux_logits.index_select(0, chosen), dim=2)
    return probs.var(dim=0, unbiased=False).sum(dim=1).mean()


def consistency_weight(step: int, rampup_steps: int, final_weight: float = 30.0) -> float:
    """Sigmoid ramp-up of the unsupervised weight: ``w_u(t) = w * exp(-5 * (1 - min(t, R)/R)^2)``.

    ``R = rampup_steps`` (CCT: 0.1 of training); ``w_u(0) = w * e^-5``, ``w_u(t >= R) = w``. ``R = 0`` gives
    ``w``.
    """
    if rampup_steps <= 0:
        return float(final_weight)
    phase = 1.0 - min(max(step, 0), rampup_steps) / rampup_steps
    return float(final_weight * math.exp(-5.0 * phase * phase))


def abce_threshold(step: int, total_steps: int, num_classes: int) -> float:
    """Annealed confidence threshold of abCE: ``1/C + (0.9 - 1/C) * (1 - exp(-5 * min(t, T)/T))``.

    ``T = total_steps`` is the ramp length (the reference uses 0.4 of the training length); the threshold
    rises from ``1/C`` (keep only pixels worse than chance) to ``0.9 * (1 - e^-5) + e^-5/C`` at ``t >= T``.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    start, end = 1.0 / num_classes, 0.9
    ramp = 1.0 if total_steps <= 0 else 1.0 - math.exp(-5.0 * min(max(step, 0), total_steps) / total_steps)
    return float(start + (end - start) * ramp)


def abce_loss(
    logits: Tensor, labels: Tensor, threshold: float, min_kept_per_image: int = 1, ignore_index: int = 255
) -> Tensor:
    """Annealed-bootstrapped cross-entropy: CE averaged over the hard pixels only.

    Let ``p_i`` be the probability of the true class at each non-ignored pixel, ``p_(m)`` the ``m``-th
    smallest (0-based) with ``m = min(min_kept_per_image * B, n_valid - 1)``. The loss is the mean CE over the
    pixels with ``p_i < max(threshold, p_(m))`` (so at least ``m`` pixels are always kept); 0 when none is
    selected.

    Shapes: ``logits [B, C, H, W]``, ``labels [B, H, W]`` -> scalar.
    """
    if logits.ndim != 4 or labels.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"expected logits [B,C,H,W] and labels [B,H,W], got {tuple(logits.shape)}, {tuple(labels.shape)}"
        )
    valid = labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    ce = F.cross_entropy(logits, safe, reduction="none")
    prob = torch.exp(-ce).flatten()  # softmax probability of the true class
    valid = valid.flatten()
    # p_(m) without sorting or reading n_valid back to the host: the (m'+1)-th smallest with ignored pixels at
    # +inf, capped by the largest valid probability, equals the reference's sort_prob[min(m', n_valid - 1)].
    m_prime = min_kept_per_image * logits.shape[0]
    inf = torch.full_like(prob, float("inf"))
    kth = torch.where(valid, prob, inf).kthvalue(min(m_prime + 1, prob.numel())).values
    largest = torch.where(valid, prob, -inf).max()
    cut = torch.clamp(torch.minimum(kth, largest), min=threshold)
    selected = (valid & (prob < cut)).to(ce.dtype)
    return (ce.flatten() * selected).sum() / selected.sum().clamp(min=1.0)
