"""Fully connected CRF (Krähenbühl & Koltun, NIPS 2011) with mean-field inference, in torch.

CCT's reference refines its CAM pseudo-labels with ``pydensecrf`` (a C++ permutohedral lattice); no wheel of it
installs on Python 3.11 here, so this module computes the same model with plain tensor operations.

Model. Pixels ``i`` with position ``p_i`` (in pixels) and colour ``I_i`` (0-255); labels ``1..L``; unary energies
``U_i(l)``; two Potts pairwise terms, each ``w * k(i, j) * [l_i != l_j]``:

- appearance-free (Gaussian) kernel ``k_g(i, j) = exp(-|p_i - p_j|^2 / (2 sxy_g^2))``, weight ``gaussian_compat``;
- bilateral kernel ``k_b(i, j) = exp(-|p_i - p_j|^2 / (2 sxy_b^2) - |I_i - I_j|^2 / (2 srgb^2))``, weight
  ``bilateral_compat``.

As in ``pydensecrf`` (its default ``NORMALIZE_SYMMETRIC``), each kernel matrix ``K`` (diagonal included) is
normalised symmetrically, ``K~ = D^-1/2 K D^-1/2`` with ``D = diag(K 1)``, which keeps messages of order one
whatever the image size. Mean field starts from ``Q = softmax(-U)`` and repeats ``iterations`` times::

    Q <- softmax(-U + gaussian_compat * K~_g Q + bilateral_compat * K~_b Q)

(the Potts term lowers the energy of the labels that similar pixels hold; constants per pixel cancel in the
softmax). ``iterations = 0`` returns ``softmax(-U)``, whose argmax is the unary's.

Cost, and the approximation for large images. Exact message passing touches every pixel pair: ``O(N^2)`` per
kernel and iteration for ``N`` pixels. Images of at most ``exact_pixels`` pixels (4096, e.g. 64 x 64) are computed
exactly, in row blocks (memory ``O(block * N)``). Larger images use:

- Gaussian kernel: the exact kernel restricted to a ``(2r+1)^2`` window with ``r = ceil(4 sxy_g)`` (two separable
  1-D convolutions, ``O(N r)``); each dropped pair weighs less than ``exp(-8) = 3.4e-4`` of a neighbour's;
- bilateral kernel: the sum over source pixels ``j`` is taken over a strided subsample (every ``s``-th pixel in
  both directions, each standing for ``s^2`` pixels), with ``s`` the smallest stride that keeps at most
  ``exact_pixels`` sources; every pixel is still a query with its own colour, so label edges follow colour edges at
  full resolution. Since ``s`` stays well below ``sxy_b`` (50-80 px), the spatial part is sampled finely; the
  colour part is sampled, not averaged. Cost ``O(N * exact_pixels)`` per iteration: a VOC image (500 x 375) is
  ~7.7e8 kernel evaluations; a CPU core does ~4e7 per second (about 25 s per evaluation pass, several minutes per
  image for 10 iterations and the recipe's two CRFs), a GPU orders of magnitude more.

Kernel matrices of at most :data:`CACHE_ENTRIES` entries (e.g. a 96 x 96 image against its 2304 bilateral sources)
are computed once, so each iteration is one matrix product.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from fewlabels.config import fail

__all__ = ["CRFSettings", "crf_refine_labels", "dense_crf", "unary_from_labels"]


@dataclass
class CRFSettings:
    """Dense CRF refinement of the pseudo-labels (defaults: the CCT reference's ``crf_inference_label``)."""

    enabled: bool = field(default=True, metadata={"help": "refine the thresholded CAM label maps with a dense CRF"})
    iterations: int = field(default=10, metadata={"help": "mean-field iterations (0 = the unary's argmax)", "min": 0})
    gt_prob: float = field(default=0.7, metadata={"help": "probability a label map gives its own label", "gt": 0})
    gaussian_sxy: float = field(default=3.0, metadata={"help": "appearance-free kernel width (px)", "gt": 0})
    gaussian_compat: float = field(default=3.0, metadata={"help": "appearance-free kernel weight", "min": 0})
    bilateral_sxy: float = field(default=50.0, metadata={"help": "bilateral kernel spatial width (px)", "gt": 0})
    bilateral_srgb: float = field(default=5.0, metadata={"help": "bilateral kernel colour width (0-255)", "gt": 0})
    bilateral_compat: float = field(default=10.0, metadata={"help": "bilateral kernel weight", "min": 0})
    exact_pixels: int = field(
        default=4096,
        metadata={
            "help": "images with at most this many pixels are computed exactly (O(N^2)); larger ones use a "
            "windowed Gaussian kernel and this many bilateral source pixels",
            "min": 1,
        },
    )

    def validate(self) -> None:
        if not 0 < self.gt_prob < 1:
            fail("crf.gt_prob", f"must be in (0, 1), got {self.gt_prob}")


def unary_from_labels(labels: Tensor, n_labels: int, gt_prob: float = 0.7) -> Tensor:
    """Unary energies ``[L, H, W]`` of a label map ``[H, W]`` (values ``0..L-1``): ``-log(gt_prob)`` for the
    pixel's label, ``-log((1 - gt_prob) / (L - 1))`` for the others (zeros when ``L = 1``)."""
    if n_labels == 1:
        return torch.zeros((1, *labels.shape), dtype=torch.float32, device=labels.device)
    other = -math.log((1.0 - gt_prob) / (n_labels - 1))
    unary = torch.full((n_labels, *labels.shape), other, dtype=torch.float32, device=labels.device)
    unary.scatter_(0, labels.long()[None], -math.log(gt_prob))
    return unary


def _pair_sum(fq: Tensor, fs: Tensor, values: Tensor, block: int = 2048) -> Tensor:
    """``out[i] = sum_j exp(-|fq_i - fs_j|^2 / 2) values[j]``: ``fq [N, d]``, ``fs [M, d]``, ``values [M, C]``."""
    out = values.new_empty(fq.shape[0], values.shape[1])
    for start in range(0, fq.shape[0], block):
        out[start : start + block] = _gaussian_matrix(fq[start : start + block], fs) @ values
    return out


def _gaussian_matrix(fq: Tensor, fs: Tensor) -> Tensor:
    """``exp(-|fq_i - fs_j|^2 / 2)`` ``[N, M]``, built in place: one fused product for the squared distances, then
    two passes over the matrix (the matrix dominates a small image's CRF, so it is built once, without temporaries)."""
    d2 = torch.addmm((fq * fq).sum(1, keepdim=True) + (fs * fs).sum(1)[None], fq, fs.T, alpha=-2.0)
    return d2.clamp_min_(0.0).mul_(-0.5).exp_()


def _positions(h: int, w: int, like: Tensor) -> Tensor:
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=like.dtype, device=like.device),
        torch.arange(w, dtype=like.dtype, device=like.device),
        indexing="ij",
    )
    return torch.stack([ys.flatten(), xs.flatten()], dim=1)


