"""SCL losses as pure functions of tensors.

Shapes use ``N`` images seen in two views, ``M = 2N`` features in view-major order (rows ``0..N-1`` are
view 1, ``N..2N-1`` view 2), ``P`` spatial positions and ``d`` the projected (inner) size of the attention
heads.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Aggregation = Literal["mean", "sum", "max", "logsum"]
AGGREGATIONS: tuple[str, ...] = ("mean", "sum", "max", "logsum")


def supcon_loss(similarity: Tensor, labels: Tensor | None = None, inverse_temperature: float = 10.0) -> Tensor:
    """Supervised (or self-supervised) contrastive loss over a precomputed similarity matrix.

    ``logits = inverse_temperature * similarity`` with ``similarity`` of shape ``[M, M]`` (``M = 2N``,
    view-major). Self-pairs are excluded from numerator and denominator. With ``labels`` ``[N]`` the positives
    of anchor ``i`` are the other features with the same label; with ``labels=None`` they are only the other view of the
    same image.

        loss = -1/M * sum_i 1/|P(i)| * sum_{p in P(i)} log( exp(l_ip) / sum_{a != i} exp(l_ia) )

    An anchor without positives contributes 0 but still counts in the mean over ``M``. Returns a scalar.
    """
    m = similarity.shape[0]
    if similarity.ndim != 2 or similarity.shape[1] != m or m % 2:
        raise ValueError(f"similarity must be a square [2N, 2N] matrix, got {tuple(similarity.shape)}")
    n = m // 2
    device = similarity.device
    if labels is None:
        # The reference builds the mask from `labels` unconditionally and crashes here; the self-supervised
        # mask is the identity over images, i.e. the only positive is the other view.
        base = torch.eye(n, device=device, dtype=similarity.dtype)
    else:
        labels = labels.reshape(-1).to(device)
        if labels.numel() != n:
            raise ValueError(f"labels must have N = {n} entries for a [{m}, {m}] similarity, got {labels.numel()}")
        base = (labels[:, None] == labels[None, :]).to(similarity.dtype)
    not_self = 1.0 - torch.eye(m, device=device, dtype=similarity.dtype)
    positives = base.repeat(2, 2) * not_self
    logits = similarity * inverse_temperature
    # Excluding self-pairs with -inf keeps the log-sum-exp exact and numerically stable.
    logits = logits.masked_fill(not_self == 0, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    log_prob = log_prob.masked_fill(not_self == 0, 0.0)
    count = positives.sum(dim=1)
    mean_log_prob_pos = (positives * log_prob).sum(dim=1) / count.clamp(min=1.0)
    return -mean_log_prob_pos.mean()


def _aggregate(scores: Tensor, aggregation: str, lse_lambda: float) -> Tensor:
    """Reduce the last (position) dimension of ``scores``."""
    if aggregation == "mean":
        return scores.mean(dim=-1)
    if aggregation == "sum":
        return scores.sum(dim=-1)
    if aggregation == "max":
        return scores.amax(dim=-1)
    if aggregation == "logsum":
        return torch.logsumexp(lse_lambda * scores, dim=-1) / lse_lambda
    raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {aggregation!r}")


def _aligned_cosine(q_a: Tensor, k_b: Tensor, v_a: Tensor, v_b: Tensor) -> Tensor:
    """cos(v_A, softmax(q_A k_B^T / sqrt(d)) v_B) for every pair: ``[M_a, M_b, P_a]``."""
    d = q_a.shape[-1]
    attention = torch.einsum("apd,bqd->abpq", q_a, k_b).div_(d**0.5).softmax(dim=-1)
    aligned = torch.einsum("abpq,bqd->abpd", attention, v_b)
    return torch.einsum("apd,abpd->abp", F.normalize(v_a, dim=-1), F.normalize(aligned, dim=-1))


def spatial_similarity(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    aggregation: Aggregation = "mean",
    lse_lambda: float = 6.0,
    q_b: Tensor | None = None,
    k_b: Tensor | None = None,
    v_b: Tensor | None = None,
) -> Tensor:
    """Attention-aligned spatial similarity between two sets of feature maps.

    ``q, k, v``: ``[M_a, P, d]`` projections of set A (``q_b, k_b, v_b`` ``[M_b, P, d]`` of set B, default A).
    For a pair (A, B): ``align_{B->A} = softmax(q_A k_B^T / sqrt(d)) v_B`` and ``align_{A->B}`` symmetrically;
    per-position ``s = cos(v_A, align_{B->A}) + cos(v_B, align_{A->B})`` in ``[-2, 2]``, aggregated over the
    ``P`` positions by mean, sum, max or ``log(sum exp(lse_lambda * s)) / lse_lambda``. Returns ``S [M_b, M_a]`` with
    ``S[i, j] = sim(A = sample j, B = sample i)``.
    """
    q_b = q if q_b is None else q_b
    k_b = k if k_b is None else k_b
    v_b = v if v_b is None else v_b
    if q.shape[1] != q_b.shape[1]:
        raise ValueError(f"both sets need the same number of positions, got {q.shape[1]} and {q_b.shape[1]}")
    a_side = _aligned_cosine(q, k_b, v, v_b)  # [M_a, M_b, P]
    b_side = _aligned_cosine(q_b, k, v_b, v)  # [M_b, M_a, P]
    scores = b_side + a_side.transpose(0, 1)  # [M_b, M_a, P]
    return _aggregate(scores, aggregation, lse_lambda)


def distill_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """Hinton distillation: ``T^2 / B * sum_b KL(softmax(t_b / T) || softmax(s_b / T))``; logits ``[B,
    C]``."""
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    log_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = (log_teacher.exp() * (log_teacher - log_student)).sum()
    return kl * temperature**2 / student_logits.shape[0]


def contrast_distill(f1: Tensor, f2: Tensor) -> Tensor:
    """Feature distillation ``mean_b (2 - 2 cos(f1_b, f2_b))`` for features ``[B, D]`` (or ``[B, ...]``)."""
    f1 = F.normalize(f1.flatten(1), dim=1)
    f2 = F.normalize(f2.flatten(1), dim=1)
    return (2.0 - 2.0 * (f1 * f2).sum(dim=1)).mean()


def spatial_contrast_distill(student: Tensor, teacher: Tensor) -> Tensor:
    """Spatial feature distillation of the reference: ``2 - 2 cos`` between the student's and the teacher's
    ``C``-vectors at each position, averaged over the ``B * H * W`` positions; maps ``[B, C, H, W]``."""
    if student.shape != teacher.shape or student.dim() != 4:
        raise ValueError(
            f"expected two [B, C, H, W] maps of one shape, got {tuple(student.shape)}, {tuple(teacher.shape)}"
        )
    c = student.shape[1]
    return contrast_distill(student.permute(0, 2, 3, 1).reshape(-1, c), teacher.permute(0, 2, 3, 1).reshape(-1, c))
