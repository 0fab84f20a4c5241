"""Mutual-information clustering objectives (IIC), as pure functions of tensors.

Notation: ``k`` clusters; ``P`` the joint distribution of the cluster assignments of two views, a symmetric
``[k, k]`` matrix summing to 1; ``P_i = sum_j P_ij`` and ``P_j = sum_i P_ij`` its marginals (equal, as ``P``
is symmetric).

The loss is ``L = -sum_ij P_ij (log P_ij - lamb log P_i - lamb log P_j)``.
With ``H`` the entropy in nats, ``L = H(P) - lamb (H(P_i) + H(P_j)) = -I(y; y') - (lamb - 1) (H(P_i) +
H(P_j))``.

**Range (why the loss is negative; IIC issues #14, #18, #29).** ``I(y; y') = H(y) - H(y | y')`` lies in
``[0, log k]``, so with ``lamb = 1`` the loss lies in ``[-log k, 0]``: it is never positive, it is 0 for a
degenerate one-cluster or independent-view solution, and it reaches ``-log k`` when both views agree on ``k``
equally used clusters (``P = diag(1/k)``). With ``lamb > 1`` the marginal entropy is rewarded more and the
minimum is ``-(2 lamb - 1) log k`` (same diagonal ``P``). A loss that stalls near 0 means collapse (marginal
entropy ~ 0) or disagreement (conditional entropy ~ marginal entropy): :func:`information_terms` separates the
two.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

# IIC clamps with Python's float epsilon (2.2e-16) whatever the tensor dtype; a clamped entry enters the loss
# multiplied by its own tiny probability, so the clamp keeps log() finite without changing the value.
EPS = sys.float_info.epsilon

__all__ = [
    "EPS",
    "iic_joint",
    "iic_loss",
    "iic_segmentation_loss",
    "information_loss",
    "normalise_joint",
    "segmentation_counts",
    "information_terms",
    "segmentation_joint",
]


def normalise_joint(counts: torch.Tensor) -> torch.Tensor:
    """``[..., k, k]`` non-negative pair counts -> symmetric joint(s) ``sym(C) / Z`` summing to 1 over the last two
    dims. Separate from the counting so that counts can be summed over processes first (a distributed batch)."""
    joint = (counts + counts.transpose(-1, -2)) / 2
    return joint / joint.sum(dim=(-1, -2), keepdim=True)


def iic_joint(p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    """Joint cluster distribution of two views: ``P = sym(sum_n p1_n p2_n^T) / Z``.

    Args:
        p1, p2: ``[N, k]`` per-sample cluster probabilities (softmax outputs) of the two views.

    Returns:
        ``[k, k]`` symmetric, non-negative, summing to 1.
    """
    if p1.shape != p2.shape or p1.dim() != 2:
        raise ValueError(
            f"iic_joint expects two [N, k] tensors of equal shape, got {tuple(p1.shape)}, {tuple(p2.shape)}"
        )
    return normalise_joint(p1.transpose(0, 1) @ p2)


def _box_sum(x: torch.Tensor, t: int) -> torch.Tensor:
    """``[B, k, H, W]`` -> sum of ``x`` over the ``(2t+1)^2`` window around each pixel, zero padding.

    Two running sums (cumsum along each axis, differences of ends): O(BkHW) whatever ``t``. Accumulated in
    float64 so that differences of large prefix sums keep the precision of small window sums (a CPU ``avg_pool2d`` with
    an 11x11 window was 60x slower on the same input).
    """
    c = F.pad(x.double(), (t + 1, t, t + 1, t)).cumsum(-1)
    c = (c[..., 2 * t + 1 :] - c[..., : -2 * t - 1]).cumsum(-2)
    return (c[..., 2 * t + 1 :, :] - c[..., : -2 * t - 1, :]).to(x.dtype)


def _fft_size(n: int) -> int:
    """Smallest ``m >= n`` with no prime factor above 5 (an FFT of length 69 = 3 x 23 was 8x slower than 72)."""
    m = n
    while True:
        r = m
        for f in (2, 3, 5):
            while r % f == 0:
                r //= f
        if r == 1:
            return m
        m += 1


def _shifted_joints(p1: torch.Tensor, p2: torch.Tensor, t: int) -> torch.Tensor:
    """``J[a, b] = sum_{n,u} p1[n, :, u] p2[n, :, u + (a - t, b - t)]^T`` for every shift: ``[2t+1, 2t+1, k, k]``.

    One FFT cross-correlation: zero-padding to at least ``(H + t) x (W + t)`` makes the circular correlation equal the
    linear one for ``|shift| <= t``, and the sum over images is a product of spectra per frequency. Cost
    ``O(k^2 B HW + (Bk + k^2) HW log HW)`` instead of the ``O(k^2 B HW (2t+1)^2)`` of a direct convolution.
    """
    h, w = p1.shape[-2:]
    size = (_fft_size(h + t), _fft_size(w + t))
    f1 = torch.fft.rfft2(p1, s=size)
    f2 = torch.fft.rfft2(p2, s=size)
    spectrum = torch.einsum("biyx,bjyx->ijyx", f1.conj(), f2)
    corr = torch.fft.irfft2(spectrum, s=size)  # [k, k, *size], shift s at index s mod size
    lags_y = torch.arange(-t, t + 1, device=p1.device) % size[0]
    lags_x = torch.arange(-t, t + 1, device=p1.device) % size[1]
    joints = corr.index_select(2, lags_y).index_select(3, lags_x).permute(2, 3, 0, 1)
    # correlations of non-negative maps are >= 0; FFT round-off can leave -1e-7 where the true value is 0
    return joints.clamp(min=0)


def segmentation_counts(
    p1: torch.Tensor,
    p2: torch.Tensor,
    displacement: int = 10,
    collapsed: bool = True,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Unnormalised :func:`segmentation_joint`: the pair counts ``sum_t J_t`` (``[k, k]``) or every ``J_t``
    (``[(2T+1)^2, k, k]``), before symmetrising and normalising (arguments as there)."""
    if p1.shape != p2.shape or p1.dim() != 4:
        raise ValueError(
            f"segmentation_joint expects two [B, k, H, W] tensors of equal shape, got {tuple(p1.shape)} and "
            f"{tuple(p2.shape)}"
        )
    if displacement < 0:
        raise ValueError(f"displacement must be >= 0, got {displacement}")
    if p1.dtype in (torch.float16, torch.bfloat16):  # sums over every pixel pair need float32 at least
        p1, p2 = p1.float(), p2.float()
    if mask is not None:
        m = mask.reshape(p1.shape[0], 1, *p1.shape[2:]).to(p1.dtype)
        p1, p2 = p1 * m, p2 * m
    t = int(displacement)
    k = p1.shape[1]
    if collapsed or t == 0:
        window = _box_sum(p2, t) if t else p2
        return torch.einsum("bihw,bjhw->ij", p1, window)
    return _shifted_joints(p1, p2, t).reshape(-1, k, k)