class _Kernel(Protocol):
    """One normalised kernel: ``apply(Q [N, L]) = D^-1/2 K D^-1/2 Q``."""

    def apply(self, q: Tensor) -> Tensor: ...


#: kernel matrices of at most this many entries are computed once and kept (256 MB in float32)
CACHE_ENTRIES = 1 << 26


class _ExactKernel(_Kernel):
    """Every pair of pixels (features already divided by their widths); with ``sources`` (indices) the sum over
    ``j`` runs over those pixels only, each weighing ``weight``. A matrix of at most :data:`CACHE_ENTRIES` entries
    is kept between iterations; a larger one is recomputed in row blocks each time."""

    def __init__(self, features: Tensor, sources: Tensor | None = None, weight: float = 1.0) -> None:
        self.features = features
        self.sources = sources
        self.src = features if sources is None else features[sources]
        self.weight = weight
        self.matrix: Tensor | None = None
        if features.shape[0] * self.src.shape[0] <= CACHE_ENTRIES:
            self.matrix = _gaussian_matrix(features, self.src)
        ones = features.new_ones(self.src.shape[0], 1)
        self.norm = (weight * self._sum(ones)).clamp_min(1e-20).rsqrt()  # [N, 1]

    def _sum(self, values: Tensor) -> Tensor:
        return self.matrix @ values if self.matrix is not None else _pair_sum(self.features, self.src, values)

    def apply(self, q: Tensor) -> Tensor:
        scaled = q * self.norm
        if self.sources is not None:
            scaled = scaled[self.sources]
        return self.norm * (self.weight * self._sum(scaled))


class _WindowGaussian(_Kernel):
    """The appearance-free kernel within a ``(2r+1)^2`` window: two separable convolutions with zero padding."""

    def __init__(self, h: int, w: int, sxy: float, like: Tensor) -> None:
        self.h, self.w = h, w
        self.r = max(1, math.ceil(4.0 * sxy))
        d = torch.arange(-self.r, self.r + 1, dtype=like.dtype, device=like.device)
        self.taps = torch.exp(-0.5 * (d / sxy) ** 2)
        self.norm = self._conv(like.new_ones(h * w, 1)).clamp_min(1e-20).rsqrt()

    def _conv(self, v: Tensor) -> Tensor:
        c = v.shape[1]
        x = v.T.reshape(c, 1, self.h, self.w)
        x = F.conv2d(x, self.taps.view(1, 1, 1, -1), padding=(0, self.r))
        x = F.conv2d(x, self.taps.view(1, 1, -1, 1), padding=(self.r, 0))
        return x.reshape(c, -1).T

    def apply(self, q: Tensor) -> Tensor:
        return self.norm * self._conv(q * self.norm)


