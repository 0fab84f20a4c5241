"""Labeled / unlabeled partitions and id-list files.

Semi-supervised training (CCT) draws its labeled subset from a dataset with :func:`labeled_unlabeled_split`;
the partition is a pure function of ``(n, labeled, seed)`` so every process and every resumed run agrees on
it. Datasets that ship their splits as text files of image ids (Pascal VOC's ``ImageSets``) are read with
:func:`read_id_list`.
"""

from __future__ import annotations

import numbers
from pathlib import Path

import numpy as np

from fewlabels.data.base import DataError

__all__ = ["labeled_count", "labeled_unlabeled_split", "read_id_list"]


def labeled_count(n: int, labeled: int | float) -> int:
    """How many of ``n`` samples ``labeled`` asks for (rules in :func:`labeled_unlabeled_split`)."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise DataError(f"n must be an integer number of samples, got {n!r}")
    if n <= 0:
        raise DataError(f"cannot split an empty dataset (n={n}); check the dataset path and split name")
    if isinstance(labeled, bool):
        raise DataError(f"labeled must be a count (int) or a fraction (float in (0, 1]), got the bool {labeled}")
    if isinstance(labeled, numbers.Integral):
        k = int(labeled)
        if k <= 0:
            raise DataError(f"labeled count must be at least 1, got {k}: semi-supervised training needs labels")
        if k > n:
            raise DataError(f"labeled count {k} is larger than the dataset ({n} samples)")
        return k
    if isinstance(labeled, numbers.Real):
        f = float(labeled)
        if not np.isfinite(f) or f <= 0.0:
            raise DataError(f"labeled fraction must be in (0, 1], got {labeled}: semi-supervised training needs labels")
        if f > 1.0:
            raise DataError(f"labeled fraction must be in (0, 1], got {labeled}; pass an int for a sample count")
        # A tiny positive fraction still means "some labels": keep at least one.
        return min(n, max(1, int(round(f * n))))
    raise DataError(f"labeled must be an int count or a float fraction, got {type(labeled).__name__}")


def labeled_unlabeled_split(n: int, labeled: int | float, seed: int) -> tuple[list[int], list[int]]:
    """Partition ``range(n)`` into a random labeled subset and the unlabeled rest.

    Args:
        n: dataset size (> 0).
        labeled: an ``int`` is a number of labeled samples (1..n); a ``float`` in (0, 1] is a fraction of
            ``n``, rounded to the nearest integer and at least 1.
        seed: seed of the permutation; the same ``(n, labeled, seed)`` always gives the same split, and for a
            fixed ``(n, seed)`` a smaller labeled set is contained in a larger one.

    Returns:
        ``(labeled_indices, unlabeled_indices)``, each sorted ascending, disjoint, together covering ``range(n)``.

    Raises:
        DataError: for an empty dataset, a count of 0, a negative value, a count above ``n`` or a fraction
            above 1.
    """
    k = labeled_count(n, labeled)
    order = np.random.default_rng(seed).permutation(n)
    return sorted(int(i) for i in order[:k]), sorted(int(i) for i in order[k:])


def read_id_list(path: str | Path) -> list[str]:
    """Read one id per line from a text file, skipping blank lines and ``#`` comments (whole or trailing).

    Raises:
        DataError: when the file is missing, unreadable or lists no ids.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"id list not found: {p} (expected a text file with one image id per line)")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read id list {p}: {err}") from err
    ids = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    ids = [i for i in ids if i]
    if not ids:
        raise DataError(f"id list {p} contains no ids (only blank lines or comments)")
    return ids
