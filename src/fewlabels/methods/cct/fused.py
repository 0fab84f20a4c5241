"""Upsampling stages of the K auxiliary decoders fused with the consistency loss and its gradient.

Why: with K = 30 decoders the full-resolution aux logits ``[K, B, C, H, W]`` are K times the size of the main
decoder's output (82 MB at batch 2, 21 classes, 128x128). Autograd walks over that tensor ~20 times per step
(bias, softmax, difference, square, mean, and their backward), which on a CPU costs far more than the 1.6% of
the FLOPs the decoders represent (the reference: +35% step time at K = 30). Here the three pixel-shuffle
stages, the loss and the backward pass through them are computed together, a few decoders at a time, so the
full-resolution tensors of a chunk stay in cache and are never all held in memory. The forward stores the
gradients with respect to the stage inputs and weights; the backward only scales them by the incoming gradient
(the loss is a scalar).

Supported distances: ``mse`` and ``kl`` (with or without confidence masking); other terms use the autograd
path.

The first layer of the aux decoders is fused with the perturbations too: a perturbation that multiplies the
features by a mask is folded into that layer (:func:`fold_channel_masks`, :func:`fold_spatial_masks`), so the K
perturbed copies of the features are only formed for the types that need them (:func:`first_layer_of_copies`).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

__all__ = [
    "CPU_CHUNK_ELEMENTS",
    "first_layer_of_copies",
    "fold_batch",
    "fold_channel_masks",
    "fold_spatial_masks",
    "fused_stages_consistency",
    "fused_vat_direction",
    "l2_normalize",
    "stages_value_and_grad",
]


def l2_normalize(d: Tensor, sample_dims: int = 3) -> Tensor:
    """Divide each sample of ``d`` by its L2 norm over its last ``sample_dims`` dims (zero stays zero)."""
    norm = d.flatten(-sample_dims).norm(dim=-1).view(*d.shape[:-sample_dims], *([1] * sample_dims))
    # A clamp instead of the reference's "+ 1e-8": a small gradient is rescaled to unit norm, not shrunk towards 0.
    return d / norm.clamp(min=torch.finfo(d.dtype).tiny)


def _full(x: Tensor) -> Tensor:
    """Half-precision tensors (autocast outputs) to float32; float32/float64 unchanged."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


#: Full-resolution elements that a fused chunk holds at once on the CPU (1 MB of float32, the L2 cache of a core):
#: the chunk's logits and the few same-sized temporaries of the loss stay near the core.
CPU_CHUNK_ELEMENTS = 1 << 18


