"""Two views of one training image whose feature cells correspond exactly, and the positions to contrast.

Each view is a ``crop x crop`` window of the (randomly flipped) image. The second window is the first one shifted by
a whole number of feature cells (multiples of the encoder's output stride, at most ``max_shift`` of the crop), so
that cell ``(i, j)`` of view 1 and cell ``(i - dy, j - dx)`` of view 2 see the same image region. Each view gets its
own colour jitter (brightness, contrast, saturation, and grey with probability ``grayscale``): the encoder is taught
that a position keeps its identity under a photometric change and a shift, and differs from other positions.
``positions`` distinct cells of the overlap are drawn per image (distinct: a repeated cell would be a negative
identical to its anchor's positive), so that every random number of a step comes from the example's own generator
(the same draws with 1 or N processes, and on resume).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from fewlabels.data.base import DataError, FewDataset
from fewlabels.models import IMAGENET_MEAN

__all__ = ["ImageList", "TwoViews", "max_cells", "smallest_overlap"]

#: luma weights of the grey conversion (ITU-R BT.601)
_LUMA = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)


class ImageList(FewDataset):
    """The images of several datasets, one after the other (their masks, if any, dropped): the pretraining set."""

    def __init__(self, *datasets: FewDataset) -> None:
        self.parts = [d for d in datasets if len(d)]
        self.starts = np.cumsum([0] + [len(d) for d in self.parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def sample(self, index: int, rng: np.random.Generator | None) -> dict[str, Any]:
        part = int(np.searchsorted(self.starts, index, side="right")) - 1
        image = self.parts[part].sample(index - int(self.starts[part]), None)["image"]
        return {"image": image, "index": index}


def _jitter(view: Tensor, u: np.ndarray, strength: float, grayscale: float) -> Tensor:
    """Colour jitter of an image in ``[0, 1]`` from four uniform draws ``u``."""
    b, c, s = (1.0 + strength * (2.0 * float(x) - 1.0) for x in u[:3])
    out = view * b
    mean = (out * _LUMA).sum(0, keepdim=True).mean()
    out = (out - mean) * c + mean
    grey = (out * _LUMA).sum(0, keepdim=True)
    out = grey + (out - grey) * (0.0 if float(u[3]) < grayscale else s)
    return out.clamp(0.0, 1.0)


def max_cells(grid: int, max_shift: float) -> int:
    """The largest shift of view 2, in cells: ``max_shift`` of the grid, leaving at least one cell of overlap."""
    return min(grid - 1, int(max_shift * grid))


def smallest_overlap(crop: int, stride: int, max_shift: float) -> int:
    """The fewest feature cells two views can share: ``(grid - largest shift)^2`` cells, ``grid = crop / stride``."""
    grid = crop // stride
    return (grid - max_cells(grid, max_shift)) ** 2


class TwoViews(FewDataset):
    """``sample`` -> ``{"view1", "view2": [3, crop, crop], "pos1", "pos2": [positions] flat cell indices of the
    feature grid (crop / stride per side) of each view, matched pairwise, "index"}``.

    Without ``rng`` (evaluation) the draws are fixed: no flip, no jitter, view 1 centred and view 2 shifted by half
    the largest shift down and right, positions from a generator seeded by the image's index.
    """

    def __init__(
        self,
        images: FewDataset,
        crop: int,
        stride: int,
        positions: int,
        max_shift: float = 0.5,
        jitter: float = 0.4,
        grayscale: float = 0.2,
    ) -> None:
        if crop % stride:
            raise DataError(f"the pretraining crop ({crop}) must be a multiple of the output stride ({stride})")
        self.images, self.crop, self.stride, self.positions = images, int(crop), int(stride), int(positions)
        self.grid = self.crop // self.stride
        self.max_cells = max_cells(self.grid, max_shift)
        self.jitter, self.grayscale = float(jitter), float(grayscale)
        smallest = smallest_overlap(self.crop, self.stride, max_shift)
        if self.positions > smallest:
            raise DataError(
                f"{self.positions} positions per image, but two views may share only {smallest} cells "
                f"(crop {crop}, stride {stride}, max_shift {max_shift}): the positions must be distinct"
            )
        self.fill = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.images)

    def _padded(self, image: Tensor) -> Tensor:
        """The image, padded with the mean colour to at least ``crop`` per side (bottom and right)."""
        h, w = image.shape[-2:]
        if h >= self.crop and w >= self.crop:
            return image
        out = self.fill.expand(3, max(h, self.crop), max(w, self.crop)).clone()
        out[:, :h, :w] = image
        return out

    def _window(self, size: int, u_first: float, u_shift: float) -> tuple[int, int]:
        """(top of view 1, shift of view 2 in cells) along one side of length ``size``."""
        first = int(u_first * (size - self.crop + 1))
        s = self.stride
        low = max(-self.max_cells, -(first // s))
        high = min(self.max_cells, (size - self.crop - first) // s)
        return first, low + int(u_shift * (high - low + 1))

    def sample(self, index: int, rng: np.random.Generator | None) -> dict[str, Any]:
        image = self._padded(self.images.sample(index, None)["image"])
        # u: [top, shift down, left, shift right, flip, jitter of view 1 (4), jitter of view 2 (4)]
        if rng is not None:  # every draw up front, in a fixed order: the stream does not depend on the image
            u = rng.random(13)
            keys = rng.random(self.grid * self.grid)
        else:  # centred, shifted by half the largest shift, no flip (the jitter draws are unused)
            u = np.array([0.5, 0.75, 0.5, 0.75, 1.0] + [0.5] * 8)
            keys = np.random.default_rng(index).random(self.grid * self.grid)
        if u[4] < 0.5:
            image = image.flip(-1)
        h, w = image.shape[-2:]
        top, dy = self._window(h, u[0], u[1])
        left, dx = self._window(w, u[2], u[3])
        c, s = self.crop, self.stride
        view1 = image[:, top : top + c, left : left + c]
        view2 = image[:, top + dy * s : top + dy * s + c, left + dx * s : left + dx * s + c]
        if rng is not None:
            view1 = _jitter(view1, u[5:9], self.jitter, self.grayscale)
            view2 = _jitter(view2, u[9:13], self.jitter, self.grayscale)
        # distinct cells of view 1 that view 2 sees too (a random order of the overlap's cells), and their cells in
        # view 2
        g = self.grid
        rows_in, cols_in = g - abs(dy), g - abs(dx)
        cells = np.argsort(keys[: rows_in * cols_in], kind="stable")[: self.positions]
        rows, cols = max(0, dy) + cells // cols_in, max(0, dx) + cells % cols_in
        pos1 = torch.from_numpy(rows * g + cols)
        pos2 = torch.from_numpy((rows - dy) * g + (cols - dx))
        return {
            "view1": view1.contiguous(),
            "view2": view2.contiguous(),
            "pos1": pos1,
            "pos2": pos2,
            "index": index,
        }
