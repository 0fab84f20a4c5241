"""Small helpers for losses that must mean the same thing with 1 or N processes (no dependency on the engine)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def global_mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``total / count`` over the global batch, as this process's share of a DDP-averaged loss.

    Per-pixel losses with ignored pixels (or any loss normalised by a data-dependent count) must be divided by the
    count over *all* processes: DDP averages gradients over the W processes, so each process returns
    ``total_r * W / count_global`` and the average is ``sum_r total_r / count_global``, exactly the single-process
    value. Without distribution this is ``total / count``.
    """
    count = count.detach().to(total.dtype)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        count = count.clone()
        dist.all_reduce(count)
        return total * dist.get_world_size() / count.clamp_min(1)
    return total / count.clamp_min(1)


def gather_with_grad(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """``x`` of every process concatenated along ``dim`` in rank order, differentiable: the gradient of each
    process's part flows back to it (summed over the processes that use it). Without distribution: ``x``.

    A loss that compares examples across the global batch (contrastive negatives) computes the same value with 1
    or N processes this way; every process then computes the whole loss, and DDP's gradient average restores the
    single-process gradient.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=dim)
