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