def segmentation_joint(
    p1: torch.Tensor,
    p2: torch.Tensor,
    displacement: int = 10,
    collapsed: bool = True,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Joint of per-pixel cluster assignments over all pixels ``u`` and displacements ``t in [-T, T]^2``.

    ``J_t = sum_{b, u} p1[b, :, u] p2[b, :, u + t]^T`` with zero padding outside the image (a pixel near the
    border contributes fewer pairs). ``collapsed=True`` returns ``sym(sum_t J_t) / Z``; ``collapsed=False``
    returns every ``sym(J_t) / Z_t`` stacked.

    Cost: the collapsed joint is one box-sum of ``p2`` over the ``(2T+1)^2`` window (``O(BkHW)``) and one
    ``[k, BHW] x [BHW, k]`` product -- not ``(2T+1)^2`` products. The uncollapsed joints come from one FFT
    cross-correlation of the two maps (all shifts at once), not from a loop over shifts nor from IIC's
    convolution with an ``H x W`` kernel (4x slower forward+backward here at T = 5).

    Args:
        p1, p2: ``[B, k, H, W]`` per-pixel cluster probabilities of the two views.
        displacement: ``T >= 0``.
        collapsed: one joint for all displacements, or one per displacement.
        mask: optional ``[B, H, W]`` (or ``[B, 1, H, W]``) weights in {0, 1}; masked pixels contribute no pairs.

    Returns:
        ``[k, k]`` if collapsed else ``[(2T+1)^2, k, k]`` (row-major over ``(t_y, t_x)``).
    """
    return normalise_joint(segmentation_counts(p1, p2, displacement, collapsed, mask))


def information_loss(joint: torch.Tensor, lamb: float = 1.0) -> torch.Tensor:
    """``L = -sum_ij P_ij (log P_ij - lamb log P_i - lamb log P_j)``, averaged over leading dims.

    Args:
        joint: ``[k, k]`` or ``[D, k, k]`` symmetric joint(s) summing to 1 (see :func:`iic_joint`,
            :func:`segmentation_joint`).
        lamb: weight of the marginal entropies (1 = mutual information; > 1 pushes harder against collapse).

    Returns:
        scalar; in ``[-(2 lamb - 1) log k, 0]`` (see the module docstring).
    """
    p_i = joint.sum(dim=-1, keepdim=True).clamp(min=EPS)  # [..., k, 1]
    p_j = joint.sum(dim=-2, keepdim=True).clamp(min=EPS)  # [..., 1, k]
    p = joint.clamp(min=EPS)
    per_joint = -(joint * (p.log() - lamb * p_i.log() - lamb * p_j.log())).sum(dim=(-1, -2))
    return per_joint.mean()


def information_terms(joint: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mutual information and the two entropies it is made of, in nats, for logging (no gradient).

    ``H(y) = -sum_i P_i log P_i`` (marginal entropy: low = collapse onto few clusters),
    ``H(y | y') = H(P) - H(P_j)`` (conditional entropy: high = the views disagree),
    ``I(y; y') = H(y) - H(y | y')`` in ``[0, log k]``. Averaged over leading dims of ``[D, k, k]`` joints.
    """
    with torch.no_grad():
        p = joint.clamp(min=EPS)
        h_joint = -(joint * p.log()).sum(dim=(-1, -2))
        p_i = joint.sum(dim=-1)
        p_j = joint.sum(dim=-2)
        h_i = -(p_i * p_i.clamp(min=EPS).log()).sum(dim=-1)
        h_j = -(p_j * p_j.clamp(min=EPS).log()).sum(dim=-1)
        conditional = h_joint - h_j
        return {
            "mutual_information": (h_i + h_j - h_joint).mean(),
            "marginal_entropy": h_i.mean(),
            "conditional_entropy": conditional.mean(),
        }


def iic_loss(p1: torch.Tensor, p2: torch.Tensor, lamb: float = 1.0) -> torch.Tensor:
    """Image-level IIC loss: :func:`information_loss` of :func:`iic_joint`.

    Args:
        p1, p2: ``[N, k]`` softmax outputs of two views of the same N samples.
        lamb: marginal-entropy weight.

    Returns:
        scalar ``-sum P (log P - lamb log P_i - lamb log P_j)``; ``-I(y; y')`` when ``lamb = 1``.
    """
    return information_loss(iic_joint(p1, p2), lamb)


def iic_segmentation_loss(
    p1: torch.Tensor,
    p2: torch.Tensor,
    displacement: int = 10,
    lamb: float = 1.0,
    collapsed: bool = True,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pixel-level IIC loss with local spatial invariance.

    ``collapsed=True``: :func:`information_loss` of the joint summed over displacements ``t in [-T, T]^2``;
    ``collapsed=False``: the loss of each displacement's own normalised joint, averaged over the ``(2T+1)^2``
    displacements (the IIC setting).

    Args:
        p1, p2: ``[B, k, H, W]`` per-pixel softmax outputs of the two views (aligned pixel grids).
        displacement: ``T``.
        lamb: marginal-entropy weight.
        collapsed: see above.
        mask: optional ``[B, H, W]`` {0, 1} pixels to use (IIC ignores pixels outside the chosen classes).

    Returns:
        scalar loss (range: module docstring).
    """
    return information_loss(segmentation_joint(p1, p2, displacement, collapsed, mask), lamb)
