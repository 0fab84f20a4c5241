"""Where AC's two views come from, reproducibly with any number of processes and across resumes.

- **Orderings** (AC): two different orderings per step, drawn from a torch generator seeded by ``(seed, step)``.
  Every process draws the same pair (the engine seeds each rank's global RNG differently, and a pair drawn per
  rank would make a 2-process run differ from a 1-process run), and a resumed run draws what it would have.
- **Augmented views** (IIC baseline, or AC with ``views.jitter``): per-image photometric jitter and a horizontal
  flip, drawn in ``sample(index, rng)`` from the generator the engine derives from (seed, source, epoch, index):
  a pure function of the image's seed, whatever the process count.
- **Global joint**: the IIC joint is a non-linear function of the whole batch, so its pair counts are summed over
  processes (differentiably) before normalising; each process then holds the loss of the global batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from fewlabels.data.base import FewDataset
from fewlabels.methods.ac.orderings import ORDERINGS

__all__ = ["TwoViewDataset", "global_sum", "photometric_jitter", "sample_orderings", "step_generator"]


def step_generator(seed: int, step: int) -> torch.Generator:
    """A CPU torch generator seeded by ``(seed, step)`` (same on every process, same after a resume)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(step) & 0xFFFFFFFF, 0xAC]).generate_state(1)
    return torch.Generator().manual_seed(int(state[0]))


def sample_orderings(generator: torch.Generator | None = None, count: int = 2) -> tuple[str, ...]:
    """``count`` different orderings drawn uniformly (without replacement) from :data:`ORDERINGS`."""
    return tuple(ORDERINGS[int(i)] for i in torch.randperm(len(ORDERINGS), generator=generator)[:count])


def photometric_jitter(image: torch.Tensor, strength: float, rng: np.random.Generator) -> torch.Tensor:
    """Random brightness, contrast and saturation of one ``[C, H, W]`` image in [0, 1], any channel count.

    ``y = m + c (x - m) + b``, ``x' = clip(g + s (y - g), 0, 1)`` with ``m`` the image mean, ``g`` the per-pixel
    channel mean of ``y``, ``b ~ U(-a, a)`` and ``c, s ~ U(1 - a, 1 + a)`` for ``a = strength``. (Colour jitter
    that needs RGB, e.g. hue, would not apply to Potsdam's RGB+IR.)
    """
    b = rng.uniform(-strength, strength)
    c, s = rng.uniform(1 - strength, 1 + strength, size=2)
    mean = image.mean()
    out = mean + float(c) * (image - mean) + float(b)
    grey = out.mean(dim=0, keepdim=True)
    return (grey + float(s) * (out - grey)).clamp(0, 1)


class TwoViewDataset(FewDataset):
    """Training samples with two augmented views: ``image`` (jittered), ``image2`` (jittered, flipped when
    ``flipped``) and the flag ``flipped`` (bool tensor), for undoing the flip on the second view's output.

    Evaluation (``rng`` None) returns the wrapped sample unchanged.
    """

    def __init__(self, dataset: FewDataset, jitter: float, flip: bool) -> None:
        self.dataset, self.jitter, self.flip = dataset, float(jitter), bool(flip)

    def __len__(self) -> int:
        return len(self.dataset)

    def sample(self, index: int, rng: np.random.Generator | None) -> dict[str, Any]:
        item = self.dataset.sample(index, rng)
        if rng is None:
            return item
        image = item["image"]
        flipped = self.flip and bool(rng.random() < 0.5)
        second = image.flip(-1) if flipped else image
        if self.jitter > 0:
            image, second = photometric_jitter(image, self.jitter, rng), photometric_jitter(second, self.jitter, rng)
        return {**item, "image": image, "image2": second, "flipped": torch.tensor(flipped)}


def global_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over all processes, differentiable; ``x`` itself without distribution.

    With the loss computed from the global sum on every process, the backward of the all-reduce sums the W equal
    upstream gradients, and DDP's average over W processes restores the single-process gradient exactly.
    """
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        import torch.distributed.nn.functional as dist_fn

        return dist_fn.all_reduce(x)
    return x
