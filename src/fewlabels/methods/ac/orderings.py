"""The 8 raster-scan orderings of AC (paper: "4 corners x 2 directions") and their masks.

The canonical ordering ``tl_row`` starts at the top-left pixel and scans rows left to right, top to bottom:
``q`` comes before ``p`` iff ``q_y < p_y`` or (``q_y = p_y`` and ``q_x < p_x``). Every other ordering is the
canonical scan of a flipped (vertically: start at the bottom; horizontally: start at the right) and then transposed
(column-major) image: :func:`to_canonical` maps an image into that frame, :func:`from_canonical` back.

**Masks.** The network keeps one set of weights; ordering ``o`` multiplies each kernel by its own mask
``M_o = kernel_for(M, o)``, the canonical mask ``M`` mapped by :func:`kernel_for` (a transpose and flips of the kernel's
two spatial axes). For a convolution (PyTorch's cross-correlation) and any kernel ``K``,

    from_canonical(conv(to_canonical(x, o), K), o) == conv(x, kernel_for(K, o)),

so ``conv(x, W * M_o)`` -- the shared-weights view -- equals running the canonical mask on the flipped feature map
*with the kernel mapped into that frame* (``to_canonical(W, o) * M``). Flipping the feature map around one canonical
mask without mapping the kernel is a different model: every ordering then trains the same canonically kept taps
(see ``tests/methods/ac/test_ac_orderings.py``, which proves both statements by computation). Causal attention uses
the rank of each position in the ordering (:func:`attention_mask`).
"""

from __future__ import annotations

import torch

__all__ = [
    "ORDERINGS",
    "attention_mask",
    "from_canonical",
    "is_before",
    "kernel_for",
    "ordering_index",
    "ordering_ranks",
    "to_canonical",
]

#: ordering name -> (flip rows, flip columns, transpose); names are ``<start corner>_<row|col>``-major.
_TRANSFORMS: dict[str, tuple[bool, bool, bool]] = {
    "tl_row": (False, False, False),
    "tl_col": (False, False, True),
    "tr_row": (False, True, False),
    "tr_col": (False, True, True),
    "bl_row": (True, False, False),
    "bl_col": (True, False, True),
    "br_row": (True, True, False),
    "br_col": (True, True, True),
}

#: The 8 orderings: 4 start corners (top/bottom x left/right) x row- or column-major scan.
ORDERINGS: tuple[str, ...] = tuple(_TRANSFORMS)


def ordering_index(name: str) -> int:
    """Position of ``name`` in :data:`ORDERINGS` (ValueError listing the valid names otherwise)."""
    if name not in _TRANSFORMS:
        raise ValueError(f"unknown ordering {name!r}; valid orderings: {', '.join(ORDERINGS)}")
    return ORDERINGS.index(name)


def to_canonical(x: torch.Tensor, name: str) -> torch.Tensor:
    """``[B, C, H, W]`` -> the view in which ordering ``name`` is the top-left row-major scan.

    Shape ``[B, C, H, W]``, or ``[B, C, W, H]`` for column-major orderings.
    """
    ordering_index(name)
    flip_rows, flip_cols, transpose = _TRANSFORMS[name]
    dims = [d for d, f in ((-2, flip_rows), (-1, flip_cols)) if f]
    if dims:
        x = torch.flip(x, dims)
    return x.transpose(-1, -2) if transpose else x


def from_canonical(x: torch.Tensor, name: str) -> torch.Tensor:
    """Inverse of :func:`to_canonical`: undo the transpose, then the flips."""
    ordering_index(name)
    flip_rows, flip_cols, transpose = _TRANSFORMS[name]
    if transpose:
        x = x.transpose(-1, -2)
    dims = [d for d, f in ((-2, flip_rows), (-1, flip_cols)) if f]
    return torch.flip(x, dims) if dims else x


def is_before(name: str, q: tuple[int, int], p: tuple[int, int], height: int, width: int) -> bool:
    """Whether pixel ``q = (y, x)`` comes strictly before ``p`` in ordering ``name`` on an ``H x W`` grid.

    Reference definition used by the tests (independent of :func:`to_canonical`).
    """
    ordering_index(name)
    flip_rows, flip_cols, transpose = _TRANSFORMS[name]

    def key(y: int, x: int) -> tuple[int, int]:
        y = height - 1 - y if flip_rows else y
        x = width - 1 - x if flip_cols else x
        return (x, y) if transpose else (y, x)

    return key(*q) < key(*p)


def kernel_for(kernel: torch.Tensor, name: str) -> torch.Tensor:
    """The canonical-frame kernel (or mask) ``[..., k, k]`` as ordering ``name`` sees it in the image frame.

    ``conv(x, kernel_for(K, o)) == from_canonical(conv(to_canonical(x, o), K), o)`` (module docstring): a transpose,
    then the flips, of the two spatial axes -- the same map as :func:`from_canonical`.
    """
    return from_canonical(kernel, name)


def ordering_ranks(name: str, height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """``[H W]`` int64: the position of each pixel (row-major index ``y W + x``) in ordering ``name``'s scan."""
    positions = torch.arange(height * width, device=device).view(1, 1, height, width)
    scan = to_canonical(positions, name).flatten()  # pixels in scan order (the canonical view read row-major)
    ranks = torch.empty_like(scan)
    ranks[scan] = torch.arange(scan.numel(), device=device)
    return ranks


def attention_mask(name: str, height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """``[H W, H W]`` bool, True where token ``p`` (row) may attend to ``q`` (column): ``q`` is ``p`` or before it."""
    ranks = ordering_ranks(name, height, width, device)
    return ranks.view(1, -1) <= ranks.view(-1, 1)