def _chunks(k: int, n: int, per_position: int, chunk_elements: int | None) -> tuple[int, int]:
    """``(decoders, positions)`` per chunk: whole decoders while one fits in ``chunk_elements``, else one decoder
    and a run of the stage-0 positions (each position's sub-pixel tree is decoded independently of the others)."""
    if chunk_elements is None:
        return k, n
    whole = per_position * n
    if whole <= chunk_elements:
        return max(1, min(k, chunk_elements // whole)), n
    return 1, max(1, chunk_elements // per_position)


#: log2(e): the last stage computes its logits in base-2 units, ``l * LOG2E``, so that the softmax can use ``exp2``
#: (on the CPU about 3x faster than ``exp``, which dominated the loss's element-wise passes)
LOG2E = 1.0 / math.log(2.0)


def _softmax_parts(logits2: Tensor, in_place: bool = False) -> tuple[Tensor, Tensor]:
    """``(exp(l - max), sum_c exp(l - max))`` over dim 1 from the base-2 logits ``logits2 = l * LOG2E``,
    overwriting ``logits2`` with ``(l - max) * LOG2E`` (``in_place``: with the first result).

    Three vectorised passes in cache; ``torch.softmax`` over a non-innermost dimension was 2-3x slower here.
    """
    shifted = logits2.sub_(logits2.amax(dim=1, keepdim=True))
    e = shifted.exp2_() if in_place else shifted.exp2()
    return e, e.sum(dim=1, keepdim=True)


def _mse_grad(logits: Tensor, target: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Sum of ``(softmax(l) - t)^2`` over kept elements and *half* its gradient w.r.t. ``l`` (class dim 1); the
    caller doubles the (small) parameter and input gradients instead of every full-resolution element.

    ``g / 2 = p (d - sum_c p d)`` with ``p = softmax(l)`` and ``d = p - t`` (softmax Jacobian), computed in place
    in two passes: ``p d`` over ``d``, then ``- p s``.
    """
    e, total = _softmax_parts(logits, in_place=True)
    p = e.div_(total)
    d = p - target
    if mask is not None:
        d.mul_(mask)
    loss = torch.dot(d.view(-1), d.view(-1))
    pd = d.mul_(p)
    return loss, pd.addcmul_(p, pd.sum(dim=1, keepdim=True), value=-1.0)


#: what the gradient returned by each distance's function is to be multiplied by
_GRAD_SCALE = {"mse": 2.0, "kl": 1.0}


def _kl_grad(logits: Tensor, target: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """``-sum t * log_softmax(l)`` over kept elements (the entropy term is added by the caller) and its
    gradient ``softmax(l) - t`` (exact because each target pixel sums to 1)."""
    e, total = _softmax_parts(logits)
    shifted2 = logits  # (l - max) * LOG2E after _softmax_parts
    t = target if mask is None else target * mask
    # -sum t (l - max - log total) = -sum t (l - max) + sum_pixels (sum_c t) log total   (t broadcast over K)
    loss = (t.sum(dim=0, keepdim=True) * total.log()).sum() - (shifted2 * t).sum() / LOG2E
    g = e.div_(total).sub_(target)
    if mask is not None:
        g.mul_(mask)
    return loss, g


def stages_value_and_grad(
    h: Tensor,
    weight: Tensor,
    bias: Tensor,
    target: Tensor,
    mask: Tensor | None,
    kind: str,
    chunk_elements: int | None,
    param_grads: bool = True,
    workers: int = 1,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Loss sum and its gradients through the pixel-shuffle stages, a chunk at a time: a few whole decoders, or one
    decoder's run of positions when a whole decoder does not fit in ``chunk_elements`` (:func:`_chunks`).

    ``workers`` above 1 splits the decoders into up to that many contiguous groups, decoded concurrently by
    single-threaded worker threads (CPUs; see :func:`_worker_pool`). Each decoder's gradients are computed as in one
    call; the loss sum adds the groups' sums (the same value up to float rounding). The split is skipped when a
    dispatch mode is active (:func:`_map_in_workers`).

    Layout (batch folded into the positions, so each stage is one ``[4C, C] @ [C, M]`` product per decoder):
    ``h [K, C, B*hw]``, ``target [C, S, B, hw]``, ``mask [1, S, B, hw]`` or None, ``weight [S_st, K, 4C, C]``,
    ``bias [S_st, K, 4C]``. Returns ``(sum, grad_h [K, C, B*hw], grad_weight, grad_bias)`` (the last two None
    when ``param_grads`` is False, e.g. for the VAT power iteration).
    """
    groups = min(workers, h.shape[0])
    if groups > 1:
        return _split_over_workers(groups, h, weight, bias, (target, mask, kind, chunk_elements, param_grads))
    k, c, n = h.shape
    stages = weight.shape[0]
    r = 4**stages
    grad_h = torch.empty_like(h)
    grad_b = torch.zeros_like(bias) if param_grads else None
    total = h.new_zeros(())
    k_step, p_step = _chunks(k, n, c * r, chunk_elements)
    loss_grad = _mse_grad if kind == "mse" else _kl_grad
    # The last stage's logits in base-2 units (see LOG2E); its backward uses the unscaled weights.
    fwd_weight = torch.cat([weight[:-1], weight[-1:] * LOG2E])
    fwd_bias = torch.cat([bias[:-1], bias[-1:] * LOG2E])
    # Weight gradients transposed, [S, K, C, 4C]: a [C, M] @ [M, 4C] product ran faster than [4C, M] @ [M, C].
    grad_wt = weight.new_zeros(weight.shape[0], k, c, 4 * c) if param_grads else None
    # The stage-0 positions (batch folded in) are the innermost axis of every layout: [C, S, n] for the target.
    target_flat, mask_flat = target.reshape(c, r, n), None if mask is None else mask.reshape(1, r, n)
    for p0 in range(0, n, p_step):
        p1 = min(n, p0 + p_step)
        whole = p1 - p0 == n
        target_c = target_flat if whole else target_flat[:, :, p0:p1].contiguous()  # reused by every decoder
        mask_c = mask_flat if whole or mask_flat is None else mask_flat[:, :, p0:p1].contiguous()
        for k0 in range(0, k, k_step):
            k1 = min(k, k0 + k_step)
            kc = k1 - k0
            acts = [h[k0:k1, :, p0:p1]]
            for s in range(stages):
                m = acts[-1].shape[-1]
                out = torch.baddbmm(
                    fwd_bias[s, k0:k1].unsqueeze(-1).expand(kc, 4 * c, m), fwd_weight[s, k0:k1], acts[-1]
                )
                if s < stages - 1:
                    out.relu_()
                # channels c*4 + sub-pixel -> (c, sub-pixel): the sub-pixel becomes the outermost position index
                acts.append(out.view(kc, c, 4 * m))
            logits = acts[-1].view(kc, *target_c.shape)
            loss, g = loss_grad(logits, target_c, mask_c)
            total += loss
            g = g.view(kc, 4 * c, -1)
            for s in range(stages - 1, -1, -1):
                a = acts[s]  # input of stage s: [kc, C, M]
                if grad_wt is not None and grad_b is not None:  # summed over the position chunks
                    grad_wt[s, k0:k1] += torch.bmm(a, g.transpose(1, 2))  # (baddbmm_ escapes FLOP counters)
                    grad_b[s, k0:k1] += g.sum(dim=2)
                ga = torch.bmm(weight[s, k0:k1].transpose(1, 2), g)  # [kc, C, M]
                if s > 0:
                    # a = relu(previous pre-activation) viewed as [C, 4M]: its positive part is the ReLU's support
                    g = torch.ops.aten.threshold_backward(ga, a, 0.0).view(kc, 4 * c, -1)
                else:
                    grad_h[k0:k1, :, p0:p1] = ga
    grad_w = grad_wt.transpose(2, 3).contiguous() if grad_wt is not None else None
    scale = _GRAD_SCALE[kind]
    if scale != 1.0:
        for grad in (grad_h, grad_w, grad_b):
            if grad is not None:
                grad.mul_(scale)
    return total, grad_h, grad_w, grad_b


# --- the decoders split over the CPU cores ----------------------------------------------------------------------
# The products of a chunk are small (inner dimension = the class count) and its element-wise passes are ~1 MB:
# torch's intra-op threads barely speed them up (K = 30, forward and backward: 98 ms at 1 thread, 80 ms at 2). The
# K decoders are independent, so they are split into one group per core instead, each decoded by a worker thread
# whose own ops run single-threaded (torch releases the GIL inside every op): 72 ms on the same 2 cores.

_T = TypeVar("_T")

#: per (process id, worker count): a forked child inherits the parent's pools without their threads
_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _single_threaded_worker(started: threading.Barrier) -> None:
    torch.get_num_threads()  # the thread's lazy intra-op init first: it would later reset the count below
    torch.set_num_threads(1)
    started.wait()


def _worker_pool(workers: int) -> ThreadPoolExecutor:
    """``workers`` threads whose torch ops run on one intra-op thread each (created once per count)."""
    with _POOLS_LOCK:
        key = (os.getpid(), workers)
        pool = _POOLS.get(key)
        if pool is None:
            caller_threads = torch.get_num_threads()
            started = threading.Barrier(workers + 1)
            pool = ThreadPoolExecutor(workers, "fewlabels-fused", _single_threaded_worker, (started,))
            for _ in range(workers):  # start every worker now (each blocks in the barrier until all have started)
                pool.submit(int)
            started.wait()
            # torch.set_num_threads also sets the count that new threads start from: give the caller's back
            torch.set_num_threads(caller_threads)
            _POOLS[key] = pool
        return pool


def _cpu_workers(chunk_elements: int | None, workers: int | None = None) -> int:
    """Worker threads for the stages: ``workers`` (default ``torch.get_num_threads()``) on the CPU, where
    ``chunk_elements`` is set; always 1 on a GPU (``chunk_elements`` None), whose kernels are not split."""
    if chunk_elements is None:
        return 1
    return torch.get_num_threads() if workers is None else workers


def _no_grad_call(fn: Callable[..., _T], args: tuple[Any, ...]) -> _T:
    with torch.no_grad():  # grad mode is per thread: a worker starts with it enabled
        return fn(*args)


def _map_in_workers(fn: Callable[..., _T], calls: list[tuple[Any, ...]], workers: int) -> list[_T]:
    """``[fn(*args) for args in calls]`` (under ``no_grad``), the calls spread over up to ``workers`` single-threaded
    worker threads; in the calling thread when there is one worker or one call, or when a dispatch mode is active
    (e.g. torch's ``FlopCounterMode``: modes are per thread, and the workers' ops would escape it)."""
    workers = min(workers, len(calls))
    if workers <= 1 or _get_current_dispatch_mode() is not None:
        return [_no_grad_call(fn, args) for args in calls]
    pool = _worker_pool(workers)
    return [f.result() for f in [pool.submit(_no_grad_call, fn, args) for args in calls]]


def _split_over_workers(
    groups: int, h: Tensor, weight: Tensor, bias: Tensor, rest: tuple[Any, ...]
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """:func:`stages_value_and_grad` of ``groups`` contiguous groups of the decoders, one per worker thread;
    ``rest``: its arguments after ``bias``. The loss sum adds the groups' sums in order."""
    k = h.shape[0]
    bounds = [k * i // groups for i in range(groups + 1)]
    calls = [(h[a:b], weight[:, a:b], bias[:, a:b], *rest) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    parts = _map_in_workers(stages_value_and_grad, calls, groups)
    total = parts[0][0]
    for part in parts[1:]:
        total = total + part[0]
    grad_h = torch.cat([part[1] for part in parts])
    if parts[0][2] is None:
        return total, grad_h, None, None
    grad_w = torch.cat([part[2] for part in parts if part[2] is not None], dim=1)
    grad_b = torch.cat([part[3] for part in parts if part[3] is not None], dim=1)
    return total, grad_h, grad_w, grad_b


class _FusedStages(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        h: Tensor,
        weight: Tensor,
        bias: Tensor,
        target: Tensor,
        mask: Tensor | None,
        kind: str,
        chunk_elements: int | None,
        workers: int,
    ) -> Tensor:
        # float32 throughout: under bf16 autocast the stored gradients would not match the float32 parameters
        with torch.autocast(device_type=h.device.type, enabled=False):
            total, grad_h, grad_w, grad_b = stages_value_and_grad(
                _full(h), _full(weight), _full(bias), _full(target), mask, kind, chunk_elements, workers=workers
            )
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        return total

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        grad_h, grad_w, grad_b = ctx.saved_tensors
        return grad_h * grad_out, grad_w * grad_out, grad_b * grad_out, None, None, None, None, None


def fold_batch(target_sub: Tensor) -> Tensor:
    """``[B, C, S, hw]`` (sub-pixel layout) -> ``[C, S, B, hw]``: the target layout of the fused stages."""
    return target_sub.permute(1, 2, 0, 3).contiguous()


def fused_stages_consistency(
    h: Tensor,
    stage_weight: Tensor,
    stage_bias: Tensor,
    target_sub: Tensor,
    kind: str = "mse",
    conf_threshold: float | None = None,
    chunk_elements: int | None = CPU_CHUNK_ELEMENTS,
    workers: int | None = None,
) -> Tensor:
    """``1/K sum_k d(target, stages_k(h_k))``: the pixel-shuffle stages of K decoders and the consistency
    loss.

    Args:
        h: classifier outputs ``[K, B, C, h*w]`` (the ``D -> C`` 1x1 convolution of the perturbed features).
        stage_weight: ``[S, K, 4C, C]``, stage_bias ``[S, K, 4C]`` (see
            :class:`~fewlabels.methods.cct.decoders.StackedUpsampleDecoders`).
        target_sub: main-decoder probabilities in the sub-pixel layout ``[B, C, 4**S, h*w]``.
        kind: ``"mse"`` or ``"kl"`` (same values as :func:`~fewlabels.methods.cct.losses.softmax_mse_loss` /
            :func:`~fewlabels.methods.cct.losses.softmax_kl_loss` on the stacked outputs).
        conf_threshold: optional confidence masking of the target pixels.
        chunk_elements: full-resolution elements processed at once (1 MB of float32 by default: sized for a
            CPU core's L2 cache); ``None`` processes all K decoders in one chunk (GPUs).
        workers: threads that decode groups of the K decoders concurrently (see :func:`stages_value_and_grad`);
            default ``torch.get_num_threads()``; only on the CPU (``chunk_elements`` set), else always 1.

    Returns:
        The scalar loss; its gradient reaches ``h``, ``stage_weight`` and ``stage_bias``.
    """
    if kind not in ("mse", "kl"):
        raise ValueError(f"fused consistency supports mse and kl, got {kind!r}")
    h = _full(h)  # bf16 autocast outputs: the loss and its gradients are computed in float32
    k, b, c, hw = h.shape
    target = fold_batch(target_sub.detach().to(h.dtype))  # [C, S, B, hw]
    mask = None
    if conf_threshold is not None:
        mask = (target.amax(dim=0, keepdim=True) > conf_threshold).to(h.dtype)  # [1, S, B, hw]
    h_folded = h.permute(0, 2, 1, 3).reshape(k, c, b * hw)  # small: [K, C, B*hw]
    # The fused function returns the raw sum; normalisation stays in autograd (a tensor when it is data-dependent).
    workers = _cpu_workers(chunk_elements, workers)
    raw = _FusedStages.apply(h_folded, stage_weight, stage_bias, target, mask, kind, chunk_elements, workers)
    elements = k * target.numel()
    if kind == "mse":
        if mask is None:
            return raw / elements
        # mean over kept elements: K * C * kept pixels (none kept -> loss 0 and zero gradient)
        return raw / (mask.sum() * (k * c)).clamp(min=1.0)
    # KL: sum over kept elements of t (log t - log q), divided by all elements (mean) or by the pixel count.
    t_kept = target if mask is None else target * mask
    entropy = k * torch.special.xlogy(t_kept, target).sum()
    return (entropy + raw) / (elements if mask is None else elements // c)


# --- the first layer of the aux decoders, with the perturbations folded in -----------------------------------
# The first layer of every aux decoder is a 1x1 convolution without bias: linear and pointwise. A perturbation that
# multiplies the features by a mask commutes with it, so the perturbed copies of ``z`` need not be formed:
# ``W (z * m) = (W z) * m`` for a mask constant over the channels, ``W (z * m) = (W * m) z`` for one constant over the
# positions. The three functions below map ``weight [n, C, D]`` (the classifiers of n decoders) and the features to
# the classifier outputs ``[n, B, C, h*w]``; :meth:`~fewlabels.methods.cct.model.CCTModel.classifier_outputs` picks
# one per run of perturbations of the same kind.


def first_layer_of_copies(weight: Tensor, copies: Tensor) -> Tensor:
    """The first layer of each decoder on its own perturbed copy: ``copies [n, B, D, h*w]`` -> ``[n, B, C, h*w]``."""
    return torch.matmul(weight.unsqueeze(1), copies)


def fold_channel_masks(weight: Tensor, zf: Tensor, keep: Tensor) -> Tensor:
    """``W_k (z * m_k)`` with the channel multipliers ``keep [n, B, D]`` moved onto the weights.

    Shapes: ``weight [n, C, D]``, ``zf [B, D, h*w]`` -> ``[n, B, C, h*w]``; one ``[C, D]`` weight per decoder and
    sample instead of ``n`` copies of the features.
    """
    return torch.einsum("kbcd,bdp->kbcp", weight.unsqueeze(1) * keep.unsqueeze(2), zf)


def fold_spatial_masks(weight: Tensor, zf: Tensor, mask: Tensor) -> Tensor:
    """``W_k (z * m_k)`` as ``(W_k z) * m_k`` for the position multipliers ``mask [n, B, h*w]``.

    Shapes: ``weight [n, C, D]``, ``zf [B, D, h*w]`` -> ``[n, B, C, h*w]``: one ``[n C, D] @ [D, B h w]`` product
    followed by a mask on C channels instead of one on D.
    """
    return torch.einsum("kcd,bdp->kbcp", weight, zf) * mask.unsqueeze(2)


@torch.no_grad()
def fused_vat_direction(
    z: Tensor,
    classifier: Tensor,
    stage_weight: Tensor,
    stage_bias: Tensor,
    xi: float = 1e-4,
    iterations: int = 1,
    init: Tensor | None = None,
    chunk_elements: int | None = CPU_CHUNK_ELEMENTS,
) -> Tensor:
    """:func:`~fewlabels.methods.cct.perturbations.vat_direction` for ``n`` stacked decoders.

    The gradient of the KL comes from the fused stages instead of autograd: same result, no full-resolution
    autograd graph. Computed in float32 even under bf16 autocast (in bf16 the finite difference of the power
    iteration would be rounding noise).

    Shapes: ``z [B, D, h, w]``, ``classifier [n, C, D]``, ``stage_weight [S, n, 4C, C]``,
    ``stage_bias [S, n, 4C]`` -> unit-norm directions ``[n, B, D, h, w]``.
    """
    with torch.autocast(device_type=z.device.type, enabled=False):
        d = _vat_direction_fp32(
            _full(z),
            _full(classifier),
            _full(stage_weight),
            _full(stage_bias),
            xi,
            iterations,
            init,
            chunk_elements,
        )
    return d.to(z.dtype)


def _vat_direction_fp32(
    z: Tensor,
    classifier: Tensor,
    stage_weight: Tensor,
    stage_bias: Tensor,
    xi: float,
    iterations: int,
    init: Tensor | None,
    chunk_elements: int | None,
) -> Tensor:
    n, c, dim = classifier.shape
    b, _, hh, ww = z.shape
    hw = hh * ww
    z = z.detach()
    zf = z.flatten(2)  # [B, D, hw]

    def project(x: Tensor) -> Tensor:  # [n, B, D, hw] -> folded classifier output [n, C, B*hw]
        return torch.matmul(classifier.unsqueeze(1), x).permute(0, 2, 1, 3).reshape(n, c, b * hw)

    # clean predictions of each VAT decoder: the KL targets [n, C, S, B, hw]
    clean = project(zf.unsqueeze(0).expand(n, -1, -1, -1))
    last = stage_weight.shape[0] - 1
    for s in range(last + 1):
        scale = LOG2E if s == last else 1.0  # base-2 logits for the softmax (see LOG2E)
        clean = torch.baddbmm(stage_bias[s].unsqueeze(-1) * scale, stage_weight[s] * scale, clean)
        if s < last:
            clean.relu_()
        clean = clean.view(n, c, -1)
    e, total = _softmax_parts(clean.view(n, c, -1, b, hw), in_place=True)
    targets = e.div_(total)
    step = xi * z.flatten(1).norm(dim=1).clamp(min=1.0).view(1, -1, 1, 1)
    d = l2_normalize(init.to(z) if init is not None else torch.rand(n, *z.shape, device=z.device, dtype=z.dtype) - 0.5)
    for _ in range(iterations):
        h = project(zf.unsqueeze(0) + step * d.flatten(-2))
        calls = [
            (
                h[k : k + 1],
                stage_weight[:, k : k + 1],
                stage_bias[:, k : k + 1],
                targets[k],
                None,
                "kl",
                chunk_elements,
                False,
            )
            for k in range(n)
        ]
        # one call per decoder (each has its own targets), spread over the CPU cores as the fused loss's groups
        workers = _cpu_workers(chunk_elements)
        grad_h = (
            torch.cat([part[1] for part in _map_in_workers(stages_value_and_grad, calls, workers)])
            .view(n, c, b, hw)
            .permute(0, 2, 1, 3)
        )  # [n, B, C, hw]
        # back through the classifier: grad_d = step * W^T grad_h (the positive step vanishes in the normalisation)
        grad_d = torch.matmul(classifier.transpose(1, 2).unsqueeze(1), grad_h)  # [n, B, D, hw]
        d = l2_normalize(grad_d.view(n, b, dim, hh, ww))
    return d
