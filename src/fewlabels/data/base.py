"""The dataset protocol shared by every reader and generator.

A dataset maps an index to a dict of tensors. Training asks for ``sample(index, rng)`` with a NumPy generator that
the engine derives from (seed, source, epoch, index): augmentation is then a pure function of that seed, identical
with any number of data-loader workers or processes, and a resumed run sees exactly the batches it would have seen.
Evaluation uses ``dataset[index]``, which is ``sample(index, None)``: no random augmentation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset


class DataError(ValueError):
    """A dataset is missing, malformed or cannot satisfy a request. The message says what to fix."""


class FewDataset(Dataset):
    """Base class: subclasses implement ``__len__`` and ``sample``."""

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def sample(self, index: int, rng: np.random.Generator | None) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.sample(int(index), None)


class Subset(FewDataset):
    """A view of ``dataset`` restricted to ``indices`` (keeps ``sample`` semantics)."""

    def __init__(self, dataset: FewDataset, indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def sample(self, index: int, rng: np.random.Generator | None) -> dict[str, Any]:
        return self.dataset.sample(self.indices[index], rng)

    def __getattr__(self, name: str) -> Any:
        # Expose the wrapped dataset's metadata (num_classes, class_names, ...).
        if name in {"dataset", "indices"}:
            raise AttributeError(name)
        return getattr(self.dataset, name)


class Repeated(FewDataset):
    """``dataset`` listed ``times`` times: index ``i`` is sample ``i % len(dataset)``. The engine seeds each
    position's augmentation separately, so the copies of an image in one batch are augmented differently."""

    def __init__(self, dataset: FewDataset, times: int) -> None:
        if times < 1:
            raise ValueError(f"times must be >= 1, got {times}")
        self.dataset = dataset
        self.times = int(times)

    def __len__(self) -> int:
        return len(self.dataset) * self.times

    def sample(self, index: int, rng: np.random.Generator | None) -> dict[str, Any]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} samples")
        return self.dataset.sample(index % len(self.dataset), rng)

    def __getattr__(self, name: str) -> Any:
        # Expose the wrapped dataset's metadata (num_classes, class_names, ...).
        if name in {"dataset", "times"}:
            raise AttributeError(name)
        return getattr(self.dataset, name)


def fill_batch(dataset: FewDataset, batch_size: int) -> FewDataset:
    """``dataset``, repeated (:class:`Repeated`) when it holds fewer examples than one batch, so that a source of
    4 labeled images still fills a batch of 8 (each image twice per batch, differently augmented); a dataset of at
    least ``batch_size`` examples is returned unchanged. An empty dataset is a DataError."""
    n = len(dataset)
    if n == 0:
        raise DataError("a training source is empty: there is nothing to draw a batch from")
    return dataset if n >= batch_size else Repeated(dataset, -(-batch_size // n))


def require_path(path: str | Path, what: str, layout: str = "") -> Path:
    """Return ``path`` if it exists, else raise a DataError naming it, what it should be, and the expected layout."""
    p = Path(path).expanduser()
    if not p.exists():
        hint = f"\nExpected layout:\n{layout}" if layout else ""
        raise DataError(f"{what} not found: {p}{hint}")
    return p


def to_chw_float(image: np.ndarray) -> torch.Tensor:
    """HxWxC uint8 (or HxW) array -> CxHxW float tensor in [0, 1]."""
    if image.ndim == 2:
        image = image[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)
