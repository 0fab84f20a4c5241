"""The 8 raster-scan orderings of AC as flips/transposes of one canonical ordering.

The canonical ordering ``tl_row`` starts at the top-left pixel and scans rows left to right, top to bottom:
``q`` comes before ``p`` iff ``q_y < p_y`` or (``q_y = p_y`` and ``q_x < p_x``). Every other ordering is a
view of the image in which the canonical scan is the wanted scan: flip vertically (start at the bottom), flip
horizontally (start at the right), then transpose (column-major). A masked stack built for ``tl_row`` runs on
``to_canonical(x, o)`` and its output is mapped back with ``from_canonical`` (this file's two functions), so
one set of masks serves all 8 orderings (paper: "4 corners x 2 directions").
"""

from __future__ import annotations

import torch

__all__ = ["ORDERINGS", "from_canonical", "is_before", "ordering_index", "to_canonical"]

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