def _strided_sources(h: int, w: int, limit: int, device: torch.device) -> tuple[Tensor, int]:
    """Flat indices of every ``s``-th pixel (offset ``s // 2``) with ``s`` the smallest stride giving at most
    ``limit`` of them, and ``s``."""
    s = max(1, math.ceil(math.sqrt(h * w / limit)))
    while math.ceil(h / s) * math.ceil(w / s) > limit:
        s += 1
    ys = torch.arange(min(s // 2, h - 1), h, s, device=device)
    xs = torch.arange(min(s // 2, w - 1), w, s, device=device)
    return (ys[:, None] * w + xs[None, :]).flatten(), s


def dense_crf(unary: Tensor, image: Tensor, settings: CRFSettings | None = None) -> Tensor:
    """Mean-field marginals ``Q [L, H, W]`` of the dense CRF with unary energies ``unary [L, H, W]`` on ``image``
    ``[3, H, W]`` with values 0-255 (float), computed in ``unary``'s dtype and on its device (see the module doc
    for the model, the exact and the approximate computation).

    ``unary [B, L, H, W]`` gives ``Q [B, L, H, W]``: B independent CRFs on the same image (e.g. the two thresholded
    maps of a pseudo-label). Their kernels, which depend on the image only, are built once and each iteration
    passes over them once for all B; every map's ``Q`` equals that of its own call."""
    cfg = settings if settings is not None else CRFSettings()
    batched = unary.dim() == 4
    maps = unary if batched else unary[None]
    n_maps, n_labels, h, w = maps.shape
    if image.shape[-2:] != (h, w):
        raise ValueError(f"image {tuple(image.shape)} and unary {tuple(unary.shape)} differ in size")
    u = maps.reshape(n_maps * n_labels, -1).T  # [N, B * L]: map b's labels are columns b * L .. b * L + L - 1

    def softmax(logits: Tensor) -> Tensor:
        return torch.softmax(logits.reshape(-1, n_maps, n_labels), dim=2).reshape(-1, n_maps * n_labels)

    def marginals(q: Tensor) -> Tensor:
        out = q.T.reshape(n_maps, n_labels, h, w)
        return out if batched else out[0]

    q = softmax(-u)
    if cfg.iterations == 0 or n_labels == 1:
        return marginals(q)
    pos = _positions(h, w, u)
    rgb = image.to(u).reshape(image.shape[0], -1).T
    bilateral_features = torch.cat([pos / cfg.bilateral_sxy, rgb / cfg.bilateral_srgb], dim=1)
    kernels: list[tuple[float, _Kernel]] = []
    if h * w <= cfg.exact_pixels:
        kernels.append((cfg.gaussian_compat, _ExactKernel(pos / cfg.gaussian_sxy)))
        kernels.append((cfg.bilateral_compat, _ExactKernel(bilateral_features)))
    else:
        sources, stride = _strided_sources(h, w, cfg.exact_pixels, u.device)
        kernels.append((cfg.gaussian_compat, _WindowGaussian(h, w, cfg.gaussian_sxy, u)))
        kernels.append((cfg.bilateral_compat, _ExactKernel(bilateral_features, sources, float(stride * stride))))
    kernels = [(weight, k) for weight, k in kernels if weight > 0]
    for _ in range(cfg.iterations):
        logits = -u
        for weight, kernel in kernels:
            logits = logits + weight * kernel.apply(q)
        q = softmax(logits)
    return marginals(q)


def crf_refine_labels(image: Tensor, labels: Tensor, n_labels: int, settings: CRFSettings | None = None) -> Tensor:
    """The reference's ``crf_inference_label``: a label map ``[H, W]`` (values ``0..n_labels-1``) refined on
    ``image [3, H, W]`` in ``[0, 1]``; unary from the labels with ``gt_prob``; returns the argmax ``[H, W]``.
    Label maps ``[B, H, W]`` of the same image are refined together (one kernel, see :func:`dense_crf`) into
    ``[B, H, W]``, each as by its own call."""
    cfg = settings if settings is not None else CRFSettings()
    unary = torch.stack([unary_from_labels(m, n_labels, cfg.gt_prob) for m in labels.reshape(-1, *labels.shape[-2:])])
    q = dense_crf(unary, image.float().to(unary.device) * 255.0, cfg)
    return q.argmax(dim=1).reshape(labels.shape)
