"""Deterministic, resumable, shardable batch streams.

The order of examples is a pure function of (seed, source, epoch): each epoch of a source is a permutation drawn
from a generator seeded by those three numbers, and the augmentation of each example is seeded by (seed, source,
epoch, index). Micro-step ``m`` of a source therefore always holds the same examples with the same augmentation,
whatever the number of processes or data-loader workers, and a resumed run restarts the stream at its step.

With ``world`` processes, every global batch is split by striding (rank r takes positions r, r + world, ...), so a
per-example mean loss averaged by DDP equals the single-process loss on the same global batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data._utils.collate import default_collate

from fewlabels.data.base import FewDataset


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


class SeededView(Dataset):
    """Maps ``(index, seed)`` keys to ``dataset.sample(index, default_rng(seed))``."""

    def __init__(self, dataset: FewDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        return self.dataset.sample(index, np.random.default_rng(seed))


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Endless stream of this rank's share of global batches, starting at micro-step ``start``."""

    def __init__(
        self, n: int, global_batch: int, seed: int, source: int, rank: int = 0, world: int = 1, start: int = 0
    ) -> None:
        if global_batch > n:
            raise ValueError(f"batch of {global_batch} examples requested from a source of only {n}")
        self.n, self.batch, self.seed, self.source = n, global_batch, seed, source
        self.rank, self.world, self.start = rank, world, start
        self.batches_per_epoch = n // global_batch

    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng(_seed(self.seed, self.source, epoch, 0x5EED)).permutation(self.n)

    def global_batch(self, micro_step: int) -> list[tuple[int, int]]:
        epoch, i = divmod(micro_step, self.batches_per_epoch)
        idx = self.permutation(epoch)[i * self.batch : (i + 1) * self.batch]
        return [(int(j), _seed(self.seed, self.source, epoch, int(j))) for j in idx]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        m = self.start
        cached_epoch, perm = -1, np.empty(0, dtype=np.int64)
        while True:
            epoch, i = divmod(m, self.batches_per_epoch)
            if epoch != cached_epoch:
                cached_epoch, perm = epoch, self.permutation(epoch)
            idx = perm[i * self.batch : (i + 1) * self.batch][self.rank :: self.world]
            yield [(int(j), _seed(self.seed, self.source, epoch, int(j))) for j in idx]
            m += 1


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    return default_collate(items)


def step_loader(
    dataset: FewDataset,
    global_batch: int,
    seed: int,
    source: int,
    rank: int,
    world: int,
    start: int,
    num_workers: int = 0,
) -> DataLoader:
    sampler = StepBatchSampler(len(dataset), global_batch, seed, source, rank, world, start)
    # A private generator: creating the loader's iterator must not draw from torch's global RNG, which belongs to
    # the training step (perturbations, dropout) and is restored exactly on resume.
    generator = torch.Generator().manual_seed(_seed(seed, source, 0xD1CE))
    return DataLoader(
        SeededView(dataset),
        batch_sampler=sampler,
        generator=generator,
        num_workers=num_workers,
        collate_fn=collate,
        persistent_workers=num_workers > 0,
    )
