"""BatchNorm statistics of the mask-free network, re-estimated on training images (``eval.bn_reestimate``).

AC trains every BatchNorm under masks: the running mean and variance are those of masked views, pooled over the
orderings. Inference removes the masks (``model.inference=plain``), so each convolution sums over every tap of its
kernel and the activations reaching a BatchNorm have other statistics than those it recorded. Re-estimating the
running statistics on a few training batches passed through the mask-free network gives the statistics of the network
that is evaluated (no labels are used). ``docs/results.md`` reports a first post-hoc check.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fewlabels.data.base import FewDataset

__all__ = ["batchnorm_layers", "image_batches", "reestimate_batchnorm"]


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``model`` that keep running statistics, in module order."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def reestimate_batchnorm(model: nn.Module, batches: Iterable[Tensor], forward: Callable[[Tensor], Any]) -> int:
    """Replace the running statistics of every BatchNorm of ``model`` by their average over ``batches``.

    The statistics are reset, then ``forward(batch)`` runs for each batch without gradient, with every BatchNorm in
    training mode with ``momentum=None`` and every other module in eval mode. PyTorch's cumulative average then
    leaves ``running_mean`` the mean over the batches of each batch's mean (over the images and positions) of a
    layer's input, and ``running_var`` the mean of each batch's unbiased variance: with one batch, exactly that batch's
    statistics. ``forward`` chooses the network that runs, here the mask-free one. Afterwards every module's mode and
    every BatchNorm's momentum are those it had before; only the running statistics (and their batch counters) change.

    Returns:
        The number of batches used. With none, the statistics are reset (mean 0, variance 1); a model without
        BatchNorm is left as it was, and returns 0.
    """
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    modes = [(m, m.training) for m in model.modules()]
    momenta = [layer.momentum for layer in layers]
    used = 0
    try:
        model.eval()
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None  # cumulative average: every batch weighs the same
            layer.train()
        with torch.no_grad():
            for batch in batches:
                forward(batch)
                used += 1
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
        for module, training in modes:
            module.training = training
    return used


def image_batches(
    dataset: FewDataset, count: int, batch_size: int, seed: int, device: torch.device | str = "cpu"
) -> Iterator[Tensor]:
    """``count`` batches ``[batch_size, C, H, W]`` of the images of ``dataset``, cropped as in training.

    The images are drawn without replacement (passes over a shuffled dataset when it is smaller than ``count *
    batch_size``) with a generator seeded by ``seed``: the same images and crops every time, whatever the global RNG.
    """
    rng = np.random.default_rng(seed)
    passes = -(-count * batch_size // len(dataset))
    order = np.concatenate([rng.permutation(len(dataset)) for _ in range(passes)])
    for b in range(count):
        items = [dataset.sample(int(i), rng) for i in order[b * batch_size : (b + 1) * batch_size]]
        yield torch.stack([item["image"] for item in items]).to(device)
