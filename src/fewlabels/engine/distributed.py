"""Batch normalisation over the global batch on any backend.

``torch.nn.SyncBatchNorm`` only runs on GPU-like devices; on CPU (gloo) a per-process BatchNorm would normalise with
each process's half of the batch, and a 2-process run would no longer equal the 1-process run at the same global
batch (the reference CCT's multi-GPU runs diverged for reasons of this kind). ``GlobalBatchNorm`` all-reduces the
per-channel sums with autograd support, so statistics and gradients are those of the global batch.
"""

from __future__ import annotations

import atexit

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn

_CLOSE_REGISTERED = False


def close_process_group_at_exit() -> None:
    """Destroy the default process group (and its subgroups) when the interpreter exits, while it is still alive.

    Left to interpreter finalisation, gloo's worker threads can outlive the objects they hold and abort the process
    (SIGABRT, "terminate called without an active exception") after a run that finished: seen once under torchrun
    in CI, rank 1 of a run that had written its last checkpoint. Registered once per process; a no-op when the
    group is gone already (a script that destroyed it itself)."""
    global _CLOSE_REGISTERED
    if not _CLOSE_REGISTERED:
        atexit.register(_close_process_group)
        _CLOSE_REGISTERED = True


def _close_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are computed over every process's batch."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {input.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        c = x.shape[1]
        count = torch.full((1,), x.numel() / c, dtype=x.dtype, device=x.device)
        stats = torch.cat([x.sum(dims), (x * x).sum(dims), count])
        stats = dist_fn.all_reduce(stats)
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean * mean).clamp_min(0)
        if self.running_mean is not None and self.running_var is not None and self.num_batches_tracked is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked.item())
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1).clamp_min(1), alpha=m)
        shape = (1, c) + (1,) * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_batchnorm(module: nn.Module, device_type: str) -> nn.Module:
    """Replace every BatchNorm by a global-batch one: SyncBatchNorm on GPU, GlobalBatchNorm elsewhere."""
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        out = GlobalBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        if module.affine:
            with torch.no_grad():
                out.weight.copy_(module.weight)
                out.bias.copy_(module.bias)
            out.weight.requires_grad_(module.weight.requires_grad)
            out.bias.requires_grad_(module.bias.requires_grad)
        if module.track_running_stats:
            out.load_state_dict(module.state_dict())
    for name, child in module.named_children():
        out.add_module(name, convert_batchnorm(child, device_type))
    return out
